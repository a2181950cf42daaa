"""Rounds of self-training with consensus-scored pseudo-labels, through nnU-Net's own commands (issue 10, part 3).

Round r (r = 0, 1, ...; D_0 is the labelled dataset, D_{r+1} the dataset the round writes)::

    train     nnUNetv2_train D_r CFG FOLD -tr TRAINER            for each of the M models (trainers x folds)
    predict   nnUNetv2_predict -i IMAGES -o WORK/round_r/... -d D_r -f FOLD -tr TRAINER --continue_prediction
    select    nnunetv2_ext pseudolabel API: score (Eq. 1), select, write D_{r+1} = D_0 + selected pseudo-labels
    prepare   nnUNetv2_extract_fingerprint + nnUNetv2_move_plans_between_datasets (D_0's plans) + nnUNetv2_preprocess
              (or nnUNetv2_plan_and_preprocess with ``replan``)

and after the last round the final models are trained on D_R (``final_folds``). It stops early when a round selects
no case, or no case that the previous round had not selected.

Every step checks its own result before running and is skipped when it is complete (final checkpoint present;
every image predicted; output dataset written by this run with the same settings; every case preprocessed), and an
interrupted training resumes with ``--c``. So a crash in round 2 does not redo round 1, and the printed commands
(``dry_run``) can be run as cluster jobs: nnUNetv2_train with ``-num_gpus``, nnUNetv2_predict with
``-num_parts/-part_id``; the next call of the command finds their results and goes on.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

from nnunetv2_ext.semisupervised.dataset_writer import MANIFEST_NAME, find_dataset_folder, raw_folder
from nnunetv2_ext.semisupervised.errors import PseudoLabelError
from nnunetv2_ext.semisupervised.pseudolabel_run import run_pseudolabel
from nnunetv2_ext.semisupervised.selection import check_selection
from nnunetv2_ext.semisupervised.unlabelled import UNLABELLED_IMAGES
from nnunetv2_ext.semisupervised.consensus import check_level
from nnunetv2_ext.io_atomic import OutputFolderError, check_work_folder, mark_folder
from nnunetv2_ext.pipeline import CommandFailed, run_side_by_side

STATE_NAME = "self_train_state.json"


class StepFailed(RuntimeError):
    """An nnU-Net command failed; the message names it and its log."""


@dataclass
class SelfTrainConfig:
    dataset_id: int
    """The labelled dataset D_0 (raw, and planned/preprocessed, or it is planned here)."""
    configuration: str
    output_ids: Tuple[int, ...]
    """Dataset ids of D_1 .. D_R; their number is the number of rounds R."""
    folds: Tuple[str, ...] = ("0", "1", "2", "3", "4")
    trainers: Tuple[str, ...] = ("nnUNetTrainer",)
    final_folds: Optional[Tuple[str, ...]] = None
    """Folds of the models trained on D_R (default: ``folds``)."""
    plans: str = "nnUNetPlans"
    images: Optional[str] = None
    """Unlabelled images (nnU-Net naming); default: D_0's imagesUnlabeled."""
    threshold: Optional[float] = None
    top_fraction: Optional[float] = None
    level: str = "slice"
    work_dir: Optional[str] = None
    device: str = "cuda"
    num_gpus: int = 1
    gpus: Tuple[str, ...] = ()
    """Run models / prediction parts side by side, one per GPU (CUDA_VISIBLE_DEVICES)."""
    save_probabilities: bool = False
    replan: bool = False
    stop_when_no_new: bool = True
    num_processes: int = 1
    predict_processes: Tuple[int, int] = (3, 3)
    """nnUNetv2_predict -npp / -nps."""

    @property
    def models(self) -> List[Tuple[str, str]]:
        return [(t, f) for t in self.trainers for f in self.folds]

    @property
    def final_models(self) -> List[Tuple[str, str]]:
        return [(t, f) for t in self.trainers for f in (self.final_folds or self.folds)]

    def check(self) -> None:
        if len(self.models) < 2:
            raise PseudoLabelError(f"the consensus score needs M >= 2 models; trainers {list(self.trainers)} x folds "
                                   f"{list(self.folds)} give {len(self.models)}")
        if not self.output_ids:
            raise PseudoLabelError("give at least one output dataset id (one per round)")
        ids = [self.dataset_id, *self.output_ids]
        if len(set(ids)) != len(ids) or not all(1 <= i <= 999 for i in ids):
            raise PseudoLabelError(f"dataset ids must be distinct and in 1..999, got {ids}")
        if self.threshold is None and self.top_fraction is None:
            raise PseudoLabelError("give --threshold or --top-fraction")
        check_selection(self.threshold, self.top_fraction)
        try:
            check_level(self.level)
        except ValueError as e:
            raise PseudoLabelError(str(e)) from e
        if self.gpus and self.num_gpus > 1:
            raise PseudoLabelError("--gpus (one model per GPU) and -num_gpus (one model on several GPUs) exclude "
                                   "each other")
        if self.num_gpus < 1:
            raise PseudoLabelError(f"-num_gpus must be >= 1, got {self.num_gpus}")
        bad = [f for f in (*self.folds, *(self.final_folds or ())) if f != "all" and not (
            str(f).isdigit() and 0 <= int(f) <= 4)]
        if bad:
            raise PseudoLabelError(f"folds {bad}: a fold is 0-4 or 'all'")

    def settings(self) -> dict:
        """What must not change between a run and its resumption."""
        d = asdict(self)
        for k in ("device", "num_gpus", "gpus", "num_processes", "predict_processes", "work_dir"):
            d.pop(k)
        d["final_folds"] = list(self.final_folds or self.folds)
        return json.loads(json.dumps(d))


@dataclass
class SelfTrainRunner:
    config: SelfTrainConfig
    dry_run: bool = False
    log: List[str] = field(default_factory=list)

    # ------------------------------------------------------------------ set-up
    def __post_init__(self):
        c = self.config
        c.check()
        self.raw = raw_folder()
        for var in ("nnUNet_preprocessed", "nnUNet_results"):
            if not os.environ.get(var):
                raise PseudoLabelError(f"the environment variable {var} is not set")
        self.labelled = find_dataset_folder(c.dataset_id, self.raw)
        if self.labelled is None:
            raise PseudoLabelError(f"labelled dataset id {c.dataset_id} does not exist in nnUNet_raw ({self.raw})")
        self.labelled_name = os.path.basename(self.labelled)
        self.images = os.path.abspath(c.images or join(self.labelled, UNLABELLED_IMAGES))
        ljson = load_json(join(self.labelled, "dataset.json"))
        self.file_ending = ljson["file_ending"]
        self.unlabelled_cases = self._unlabelled_cases(ljson)
        self.work = os.path.abspath(c.work_dir or join(os.environ["nnUNet_results"], "self_training",
                                                       self.labelled_name))
        self.state_file = join(self.work, STATE_NAME)
        try:  # the package's work-folder rule: new, empty or our own (continued); never someone else's files
            check_work_folder(self.work, [self.labelled, self.images], "--work-dir", own_files=(STATE_NAME,))
        except OutputFolderError as e:
            raise PseudoLabelError(str(e)) from None
        self._check_configuration_and_trainers()
        state = load_json(self.state_file) if isfile(self.state_file) else None
        if state is not None and state["settings"] != c.settings() and not state["rounds"]:
            state = None  # nothing finished under the old settings (e.g. a typo that failed): start with the new ones
        if state is not None and state["settings"] != c.settings():
            changed = sorted(k for k in c.settings() if state["settings"].get(k) != c.settings()[k])
            raise PseudoLabelError(f"{self.work} holds a self-training run with other settings ({', '.join(changed)});"
                                   f" use another --work-dir, or the same settings to resume")
        for i, out_id in enumerate(c.output_ids):
            existing = find_dataset_folder(out_id, self.raw)
            if existing is not None and not self._written_by_us(existing, i):
                raise PseudoLabelError(f"output dataset id {out_id} exists ({existing}) and was not written by this "
                                       f"self-training run; choose other ids")
        self.state = state or {"settings": c.settings(), "rounds": {}}

    def _check_configuration_and_trainers(self) -> None:
        """Before any preprocessing: the configuration exists (in the plans, or among nnU-Net's default ones when the
        dataset is not planned yet) and every trainer is found by nnU-Net's lookup."""
        from nnunetv2_ext.benchmark.budget import BudgetError, find_trainer_class
        c = self.config
        plans_file = join(os.environ["nnUNet_preprocessed"], self.labelled_name, f"{c.plans}.json")
        known = sorted(load_json(plans_file)["configurations"]) if isfile(plans_file) else \
            ["2d", "3d_fullres", "3d_lowres"]
        if c.configuration not in known:
            raise PseudoLabelError(f"-c {c.configuration} is not a configuration of {self.labelled_name} "
                                   f"({', '.join(known)})")
        for t in c.trainers:
            try:
                find_trainer_class(t)
            except BudgetError as e:
                raise PseudoLabelError(str(e)) from None

    def _unlabelled_cases(self, ljson: dict) -> List[str]:
        if not os.path.isdir(self.images):
            raise PseudoLabelError(f"unlabelled images folder {self.images} does not exist (give --images, or "
                                   f"convert with --write-unlabeled)")
        ending = self.file_ending
        cases = sorted({f[:-len(ending) - 5] for f in os.listdir(self.images) if f.endswith("_0000" + ending)})
        if not cases:
            raise PseudoLabelError(f"no unlabelled images (*_0000{ending}) in {self.images}")
        num_channels = len(ljson["channel_names"])
        lacking = [c for c in cases for ch in range(num_channels)
                   if not isfile(join(self.images, f"{c}_{ch:04d}{ending}"))]
        if lacking:
            raise PseudoLabelError(f"unlabelled cases lack channels of the {num_channels}-channel dataset: "
                                   f"{sorted(set(lacking))[:5]}")
        return cases

    def _written_by_us(self, folder: str, round_index: int) -> bool:
        manifest = join(folder, MANIFEST_NAME)
        if not isfile(manifest):
            return False
        m = load_json(manifest)
        return m.get("self_train_work_dir") == self.work and m.get("round") == round_index

    # ------------------------------------------------------------------ helpers
    def dataset_name(self, round_index: int) -> Optional[str]:
        if round_index == 0:
            return self.labelled_name
        folder = find_dataset_folder(self.config.output_ids[round_index - 1], self.raw)
        return os.path.basename(folder) if folder else None

    def _say(self, text: str) -> None:
        self.log.append(text)
        print(text, flush=True)

    def _save_state(self) -> None:
        if self.dry_run:
            return
        os.makedirs(self.work, exist_ok=True)
        mark_folder(self.work, "nnUNetv2_ext_self_train")
        tmp = self.state_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.state, f, indent=1)
        os.replace(tmp, self.state_file)

    def _run(self, commands: Sequence[List[str]], name: str, gpus: Sequence[str] = ()) -> None:
        """Runs commands (side by side, one per GPU, when ``gpus``: :func:`nnunetv2_ext.pipeline.run_side_by_side`),
        logging to WORK/logs/name*.log."""
        for cmd in commands:
            self._say("$ " + " ".join(cmd))
        if self.dry_run:
            return
        os.makedirs(join(self.work, "logs"), exist_ok=True)
        logs = [join(self.work, "logs", f"{name}_{i}.log" if len(commands) > 1 else f"{name}.log")
                for i in range(len(commands))]
        t0 = time.time()
        try:
            run_side_by_side(commands, logs, gpus)
        except CommandFailed as e:
            raise StepFailed(str(e)) from None
        self._say(f"  ({time.time() - t0:.0f} s)")

    # ------------------------------------------------------------------ steps
    def ensure_preprocessed(self, round_index: int) -> None:
        c = self.config
        name = self.dataset_name(round_index)
        pre = join(os.environ["nnUNet_preprocessed"], name) if name else None
        if name and self._preprocessing_complete(name):
            return
        did = str(c.dataset_id if round_index == 0 else c.output_ids[round_index - 1])
        if round_index == 0 or c.replan:
            if round_index == 0 and pre and isfile(join(pre, c.plans + ".json")):
                self._run([["nnUNetv2_preprocess", "-d", did, "-c", c.configuration, "-plans_name", c.plans,
                            "-np", str(c.num_processes)]], f"round{round_index}_preprocess")
            else:
                self._run([["nnUNetv2_plan_and_preprocess", "-d", did, "-c", c.configuration, "-np",
                            str(c.num_processes)]], f"round{round_index}_plan_and_preprocess")
            return
        # same plans as D_0: same network, patch size and normalisation in every round
        self._run([["nnUNetv2_extract_fingerprint", "-d", did, "-np", str(c.num_processes)]],
                  f"round{round_index}_fingerprint")
        if not self.dry_run:
            os.makedirs(pre, exist_ok=True)
        self._run([["nnUNetv2_move_plans_between_datasets", "-s", str(c.dataset_id), "-t", did, "-sp", c.plans,
                    "-tp", c.plans]], f"round{round_index}_plans")
        if not self.dry_run:  # what nnUNetv2_plan_experiment would copy: dataset.json and the splits
            shutil.copyfile(join(self.raw, name, "dataset.json"), join(pre, "dataset.json"))
            if isfile(join(self.raw, name, "splits_final.json")):
                shutil.copyfile(join(self.raw, name, "splits_final.json"), join(pre, "splits_final.json"))
                self._say(f"  copied {name}/splits_final.json to nnUNet_preprocessed (validation on labelled "
                          f"cases)")
        self._run([["nnUNetv2_preprocess", "-d", did, "-c", c.configuration, "-plans_name", c.plans, "-np",
                    str(c.num_processes)]], f"round{round_index}_preprocess")

    def _preprocessing_complete(self, name: str) -> bool:
        c = self.config
        pre = join(os.environ["nnUNet_preprocessed"], name)
        plans_file = join(pre, c.plans + ".json")
        if not isfile(plans_file) or not isfile(join(pre, "dataset_fingerprint.json")):
            return False
        plans = load_json(plans_file)
        if c.configuration not in plans.get("configurations", {}):
            raise PseudoLabelError(f"configuration {c.configuration} is not in {plans_file}")
        folder = join(pre, plans["configurations"][c.configuration].get("data_identifier",
                                                                        f"{c.plans}_{c.configuration}"))
        num = load_json(join(self.raw, name, "dataset.json"))["numTraining"]
        return os.path.isdir(folder) and len([f for f in os.listdir(folder) if f.endswith(".pkl")]) == num

    def model_folder(self, round_index: int, trainer: str, fold: str) -> str:
        return join(os.environ["nnUNet_results"], self.dataset_name(round_index) or "?",
                    f"{trainer}__{self.config.plans}__{self.config.configuration}", f"fold_{fold}")

    def train(self, round_index: int, models: Sequence[Tuple[str, str]]) -> None:
        c = self.config
        did = str(c.dataset_id if round_index == 0 else c.output_ids[round_index - 1])
        commands = []
        for trainer, fold in models:
            folder = self.model_folder(round_index, trainer, fold)
            if isfile(join(folder, "checkpoint_final.pth")):
                continue
            cmd = ["nnUNetv2_train", did, c.configuration, fold, "-tr", trainer, "-p", c.plans, "-device", c.device]
            if c.num_gpus > 1:
                cmd += ["-num_gpus", str(c.num_gpus)]
            if isfile(join(folder, "checkpoint_latest.pth")):
                cmd.append("--c")
            commands.append(cmd)
        if commands:
            self._run(commands, f"round{round_index}_train", c.gpus)

    def prediction_folder(self, round_index: int, trainer: str, fold: str) -> str:
        return join(self.work, f"round_{round_index}", "predictions", f"{trainer}__fold_{fold}")

    def predict(self, round_index: int) -> List[str]:
        c = self.config
        did = str(c.dataset_id if round_index == 0 else c.output_ids[round_index - 1])
        commands, folders = [], []
        for trainer, fold in c.models:
            out = self.prediction_folder(round_index, trainer, fold)
            folders.append(out)
            done = os.path.isdir(out) and all(isfile(join(out, case + self.file_ending))
                                              for case in self.unlabelled_cases)
            if done:
                continue
            base = ["nnUNetv2_predict", "-i", self.images, "-o", out, "-d", did, "-c", c.configuration, "-f", fold,
                    "-tr", trainer, "-p", c.plans, "-device", c.device, "--continue_prediction",
                    "-npp", str(c.predict_processes[0]), "-nps", str(c.predict_processes[1])]
            if c.save_probabilities:
                base.append("--save_probabilities")
            parts = max(1, len(c.gpus))
            commands += [base + (["-num_parts", str(parts), "-part_id", str(p)] if parts > 1 else [])
                         for p in range(parts)]
        if commands:
            self._run(commands, f"round{round_index}_predict", c.gpus)
        return folders

    def select(self, round_index: int, folders: Sequence[str]) -> List[str]:
        """Writes D_{round+1}; returns the selected cases (empty: nothing passed, no dataset written)."""
        c = self.config
        key = str(round_index)
        done = self.state["rounds"].get(key, {})
        out_id = c.output_ids[round_index]
        existing = find_dataset_folder(out_id, self.raw)
        if "selected" in done and (existing is not None or not done["selected"]):
            self._say(f"round {round_index}: selection done before ({len(done['selected'])} cases)")
            return done["selected"]
        self._say(f"round {round_index}: scoring {len(self.unlabelled_cases)} unlabelled cases with "
                  f"{len(folders)} models ({c.level} level)")
        if self.dry_run:
            self._say(f"  (would write Dataset{out_id:03d} = {self.labelled_name} + selected pseudo-labels)")
            return ["?"]
        result = run_pseudolabel(folders, join(self.work, f"round_{round_index}", "pseudolabels"), level=c.level,
                                 labelled_dataset=c.dataset_id, output_dataset=out_id, threshold=c.threshold,
                                 top_fraction=c.top_fraction, images_folder=self.images,
                                 output_name=f"{self.labelled_name.split('_', 1)[1]}SelfTrainR{round_index + 1}",
                                 overwrite=existing is not None, num_processes=c.num_processes,
                                 require_selection=False,
                                 manifest_extra={"self_train_work_dir": self.work, "round": round_index})
        self.state["rounds"][key] = {"selected": result.selected, "scores": result.files["scores"],
                                     "dataset": os.path.basename(result.dataset_folder) if result.dataset_folder
                                     else None}
        self._save_state()
        self._say(f"round {round_index}: selected {len(result.selected)} of {len(result.scores)} cases -> "
                  f"{result.dataset_folder or 'no dataset'}")
        return result.selected

    # ------------------------------------------------------------------ all rounds
    def run(self) -> dict:
        c = self.config
        self._save_state()
        previous: Optional[set] = None
        last, stopped = 0, False
        for r in range(len(c.output_ids)):
            self._say(f"=== round {r}: dataset {self.dataset_name(r) or c.output_ids[r - 1]} ===")
            self.ensure_preprocessed(r)
            self.train(r, c.models)
            selected = self.select(r, self.predict(r))
            if not selected:
                self._say(f"round {r}: no case passes the selection; stopping")
                stopped = True
                break
            if c.stop_when_no_new and previous is not None and set(selected) <= previous and not self.dry_run:
                self._say(f"round {r}: no new case compared to round {r - 1}; stopping")
                stopped = True
                break
            previous, last = set(selected), r + 1
        models = c.models
        if not stopped:  # the models trained on D_R
            self._say(f"=== final: dataset {self.dataset_name(last) or c.output_ids[last - 1]} ===")
            self.ensure_preprocessed(last)
            models = c.final_models
            self.train(last, models)
        final = {"dataset": self.dataset_name(last), "round": last,
                 "models": [self.model_folder(last, t, f) for t, f in models]}
        self.state["final"] = final
        self._save_state()
        self._say(f"final models (dataset {final['dataset']}): " + ", ".join(final["models"]))
        return final


def main_args(argv=None):
    import argparse
    p = argparse.ArgumentParser(
        prog="nnUNetv2_ext_self_train",
        description="Self-training rounds with consensus-scored pseudo-labels (Pham et al., FLARE22): train M models "
                    "on the labelled dataset, predict the unlabelled images, score (Eq. 1), select, write a new "
                    "dataset, preprocess, train again. Every step is resumable; all training and prediction go "
                    "through nnUNetv2_train / nnUNetv2_predict.")
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="labelled dataset D_0")
    p.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-o", "--output-ids", type=int, nargs="+", required=True,
                   help="dataset ids of the pseudo-labelled datasets D_1 .. D_R, one per round (R = their number)")
    p.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"],
                   help="folds of the M models of each round (default 0 1 2 3 4)")
    p.add_argument("-tr", "--trainers", nargs="+", default=["nnUNetTrainer"],
                   help="trainers of the M models (M = trainers x folds)")
    p.add_argument("--final-folds", nargs="+", default=None,
                   help="folds of the models trained on the last dataset (default: --folds)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--images", default=None, help="unlabelled images (nnU-Net naming CASE_0000.ext); default: "
                                                  "the labelled dataset's imagesUnlabeled")
    sel = p.add_mutually_exclusive_group(required=True)
    sel.add_argument("--threshold", type=float, help="select cases with score >= threshold (in [0, 1])")
    sel.add_argument("--top-fraction", type=float, help="select the best fraction of the cases (in (0, 1])")
    p.add_argument("--level", choices=("slice", "volume"), default="slice", help="Eq. 1 (slice) or volume variant")
    p.add_argument("--work-dir", default=None, help="predictions, scores, logs and the state file (default "
                                                    "$nnUNet_results/self_training/DatasetXXX_Name)")
    p.add_argument("-device", default="cuda", help="cuda, cpu or mps (passed to nnUNetv2_train/predict)")
    p.add_argument("-num_gpus", type=int, default=1, help="GPUs per training (nnUNetv2_train -num_gpus, DDP)")
    p.add_argument("--gpus", nargs="+", default=[], help="GPU ids: train the models side by side, one per GPU, and "
                                                         "split prediction with -num_parts/-part_id over them")
    p.add_argument("--save-probabilities", action="store_true",
                   help="nnUNetv2_predict --save_probabilities; the averaged mask is then the mean softmax's argmax")
    p.add_argument("--replan", action="store_true",
                   help="plan every new dataset anew (nnUNetv2_plan_and_preprocess) instead of reusing D_0's plans")
    p.add_argument("--no-stop-when-no-new", action="store_true",
                   help="run all rounds even when a round selects no new case")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="processes for scoring and preprocessing")
    p.add_argument("-npp", type=int, default=3, help="nnUNetv2_predict -npp")
    p.add_argument("-nps", type=int, default=3, help="nnUNetv2_predict -nps")
    p.add_argument("--dry-run", action="store_true", help="print the commands of the remaining steps, run nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = main_args(argv)
    config = SelfTrainConfig(a.dataset_id, a.configuration, tuple(a.output_ids), tuple(a.folds), tuple(a.trainers),
                             tuple(a.final_folds) if a.final_folds else None, a.plans, a.images, a.threshold,
                             a.top_fraction, a.level, a.work_dir, a.device, a.num_gpus, tuple(a.gpus),
                             a.save_probabilities, a.replan, not a.no_stop_when_no_new, a.num_processes,
                             (a.npp, a.nps))
    try:
        runner = SelfTrainRunner(config, dry_run=a.dry_run)
        runner.run()
    except PseudoLabelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
