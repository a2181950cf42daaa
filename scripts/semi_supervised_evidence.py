#!/usr/bin/env python
"""Evidence for semi-supervised learning (issue 10, part 6): on the phantom with few labelled and more unlabelled
cases, at equal iterations, plain nnU-Net on the labelled cases vs one self-training round vs CPS, compared on the
held-out test cases with ``nnunetv2_ext_compare``; plus how well the round's consensus score ranked the
pseudo-labels (the phantom keeps the true labels of its "unlabelled" cases aside).

Usage (CPU; the full setting takes about 30-45 min on 2 free cores, see docs/semi_supervised.md)::

    python scripts/semi_supervised_evidence.py --work-dir /tmp/semi_evidence
    python scripts/semi_supervised_evidence.py --work-dir /tmp/se_tiny --num-labelled 6 --num-unlabelled 6 \\
        --num-test 2 --epochs 2 --iterations 10            # smoke setting (runs every step; ~10 min)

What it does, all through nnU-Net's commands and ours, in ``WORK`` (its own nnUNet_raw/preprocessed/results):

1. ``write_semisupervised_phantom``: labelled cases in imagesTr, unlabelled in imagesUnlabeled (their labels in
   labelsUnlabeled_reference), test cases in imagesTs/labelsTs; ``nnUNetv2_plan_and_preprocess``.
2. Budget trainers written to ``WORK/trainers`` (on ``nnUNet_extTrainer``): ``nnUNetTrainerEvidencePlain``
   (TinyTrainingMixin + nnUNetTrainer) and ``nnUNetTrainerEvidenceCPS`` (nnUNetTrainerCPSTiny), both with
   ``--epochs`` x ``--iterations`` iterations of ``--batch-size`` labelled patches, the same widths (the CPS batch
   carries as many unlabelled patches on top, through two networks).
3. Plain: ``nnUNetv2_train`` folds 0 and 1 on the labelled dataset (fold 0 is the baseline; both are the M = 2
   models of the self-training round).
4. Self-training: ``nnUNetv2_ext_self_train -f 0 1 --final-folds 0 --top-fraction F`` (reuses the models of 3,
   predicts the unlabelled images, scores, selects, writes and preprocesses the pseudo-labelled dataset, retrains
   fold 0 with the same budget).
5. CPS: ``nnUNetv2_train`` fold 0 with nnUNetTrainerEvidenceCPS on the labelled dataset and its unlabelled cases.
6. ``nnUNetv2_predict`` of the test images by the three fold-0 models; ``nnunetv2_ext_compare`` (baseline: plain).
7. Pseudo-label quality: consensus scores of the round vs the true DSC of the averaged masks (Spearman rho, true DSC
   of the selected and the rejected cases).

Report: ``WORK/semi_supervised_evidence.md`` (+ the comparison report folder ``WORK/comparison``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

TRAINERS_TEMPLATE = '''\
"""Written by scripts/semi_supervised_evidence.py: equal training budgets for the comparison."""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2_ext.trainers.small_variants import nnUNetTrainerCPSTiny
from nnunetv2_ext.trainers.tiny import TinyTrainingMixin


class _Budget:
    tiny_num_epochs = {epochs}
    tiny_iterations_per_epoch = {iterations}
    tiny_batch_size = {batch_size}
    tiny_max_features = {max_features}


class nnUNetTrainerEvidencePlain(_Budget, TinyTrainingMixin, nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = {oversampling}


class nnUNetTrainerEvidenceCPS(_Budget, nnUNetTrainerCPSTiny):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = {oversampling}
'''
PLAIN, CPS = "nnUNetTrainerEvidencePlain", "nnUNetTrainerEvidenceCPS"


def run(cmd, env, log_path) -> str:
    cmd = [str(c) for c in cmd]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(cmd)}\n{proc.stdout}")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log_path}:\n{proc.stdout[-3000:]}")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)
    return proc.stdout


def pseudo_label_quality(work: str, raw: str, selected) -> str:
    """Consensus score of the round vs the true DSC of each unlabelled case's averaged mask."""
    from nnunetv2_ext.semisupervised.phantom import REFERENCE_FOLDER
    from nnunetv2_ext.semisupervised.ranking import ranking_check, summarize
    preds = os.path.join(work, "self_train", "round_0", "predictions")
    folders = sorted(os.path.join(preds, f) for f in os.listdir(preds))
    checks = ranking_check(folders, os.path.join(raw, REFERENCE_FOLDER), os.path.join(raw, "dataset.json"))
    lines = ["| case | slice score (Eq. 1) | volume score | true DSC of the averaged mask | selected |",
             "|---|---|---|---|---|"]
    for c in sorted(checks, key=lambda c: -c.slice_score if c.slice_score == c.slice_score else 1):
        lines.append(f"| {c.case} | {c.slice_score:.3f} | {c.volume_score:.3f} | {c.true_dsc:.3f} | "
                     f"{'yes' if c.case in selected else ''} |")
    chosen = [c.true_dsc for c in checks if c.case in selected]
    rest = [c.true_dsc for c in checks if c.case not in selected]
    lines.append("")
    if len([c for c in checks if c.slice_score == c.slice_score]) >= 3:
        lines.append(summarize(checks, "slice").format())
    if chosen and rest:
        lines.append(f"True DSC of the pseudo-labels: selected {sum(chosen) / len(chosen):.3f} (min {min(chosen):.3f}),"
                     f" rejected {sum(rest) / len(rest):.3f} (min {min(rest):.3f}).")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", required=True)
    p.add_argument("-d", "--dataset-id", type=int, default=940, help="labelled dataset id; +1 is the round's")
    p.add_argument("-c", "--configuration", default="2d", choices=("2d", "3d_fullres"))
    p.add_argument("--num-labelled", type=int, default=8)
    p.add_argument("--num-unlabelled", type=int, default=32)
    p.add_argument("--num-test", type=int, default=12)
    p.add_argument("--shape", type=int, nargs=3, default=(24, 48, 48), metavar=("Z", "Y", "X"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--iterations", type=int, default=50, help="iterations per epoch")
    p.add_argument("--batch-size", type=int, default=4, help="labelled patches per iteration")
    p.add_argument("--max-features", type=int, default=32, help="channels per stage at most (both methods)")
    p.add_argument("--oversampling", type=float, default=0.75, help="foreground oversampling of the labelled patches")
    p.add_argument("--top-fraction", type=float, default=0.5, help="self-training selection")
    p.add_argument("--device", default="cpu")
    p.add_argument("-np", "--num-processes", type=int, default=2)
    a = p.parse_args(argv)

    from nnunetv2_ext._register_trainers import TRAINER_SEARCH_FOLDER
    from nnunetv2_ext.pipeline import nnunet_env
    from nnunetv2_ext.semisupervised.phantom import write_semisupervised_phantom

    t_start = time.time()
    work = os.path.abspath(a.work_dir)
    trainers = os.path.join(work, "trainers")
    env = nnunet_env(work, 2, {"nnUNet_extTrainer": os.pathsep.join([trainers, TRAINER_SEARCH_FOLDER])})
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[k] = env[k]  # for the in-process steps (phantom, pseudo-label quality)
    os.makedirs(trainers, exist_ok=True)
    with open(os.path.join(trainers, "evidence_trainers.py"), "w", encoding="utf-8") as f:
        f.write(TRAINERS_TEMPLATE.format(epochs=a.epochs, iterations=a.iterations, batch_size=a.batch_size,
                                         max_features=a.max_features, oversampling=a.oversampling))
    log = os.path.join(work, "commands.log")
    did, did1, cfg = str(a.dataset_id), str(a.dataset_id + 1), a.configuration
    common = ["-device", a.device]

    raw = write_semisupervised_phantom(a.dataset_id, a.num_labelled, a.num_unlabelled, a.num_test, env["nnUNet_raw"],
                                       overwrite=True, dataset_name="SemiEvidence", shape=tuple(a.shape))
    run(["nnUNetv2_plan_and_preprocess", "-d", did, "-c", cfg, "-np", a.num_processes], env, log)
    for fold in ("0", "1"):
        run(["nnUNetv2_train", did, cfg, fold, "-tr", PLAIN] + common, env, log)
    run(["nnUNetv2_ext_self_train", "-d", did, "-c", cfg, "-o", did1, "-f", "0", "1", "--final-folds", "0",
         "-tr", PLAIN, "--top-fraction", a.top_fraction, "--work-dir", os.path.join(work, "self_train"),
         "-np", a.num_processes, "-npp", "1", "-nps", "1"] + common, env, log)
    run(["nnUNetv2_train", did, cfg, "0", "-tr", CPS] + common, env, log)

    state = json.load(open(os.path.join(work, "self_train", "self_train_state.json"), encoding="utf-8"))
    final_dataset = state["final"]["dataset"]
    models = {"nnU-Net (labelled only)": (did, PLAIN), "self-training (1 round)": (final_dataset, PLAIN),
              "CPS": (did, CPS)}
    predictions = []
    for folder, (name, (dataset, trainer)) in zip(("plain", "self_training", "cps"), models.items()):
        out = os.path.join(work, "predictions", folder)
        run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", out, "-d", dataset, "-c", cfg, "-f",
             "0", "-tr", trainer, "-npp", "1", "-nps", "1"] + common, env, log)
        predictions.append(out)
    compare = run(["nnunetv2_ext_compare", os.path.join(raw, "labelsTs"), *predictions, "--names", *models,
                   "-o", os.path.join(work, "comparison"), "-np", a.num_processes, "--no-progress"], env, log)
    selected = state["rounds"]["0"]["selected"]
    quality = pseudo_label_quality(work, raw, selected)
    hours = (time.time() - t_start) / 3600
    report = "\n".join([
        f"# Semi-supervised evidence ({cfg}, phantom {tuple(a.shape)}: {a.num_labelled} labelled, "
        f"{a.num_unlabelled} unlabelled, {a.num_test} test cases)", "",
        f"Budget of every model: {a.epochs} epochs x {a.iterations} iterations, {a.batch_size} labelled patches per "
        f"iteration (CPS: as many unlabelled patches on top, two networks), at most {a.max_features} channels per "
        f"stage, foreground oversampling {a.oversampling}. Self-training: M = 2 models (folds 0, 1), top "
        f"{a.top_fraction:g} of the unlabelled cases by the slice-level consensus score; {len(selected)} selected. "
        f"Run time {hours:.2f} h on {a.device}.", "",
        "## Test cases (`nnunetv2_ext_compare`, baseline: nnU-Net on the labelled cases)", "",
        "```", compare.strip(), "```", "",
        "## Pseudo-labels of the round (the phantom's true labels of the unlabelled cases)", "", quality, ""])
    print(report)
    with open(os.path.join(work, "semi_supervised_evidence.md"), "w", encoding="utf-8") as f:
        f.write(report)


if __name__ == "__main__":
    main()
