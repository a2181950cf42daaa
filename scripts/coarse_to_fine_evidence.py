#!/usr/bin/env python
"""Evidence for the coarse-to-fine scheme and the multi-level structural network (issue 12): plain nnU-Net, the MLL
loss trainer, coarse-to-fine and coarse-to-fine + MLN, trained at EQUAL iteration budget on the phantom (2d, folds
0 and 1), held-out cases predicted with both folds, one comparison table by ``nnUNetv2_ext_compare``, plus the
iterative test's Table 4 (mean iterations, converged fraction) of the two coarse-to-fine methods.

Usage (CPU; the full default run is the one to report; expected run time in trainers_docs/nnUNetTrainerCoarseToFine.md)::

    python scripts/coarse_to_fine_evidence.py --work-dir /tmp/c2f_evidence
    python scripts/coarse_to_fine_evidence.py --work-dir /tmp/c2f_smoke --num-cases 6 --num-test 2 --epochs 3 \\
        --iterations 4 --shape 16 48 48          # smoke check of the pipeline, a few minutes

What it does: writes the phantom (``--num-cases`` training + ``--num-test`` held-out cases) to ``WORK/nnUNet_raw``,
runs ``nnUNetv2_plan_and_preprocess -c 2d``, writes four trainer subclasses with the same budget (epochs x
iterations, batch size, network width via ``TinyTrainingMixin``, foreground oversampling) into ``WORK/trainers``
(added to ``nnUNet_extTrainer``), trains folds 0 and 1 of each with ``nnUNetv2_train``, predicts ``imagesTs`` with
``nnUNetv2_predict -f 0 1`` (the coarse-to-fine methods with their iterative test, log in
``WORK/iterations_<method>.json``) and compares the four prediction folders with ``nnUNetv2_ext_compare`` (report
in ``WORK/comparison``). The markdown table goes to stdout and ``WORK/coarse_to_fine_evidence.md``.

The crop margin K defaults to 4 voxels: the paper's K = 20 is for 512 x 512 CT slices; on the 64 x 64 phantom it
would crop (nearly) the whole slice and there would be nothing "fine" about the fine stage.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

from nnunetv2_ext.coarse_to_fine.iterative import PAPER_MAX_ITERATIONS, PAPER_TOL, StoppingRule, summarise_cases
from nnunetv2_ext.coarse_to_fine.network import ITERATION_CASE_LOG

TRAINERS_TEMPLATE = '''\
"""Written by scripts/coarse_to_fine_evidence.py: equal training budgets for the comparison."""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2_ext.trainers.coarse_to_fine import nnUNetTrainerCoarseToFine, nnUNetTrainerCoarseToFineMLN
from nnunetv2_ext.trainers.loss_trainers import nnUNetTrainerMLL
from nnunetv2_ext.trainers.tiny import TinyTrainingMixin


class _Budget(TinyTrainingMixin):
    tiny_num_epochs = {epochs}
    tiny_iterations_per_epoch = {iterations}
    tiny_batch_size = {batch_size}

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = {oversampling}


class _C2F:
    crop_margin = {margin}
    foreground_oversampling = {oversampling}


class nnUNetTrainerC2FEvidencePlain(_Budget, nnUNetTrainer):
    pass


class nnUNetTrainerC2FEvidenceMLL(_Budget, nnUNetTrainerMLL):
    pass


class nnUNetTrainerC2FEvidenceCoarseToFine(_C2F, _Budget, nnUNetTrainerCoarseToFine):
    pass


class nnUNetTrainerC2FEvidenceCoarseToFineMLN(_C2F, _Budget, nnUNetTrainerCoarseToFineMLN):
    mln_num_points = {num_points}


class nnUNetTrainerC2FEvidenceCoarseToFineMLNw1(nnUNetTrainerC2FEvidenceCoarseToFineMLN):
    coarse_weight = 1.0  # omega1 = 1 instead of the paper's 0.3 (see the evidence page)
'''

METHODS = {  # trainer -> name in the table
    "nnUNetTrainerC2FEvidencePlain": "nnU-Net",
    "nnUNetTrainerC2FEvidenceMLL": "MLL loss",
    "nnUNetTrainerC2FEvidenceCoarseToFine": "coarse-to-fine",
    "nnUNetTrainerC2FEvidenceCoarseToFineMLN": "coarse-to-fine + MLN",
    "nnUNetTrainerC2FEvidenceCoarseToFineMLNw1": "coarse-to-fine + MLN, omega1 = 1",
}
ITERATIVE = ("nnUNetTrainerC2FEvidenceCoarseToFine", "nnUNetTrainerC2FEvidenceCoarseToFineMLN",
             "nnUNetTrainerC2FEvidenceCoarseToFineMLNw1")


def run(cmd, env, log_path):
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log_path}")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)
    return time.time() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", required=True, help="folder for nnUNet_raw/preprocessed/results and the report")
    p.add_argument("-d", "--dataset-id", type=int, default=939)
    p.add_argument("--num-cases", type=int, default=16)
    p.add_argument("--num-test", type=int, default=6)
    p.add_argument("--shape", type=int, nargs=3, default=(24, 64, 64), metavar=("Z", "Y", "X"))
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--iterations", type=int, default=25, help="iterations per epoch")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--oversampling", type=float, default=0.5, help="foreground oversampling of every method")
    p.add_argument("--crop-margin", type=int, default=4, help="K of the coarse-to-fine methods (voxels)")
    p.add_argument("--num-points", type=int, default=256, help="pixel-branch points of the MLN")
    p.add_argument("--folds", type=int, nargs="+", default=(0, 1))
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.epochs < 3:
        raise SystemExit("--epochs must be >= 3 (the coarse-to-fine methods need their three steps)")

    from nnunetv2_ext._register_trainers import TRAINER_SEARCH_FOLDER
    from nnunetv2_ext.pipeline import nnunet_env
    from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset

    work = os.path.abspath(a.work_dir)
    trainers = os.path.join(work, "trainers")
    os.makedirs(trainers, exist_ok=True)
    with open(os.path.join(trainers, "c2f_evidence_trainers.py"), "w", encoding="utf-8") as f:
        f.write(TRAINERS_TEMPLATE.format(epochs=a.epochs, iterations=a.iterations, batch_size=a.batch_size,
                                         oversampling=a.oversampling, margin=a.crop_margin,
                                         num_points=a.num_points))
    # 2 augmentation workers per training; nnU-Net's export pools with 1 process (default: 8 spawned per command)
    env = nnunet_env(work, 2, {"nnUNet_extTrainer": os.pathsep.join([trainers, TRAINER_SEARCH_FOLDER]),
                               "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    log = os.path.join(work, "commands.log")
    did = str(a.dataset_id)
    t_start = time.time()

    cfg = PhantomConfig(num_cases=a.num_cases, num_test=a.num_test, shape=tuple(a.shape),
                        dataset_name="CoarseToFineEvidence")
    raw = write_phantom_dataset(a.dataset_id, cfg, env["nnUNet_raw"], overwrite=True)
    run(["nnUNetv2_plan_and_preprocess", "-d", did, "-c", "2d", "-np", "1", "-npfp", "1"], env, log)
    predictions, train_seconds, iterations = {}, {}, {}
    folds = [str(f) for f in a.folds]
    for trainer in METHODS:
        train_seconds[trainer] = sum(run(["nnUNetv2_train", did, "2d", fold, "-tr", trainer, "-device", a.device],
                                         env, log) for fold in folds)
        out = os.path.join(work, "predictions", trainer)
        run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", out, "-d", did, "-c", "2d", "-f",
             *folds, "-tr", trainer, "-device", a.device, "-npp", "1", "-nps", "1"], env, log)
        predictions[trainer] = out
        if trainer in ITERATIVE:  # one JSON line per case and fold, written by the prediction
            with open(os.path.join(out, ITERATION_CASE_LOG), encoding="utf-8") as f:
                records = [json.loads(line) for line in f]
            iterations[trainer] = summarise_cases(records, StoppingRule(PAPER_TOL, PAPER_MAX_ITERATIONS))

    comparison = os.path.join(work, "comparison")
    cmd = ["nnUNetv2_ext_compare", os.path.join(raw, "labelsTs"), *predictions.values(), "--names",
           *METHODS.values(), "-djfile", os.path.join(raw, "dataset.json"), "-o", comparison, "--overwrite", "-np",
           "1", "--no-progress"]
    print("$ " + " ".join(cmd), flush=True)
    table = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if table.returncode != 0:
        raise RuntimeError(f"nnUNetv2_ext_compare failed:\n{table.stdout}\n{table.stderr}")

    rows = ["| method | cases (x folds) | iterations per case (its slowest slice) | cases converged | inputs refined "
            "(slices x mirrorings) | iterations per refined input | refined inputs converged | mean RDSC after round 1 |",
            "|---|---|---|---|---|---|---|---|"]
    for trainer, s in iterations.items():
        first = s["mean_rdsc_by_iteration"][0] if s["mean_rdsc_by_iteration"] else float("nan")
        per_case = s.get("per_case", [])
        refined = sum(c["inputs_refined"] for c in per_case)
        per_slice = sum(c["mean_iterations"] * c["inputs_refined"] for c in per_case) / refined if refined else 0.0
        conv = sum(c["converged_inputs"] * c["inputs_refined"] for c in per_case) / refined if refined else float("nan")
        rows.append(f"| {METHODS[trainer]} | {s['cases']} | {s['mean_iterations']:.2f} | "
                    f"{100 * s['converged_fraction']:.0f} % | {refined} of {sum(c['inputs'] for c in per_case)} | "
                    f"{per_slice:.2f} | {100 * conv:.0f} % | {first:.4f} |")
    minutes = (time.time() - t_start) / 60
    report = "\n".join([
        f"# Coarse-to-fine evidence (2d, folds {' '.join(folds)}, {a.epochs} epochs x {a.iterations} iterations, "
        f"batch {a.batch_size}, phantom {tuple(a.shape)}, {a.num_cases} training / {a.num_test} held-out cases, "
        f"K = {a.crop_margin})", "",
        "Held-out cases, predicted with both folds (nnUNetv2_ext_compare, organ label 1):", "",
        table.stdout.strip(), "",
        "Iterative test (Algorithm 1, tol 0.99, T_max 10), Table 4 of the paper:", "", *rows, "",
        "Training time per method (all folds): " + ", ".join(
            f"{METHODS[t]} {s / 60:.1f} min" for t, s in train_seconds.items()) + f"; whole run {minutes:.1f} min"])
    print(report)
    with open(os.path.join(work, "coarse_to_fine_evidence.md"), "w", encoding="utf-8") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    main()
