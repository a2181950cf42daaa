"""The benchmark's runs: trainer x fold x seed, each an independent set of nnU-Net commands.

A run (:func:`execute_run`) is ``nnUNetv2_train`` of the budget trainer (``--c`` when a checkpoint of a killed run
exists), then, with a held-out set, ``nnUNetv2_predict`` of it with that fold's model. Its outcome is written to
``WORK/runs/NNN.json`` (done, or failed with the end of its log); a finished run is never repeated, so a killed
benchmark continues where it stopped, and runs can be spread over machines by index (``--run-index``, e.g. a SLURM
array) because no run depends on another. The collect step (:func:`postprocess_trainer`) runs
``nnUNetv2_find_best_configuration`` per trainer and seed over the benchmark's folds and applies the postprocessing it
chose with ``nnUNetv2_apply_postprocessing``.

Order: seeds outermost, so that after the first seed every trainer has a complete run.
"""
from __future__ import annotations

import glob
import json
import os
import re
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

from nnunetv2_ext.benchmark.budget import Budget, budget_name, kept_checkpoint, kept_epochs
from nnunetv2_ext.io_atomic import check_work_folder, mark_folder
from nnunetv2_ext.pipeline import commands_on_path_env

CONFIG_NAME = "benchmark.json"
GITIGNORE = """\
# Written by nnUNetv2_ext_benchmark when it created this work folder: git keeps only the small state that lets a
# later session continue the benchmark (settings, run states, per-folder metric caches, the report, and markdown
# files of the configuration scripts); predictions, checkpoints and logs stay local.
*
!.gitignore
!/*.md
!benchmark.json
!runs/
!runs/*.json
!predictions/
!predictions/**/
!predictions/**/.benchmark_metrics*.json
!predictions/**/.complete
!report/
!report/*
"""


class BenchmarkError(ValueError):
    """Bad benchmark input (the message names the parameter, trainer or case); raised before any training."""


@dataclass
class BenchmarkConfig:
    dataset: str                 # nnU-Net dataset name (DatasetXXX_Name)
    configuration: str
    trainers: List[str]
    folds: List[int]
    seeds: List[int]
    budget: Dict[str, int]       # Budget without the seed
    plans: str = "nnUNetPlans"
    device: str = "cpu"
    test: str = "imagesTs"       # "imagesTs" (held-out imagesTs/labelsTs) or "validation" (the folds' validation)
    tta: bool = True
    group_regex: Optional[str] = None
    groups_file: Optional[str] = None
    n_splits: int = 5
    baseline: Optional[str] = None
    label: Optional[str] = None  # the dataset.json label (or region) the report measures; None: the first one
    notes: Dict[str, str] = field(default_factory=dict)

    def budget_for(self, seed: int) -> Budget:
        return Budget(**self.budget, seed=seed)

    @property
    def baseline_trainer(self) -> str:
        return self.baseline or self.trainers[0]

    def key(self) -> dict:
        """What must agree for a work folder to be continued (everything but notes)."""
        d = asdict(self)
        d.pop("notes")
        return d


@dataclass(frozen=True)
class Run:
    index: int
    trainer: str     # the trainer as the user named it
    fold: int
    seed: int
    name: str        # the budget trainer's name (nnU-Net's -tr)


def plan_runs(cfg: BenchmarkConfig) -> List[Run]:
    runs = []
    for seed in cfg.seeds:
        for trainer in cfg.trainers:
            for fold in cfg.folds:
                runs.append(Run(len(runs), trainer, fold, seed, budget_name(trainer, cfg.budget_for(seed))))
    return runs


# ------------------------------------------------------------------------------------------------- work folder
class WorkFolder:
    """``WORK/benchmark.json`` (the settings), ``runs/NNN.json`` (outcomes), ``logs/``, ``predictions/``, and a
    ``.gitignore`` that lets git commit only the small state a later session needs to continue (written when the
    folder is created)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    def config_file(self) -> str:
        return os.path.join(self.path, CONFIG_NAME)

    def load(self) -> BenchmarkConfig:
        if not os.path.isfile(self.config_file()):
            raise BenchmarkError(f"{self.path} holds no benchmark ({CONFIG_NAME} missing): start it with the full "
                                 f"settings first")
        with open(self.config_file(), encoding="utf-8") as f:
            return BenchmarkConfig(**json.load(f))

    def check(self, cfg: BenchmarkConfig) -> None:
        """A new or empty folder, or one holding a benchmark of the same settings (which is then continued); the
        package's work-folder rule (``io_atomic.check_work_folder``) refuses a folder of someone else's files."""
        check_work_folder(self.path, option="-o", own_files=(CONFIG_NAME,))
        if os.path.isfile(self.config_file()):
            old = self.load()
            if old.key() != cfg.key():
                diff = {k: (v, cfg.key()[k]) for k, v in old.key().items() if cfg.key()[k] != v}
                raise BenchmarkError(f"the work folder {self.path} holds a benchmark with other settings "
                                     f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}); "
                                     f"give another -o, or the same settings to continue it")

    def save(self, cfg: BenchmarkConfig) -> None:
        self.check(cfg)
        if os.path.isfile(self.config_file()):
            return
        os.makedirs(self.path, exist_ok=True)
        with open(self.config_file(), "w", encoding="utf-8") as f:
            json.dump(asdict(cfg), f, indent=1)
        mark_folder(self.path, "nnUNetv2_ext_benchmark")
        gitignore = os.path.join(self.path, ".gitignore")
        if not os.path.exists(gitignore):
            with open(gitignore, "w", encoding="utf-8") as f:
                f.write(GITIGNORE)

    def status_file(self, run: Run) -> str:
        return os.path.join(self.path, "runs", f"{run.index:03d}.json")

    def status(self, run: Run) -> Optional[dict]:
        try:
            with open(self.status_file(run), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def write_status(self, run: Run, status: dict) -> None:
        os.makedirs(os.path.dirname(self.status_file(run)), exist_ok=True)
        tmp = self.status_file(run) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(dict(status, **asdict(run)), f, indent=1)
        os.replace(tmp, self.status_file(run))

    def log(self, run: Run) -> str:
        os.makedirs(os.path.join(self.path, "logs"), exist_ok=True)
        return os.path.join(self.path, "logs", f"{run.index:03d}_{run.name}_fold{run.fold}.txt")

    def predictions(self, name: str, fold: int, kind: str) -> str:
        return os.path.join(self.path, "predictions", name, f"fold_{fold}", kind)


# ------------------------------------------------------------------------------------------------- nnU-Net
def results_folder(cfg: BenchmarkConfig, name: str) -> str:
    return os.path.join(os.environ["nnUNet_results"], cfg.dataset, f"{name}__{cfg.plans}__{cfg.configuration}")


def raw_folder(cfg: BenchmarkConfig) -> str:
    return os.path.join(os.environ["nnUNet_raw"], cfg.dataset)


def _run_logged(cmd: Sequence, log: str) -> int:
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(map(str, cmd))}\n")
        f.flush()
        return subprocess.call([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=commands_on_path_env())


def _tail(path: str, n: int = 2500) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-n:]


EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")


def seconds_per_iteration(fold_folder: str, iterations: int) -> Optional[float]:
    """Median epoch time of the run's nnU-Net training logs, per training iteration (validation iterations
    included: the same few for every trainer)."""
    times = []
    for log in sorted(glob.glob(os.path.join(fold_folder, "training_log_*.txt"))):
        with open(log, encoding="utf-8", errors="replace") as f:
            times += [float(t) for t in EPOCH_TIME.findall(f.read())]
    return statistics.median(times) / iterations if times else None


def execute_run(cfg: BenchmarkConfig, work: WorkFolder, run: Run, echo=print) -> dict:
    """Trains (or continues) and predicts one run; writes and returns its status (``state``: done or failed)."""
    done = work.status(run)
    if done is not None and done.get("state") == "done":
        return done
    log = work.log(run)
    fold_folder = os.path.join(results_folder(cfg, run.name), f"fold_{run.fold}")
    status = {"state": "failed", "log": log}
    t0 = time.time()
    if not os.path.isfile(os.path.join(fold_folder, "checkpoint_final.pth")):
        resume = os.path.isfile(os.path.join(fold_folder, "checkpoint_latest.pth"))
        echo(f"[benchmark] run {run.index}: {'continuing' if resume else 'training'} {run.name} fold {run.fold}")
        cmd = ["nnUNetv2_train", cfg.dataset, cfg.configuration, run.fold, "-tr", run.name, "-p", cfg.plans,
               "-device", cfg.device] + (["--c"] if resume else [])
        if _run_logged(cmd, log):
            status["error"] = f"nnUNetv2_train failed; end of {log}:\n{_tail(log)}"
            work.write_status(run, status)
            return status
    status["train_wall_s"] = time.time() - t0
    status["seconds_per_iteration"] = seconds_per_iteration(fold_folder, cfg.budget["iterations"])
    if cfg.test == "imagesTs":
        out = work.predictions(run.name, run.fold, "raw")
        cmd = ["nnUNetv2_predict", "-i", os.path.join(raw_folder(cfg), "imagesTs"), "-o", out, "-d", cfg.dataset,
               "-c", cfg.configuration, "-f", run.fold, "-tr", run.name, "-p", cfg.plans, "-device", cfg.device,
               "-npp", "1", "-nps", "1"] + ([] if cfg.tta else ["--disable_tta"])
        t1 = time.time()
        if _run_logged(cmd, log):
            status["error"] = f"nnUNetv2_predict failed; end of {log}:\n{_tail(log)}"
            work.write_status(run, status)
            return status
        status["predict_wall_s"] = time.time() - t1
        for epochs_done in kept_epochs(cfg.budget_for(run.seed)):  # the held-out set over training
            out = work.predictions(run.name, run.fold, epoch_kind(epochs_done))
            if os.path.isfile(os.path.join(out, ".complete")):
                continue
            if _run_logged(cmd[:cmd.index("-o") + 1] + [out] + cmd[cmd.index("-o") + 2:] +
                           ["-chk", kept_checkpoint(epochs_done)], log):
                status["error"] = f"nnUNetv2_predict -chk {kept_checkpoint(epochs_done)} failed; end of {log}:\n" \
                                  f"{_tail(log)}"
                work.write_status(run, status)
                return status
            open(os.path.join(out, ".complete"), "w").close()
    status["state"] = "done"
    work.write_status(run, status)
    echo(f"[benchmark] run {run.index} done: {run.name} fold {run.fold}")
    return status


def epoch_kind(epochs_done: int) -> str:
    """The predictions' kind (folder name) of the weights kept after ``epochs_done`` epochs."""
    return f"epoch_{epochs_done}"


def prediction_folder(cfg: BenchmarkConfig, work: WorkFolder, name: str, fold: int, kind: str) -> str:
    """Raw predictions of a run: the held-out set's, or nnU-Net's own validation of the fold; ``pp``: after the
    postprocessing of :func:`postprocess_trainer`."""
    if kind == "raw" and cfg.test == "validation":
        return os.path.join(results_folder(cfg, name), f"fold_{fold}", "validation")
    return work.predictions(name, fold, kind)


def postprocess_trainer(cfg: BenchmarkConfig, work: WorkFolder, name: str, log: str) -> Optional[str]:
    """nnU-Net's postprocessing choice for one budget trainer (its folds' validation), applied to each fold's raw
    predictions; returns None when done, else the error."""
    folds = [str(f) for f in cfg.folds]
    if all(os.path.isfile(os.path.join(prediction_folder(cfg, work, name, f, "pp"), ".complete")) for f in cfg.folds):
        return None  # done before (possibly on another machine: the committed state has no checkpoints)
    pp_pkl = os.path.join(results_folder(cfg, name), f"crossval_results_folds_{'_'.join(folds)}", "postprocessing.pkl")
    if not os.path.isfile(pp_pkl):
        if _run_logged(["nnUNetv2_find_best_configuration", cfg.dataset, "-c", cfg.configuration, "-tr", name,
                        "-p", cfg.plans, "-f", *folds, "--disable_ensembling", "-np", "1"], log):
            return f"nnUNetv2_find_best_configuration failed for {name}; end of {log}:\n{_tail(log)}"
    model = results_folder(cfg, name)
    for fold in cfg.folds:
        out = prediction_folder(cfg, work, name, fold, "pp")
        if os.path.isfile(os.path.join(out, ".complete")):
            continue
        if _run_logged(["nnUNetv2_apply_postprocessing", "-i", prediction_folder(cfg, work, name, fold, "raw"),
                        "-o", out, "-pp_pkl_file", pp_pkl, "-np", "1", "-plans_json",
                        os.path.join(model, "plans.json"), "-dataset_json", os.path.join(model, "dataset.json")],
                       log):
            return f"nnUNetv2_apply_postprocessing failed for {name} fold {fold}; end of {log}:\n{_tail(log)}"
        open(os.path.join(out, ".complete"), "w").close()
    return None

