#!/usr/bin/env python
"""Evidence for the cascade tumour variant (issue 13, item 6): plain nnU-Net vs nnUNetTrainerCascadeTumor (and, with
``--dual-branch``, the dual-branch encoder variant), trained with the same budget on the lesion phantom, evaluated
on held-out lesion cases in the metrics of Qiu et al.'s Table 1 (tumour Dice, sensitivity, specificity) with
``nnunetv2_ext.evaluation`` and the ``nnUNetv2_ext_compare`` command.

One command, CPU or GPU::

    python scripts/cascade_evidence.py --work-dir /tmp/cascade_evidence            # defaults: 2d, 16 + 8 cases
    python scripts/cascade_evidence.py --work-dir /tmp/ce -c 3d_fullres --device cuda --epochs 50 --iterations 250

What it does: writes the phantom with ``--lesions`` (organ 1, hypodense tumour 2 inside) to ``WORK/nnUNet_raw``,
runs ``nnUNetv2_plan_and_preprocess``, trains fold ``all`` (every training case; the test cases are separate) of
each method with ``nnUNetv2_train``, predicts ``imagesTs`` with ``nnUNetv2_predict`` and evaluates labels 1 and 2
against ``labelsTs``. Equal budgets: epochs x iterations, batch size, network width and foreground oversampling are
the same for all methods (small trainer subclasses written to ``WORK/trainers`` and put on ``nnUNet_extTrainer``);
every method is seeded the same way (``--seed``; the cascade's augmentation workers run in a fixed order).
Outputs: per-case and summary tables printed and written to ``WORK/cascade_evidence.md`` / ``.json``, and the
``nnUNetv2_ext_compare`` report (paired differences, bootstrap intervals, worst cases, plot) in ``WORK/compare``.

A per-case "detected" column counts a tumour as found when the prediction overlaps it (sensitivity > 0).
This is a phantom with a small budget: it measures how far each pipeline gets under equal iterations, not the
paper's margin on MSD Task07 (0.5924 vs 0.5456 Dice), which needs full nnU-Net training on the real data.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

TRAINERS_TEMPLATE = '''\
"""Written by scripts/cascade_evidence.py: equal training budgets for the comparison."""
import random

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2_ext.trainers.small_variants import nnUNetTrainerCascadeTumorTiny
from nnunetv2_ext.trainers.tiny import TinyTrainingMixin


class _Budget:
    tiny_num_epochs = {epochs}
    tiny_iterations_per_epoch = {iterations}
    tiny_batch_size = {batch_size}
    tiny_max_features = {max_features}


class nnUNetTrainerEvidencePlain(_Budget, TinyTrainingMixin, nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        random.seed({seed})
        np.random.seed({seed})
        torch.manual_seed({seed})
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = {oversampling}


class nnUNetTrainerEvidenceCascade(_Budget, nnUNetTrainerCascadeTumorTiny):
    foreground_oversampling = {oversampling}
    separate_fraction = {separate}
    joint_reference_fraction = {joint}
    seed = {seed}


class nnUNetTrainerEvidenceCascadeDualBranch(nnUNetTrainerEvidenceCascade):
    encoder = "dual_branch"
'''

PLAIN, CASCADE, DUAL = "nnUNetTrainerEvidencePlain", "nnUNetTrainerEvidenceCascade", \
    "nnUNetTrainerEvidenceCascadeDualBranch"
NAMES = {PLAIN: "nnU-Net", CASCADE: "cascade", DUAL: "cascade dual-branch"}


def run(cmd, env, log_path):
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log_path}")
    seconds = time.time() - t0
    print(f"  done in {seconds:.0f} s", flush=True)
    return seconds


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", required=True, help="folder for nnUNet_raw/preprocessed/results and the report")
    p.add_argument("-d", "--dataset-id", type=int, default=929)
    p.add_argument("-c", "--configuration", default="2d", choices=("2d", "3d_fullres"))
    p.add_argument("--num-cases", type=int, default=16, help="training cases")
    p.add_argument("--num-test", type=int, default=8, help="held-out lesion cases (>= 8 for the issue's evidence)")
    p.add_argument("--shape", type=int, nargs=3, default=(24, 48, 48), metavar=("Z", "Y", "X"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iterations", type=int, default=25, help="iterations per epoch")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-features", type=int, default=64, help="network width cap (tiny networks)")
    p.add_argument("--oversampling", type=float, default=0.75, help="foreground oversampling of all methods")
    p.add_argument("--separate-fraction", type=float, default=0.1, help="cascade step S share")
    p.add_argument("--joint-fraction", type=float, default=0.4, help="cascade step I share")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--dual-branch", action="store_true", help="also train the dual-branch encoder variant")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.epochs < 3:
        p.error("--epochs must be >= 3 (the cascade needs its steps S, I and J)")
    if a.num_test < 1 or a.num_cases < 2:
        p.error("--num-test must be >= 1 and --num-cases >= 2")
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    from nnunetv2_ext._register_trainers import TRAINER_SEARCH_FOLDER
    from nnunetv2_ext.pipeline import nnunet_env
    from nnunetv2_ext.evaluation import compare_folders, format_markdown_table
    from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset

    work = os.path.abspath(a.work_dir)
    trainers = os.path.join(work, "trainers")
    os.makedirs(trainers, exist_ok=True)
    with open(os.path.join(trainers, "evidence_trainers.py"), "w", encoding="utf-8") as f:
        f.write(TRAINERS_TEMPLATE.format(epochs=a.epochs, iterations=a.iterations, batch_size=a.batch_size,
                                         max_features=a.max_features, oversampling=a.oversampling, seed=a.seed,
                                         separate=a.separate_fraction, joint=a.joint_fraction))
    env = nnunet_env(work, 2, {"nnUNet_extTrainer": os.pathsep.join([trainers, TRAINER_SEARCH_FOLDER])})
    log = os.path.join(work, "commands.log")
    did = str(a.dataset_id)
    methods = [PLAIN, CASCADE] + ([DUAL] if a.dual_branch else [])

    cfg = PhantomConfig(num_cases=a.num_cases, num_test=a.num_test, shape=tuple(a.shape), lesions=True,
                        dataset_name="CascadeEvidence")
    raw = write_phantom_dataset(a.dataset_id, cfg, env["nnUNet_raw"], overwrite=True)
    seconds = {"preprocess": run(["nnUNetv2_plan_and_preprocess", "-d", did, "-c", a.configuration, "-np", "1"],
                                 env, log)}
    predictions = {}
    for trainer in methods:
        seconds[f"train {NAMES[trainer]}"] = run(["nnUNetv2_train", did, a.configuration, "all", "-tr", trainer,
                                                  "-device", a.device], env, log)
        out = os.path.join(work, "predictions", trainer)
        seconds[f"predict {NAMES[trainer]}"] = run(
            ["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", out, "-d", did, "-c", a.configuration,
             "-f", "all", "-tr", trainer, "--disable_tta", "-device", a.device], env, log)
        predictions[trainer] = out

    names = [NAMES[m] for m in methods]
    labels_ts = os.path.join(raw, "labelsTs")
    results = compare_folders(labels_ts, [predictions[m] for m in methods], names=names,
                              dataset_json=os.path.join(raw, "dataset.json"), labels=[1, 2], num_processes=1,
                              progress=False)
    compare_dir = os.path.join(work, "compare")
    run(["nnUNetv2_ext_compare", labels_ts, *[predictions[m] for m in methods], "--names", *names,
         "-djfile", os.path.join(raw, "dataset.json"), "-l", "1", "2", "-o", compare_dir, "--overwrite",
         "-np", "1", "--no-progress"], env, log)

    metrics = ("DSC", "recall", "specificity")
    header = "| case | " + " | ".join(f"{n} {m}" for n in names for m in ("Dice", "sens.", "spec.")) + " |"
    rows = [header, "|" + "---|" * (1 + 3 * len(names))]
    per_case, detected = {}, {n: 0 for n in names}
    first = next(iter(results.values()))
    for case in first.cases:
        cells = []
        for method, res in results.items():
            vals = {m: float(res.values(m, 2, [case])[0]) for m in metrics}
            per_case.setdefault(case, {})[method] = vals
            detected[method] += int(vals["recall"] > 0)
            cells += [f"{100 * vals[m]:.1f}" for m in metrics]
        rows.append(f"| {case} | " + " | ".join(cells) + " |")
    n_cases = len(first.cases)
    budget = (f"{a.configuration}, {a.epochs} epochs x {a.iterations} iterations, batch {a.batch_size}, width <= "
              f"{a.max_features}, phantom {tuple(a.shape)}, {a.num_cases} training / {a.num_test} test cases, "
              f"seed {a.seed}, device {a.device}")
    report = "\n".join([
        f"# Cascade evidence ({budget})", "",
        "Tumour (label 2), per held-out case, % (Qiu et al. Table 1 metrics):", "", *rows, "",
        "Tumours detected (prediction overlaps the tumour): " + ", ".join(
            f"{n} {detected[n]}/{n_cases}" for n in names), "",
        "Tumour summary (mean ± std [min, max] over cases):", "",
        format_markdown_table(results, metrics=metrics, label=2), "",
        "Organ (label 1) summary:", "", format_markdown_table(results, metrics=metrics, label=1), "",
        "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), "",
        f"Paired differences, bootstrap intervals and worst cases: {compare_dir}", ""])
    print(report)
    with open(os.path.join(work, "cascade_evidence.md"), "w", encoding="utf-8") as f:
        f.write(report)
    with open(os.path.join(work, "cascade_evidence.json"), "w", encoding="utf-8") as f:
        json.dump({"settings": vars(a), "tumour_per_case": per_case, "detected": detected, "seconds": seconds,
                   "python": sys.version.split()[0]}, f, indent=1)


if __name__ == "__main__":
    main()
