#!/usr/bin/env python
"""Plain nnU-Net + one self-training round, CPS, and CPS with the pseudo-label loop against plain nnU-Net, over
seeds, on the semi-supervised phantom (issue 19, item 4; Pham et al., Table 5 rows 1-4), and how well the consensus
score ranked the pseudo-labels. Replaces the single run of the retired scripts/semi_supervised_evidence.py.

    python scripts/semi_supervised_benchmark.py WORK_ROOT                # all steps; resumes what is done
    python scripts/semi_supervised_benchmark.py WORK_ROOT --seeds 1 2 3 --top-fraction 0.5

Steps, through the package's commands, each resumable:

1. the phantom (8 labelled cases, 32 unlabelled in imagesUnlabeled/, 12 held-out; 24 x 48 x 48) in
   ``WORK_ROOT/nnUNet_raw`` as dataset 945, planned and preprocessed for 2d;
2. ``nnUNetv2_ext_benchmark -tr nnUNetTrainer nnUNetTrainerCPS`` at one budget per seed (fold 0; the budget and the
   seed are in the trainer's name, so every later command trains and predicts with exactly the same budget);
3. per seed and trainer, the loop: ``nnUNetv2_ext_self_train -d 945 -o ID -f 0 1 --final-folds 0 -tr
   <trainer>_BM...s<seed>``: round 0's two models (fold 0 is the benchmark's, reused; fold 1 is trained) predict the
   unlabelled cases, the consensus score selects the top fraction, D_1 = labelled + accepted pseudo-labels (for CPS
   the rest stays unlabelled input), and the final model is trained on D_1 with the same budget; it then predicts
   the held-out cases (``nnUNetv2_predict``, timed);
4. the four arms are measured with the benchmark's evaluation and compared with the benchmark's hierarchical
   bootstrap over cases and seeds (baseline: plain nnU-Net).

The table goes to stdout and to ``--report`` (default docs/evidence/semi_supervised_benchmark.md). Run it with
nothing else on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

LABELLED_ID = 945
BUDGET = ["--epochs", "20", "--iterations", "50", "--val-iterations", "5", "--batch", "4", "--width", "16"]


LOOP_DATASET_OFFSET = {"nnUNetTrainerCPS": 0, "nnUNetTrainer": 20}
"""Seed s's loop writes dataset 945 + offset + s (CPS 946-965, plain nnU-Net 966-985)."""


def self_training_arm(r, root: str, top_fraction: float, images: str, log: str):
    """One seed's loop on top of its benchmark run ``r``: ``nnUNetv2_ext_self_train`` (round 0's fold 0 is the
    benchmark's model, reused; fold 1 is trained), then the final model predicts the held-out images (timed).
    Returns the prediction folder, the prediction's seconds and the self-training state."""
    from nnunetv2_ext.pipeline import timed_command as run
    suffix = "" if r.trainer == "nnUNetTrainerCPS" else "_plain"  # the CPS folders predate the plain arm
    self_train = os.path.join(root, f"self_train{suffix}_s{r.seed}")
    run(["nnUNetv2_ext_self_train", "-d", LABELLED_ID, "-c", "2d", "-o",
         LABELLED_ID + LOOP_DATASET_OFFSET[r.trainer] + r.seed, "-f", "0", "1", "--final-folds", "0", "-tr", r.name,
         "--top-fraction", top_fraction, "--work-dir", self_train, "-device", "cpu", "-np", "2", "-npp", "1",
         "-nps", "1"], log)
    with open(os.path.join(self_train, "self_train_state.json"), encoding="utf-8") as f:
        state = json.load(f)
    out = os.path.join(root, f"loop{suffix}_s{r.seed}")
    timing = out + ".seconds"
    if not os.path.isfile(timing):
        took = run(["nnUNetv2_predict", "-i", images, "-o", out, "-d", state["final"]["dataset"], "-c", "2d", "-f",
                    "0", "-tr", r.name, "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"], log)
        with open(timing, "w") as f:
            f.write(str(took))
    with open(timing) as f:
        return out, float(f.read()), state


def pseudo_label_ranking(state: dict, raw: str) -> dict:
    """How well round 0's consensus score ranked the pseudo-labels: Spearman rho of the slice-level score (Eq. 1)
    with the true DSC of the averaged mask (the phantom keeps the unlabelled cases' labels aside), and the true DSC
    of the selected vs the rejected cases."""
    from nnunetv2_ext.semisupervised.phantom import REFERENCE_FOLDER
    from nnunetv2_ext.semisupervised.ranking import ranking_check, summarize
    predictions = os.path.join(os.path.dirname(os.path.dirname(state["rounds"]["0"]["scores"])), "predictions")
    checks = ranking_check(sorted(os.path.join(predictions, f) for f in os.listdir(predictions)),
                           os.path.join(raw, REFERENCE_FOLDER), os.path.join(raw, "dataset.json"))
    chosen = set(state["rounds"]["0"]["selected"])
    true = {c.case: c.true_dsc for c in checks}
    sel = [v for c, v in true.items() if c in chosen]
    rest = [v for c, v in true.items() if c not in chosen]
    return {"rho": summarize(checks, "slice").spearman_slice,
            "selected": sum(sel) / len(sel) if sel else float("nan"),
            "rejected": sum(rest) / len(rest) if rest else float("nan")}


def ranking_table(ranking: dict) -> str:
    lines = ["| loop | seed | Spearman rho (slice score, true DSC) | true DSC selected | true DSC rejected |",
             "|---|---|---|---|---|"]
    for arm, per_seed in ranking.items():
        for seed, v in sorted(per_seed.items()):
            lines.append(f"| {arm} | {seed} | {v['rho']:.2f} | {100 * v['selected']:.1f} | "
                         f"{100 * v['rejected']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work_root")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--top-fraction", type=float, default=0.5, help="nnUNetv2_ext_self_train --top-fraction")
    p.add_argument("--report", default="docs/evidence/semi_supervised_benchmark.md")
    a = p.parse_args(argv)
    if any(s < 1 or s > 20 for s in a.seeds):
        p.error("--seeds must be in 1..20 (seed s writes the loops' datasets 945 + s and 965 + s)")
    root = os.path.abspath(a.work_root)
    from nnunetv2_ext.benchmark.arms import arm_matrices, arms_table, per_seed_table, use_work_root, write_report
    from nnunetv2_ext.benchmark.runs import WorkFolder, plan_runs, prediction_folder, raw_folder
    from nnunetv2_ext.pipeline import timed_command as run
    from nnunetv2_ext.semisupervised.phantom import write_semisupervised_phantom
    env = use_work_root(root)
    log = os.path.join(root, "semi_supervised_benchmark.log")

    if not any(d.startswith(f"Dataset{LABELLED_ID}_") for d in os.listdir(env["nnUNet_raw"])):
        write_semisupervised_phantom(LABELLED_ID, 8, 32, 12, env["nnUNet_raw"], dataset_name="SemiBench",
                                     shape=(24, 48, 48))
    if not any(d.startswith(f"Dataset{LABELLED_ID}_") for d in os.listdir(env["nnUNet_preprocessed"])):
        run(["nnUNetv2_plan_and_preprocess", "-d", LABELLED_ID, "-c", "2d", "-np", "1"], log)

    bench = os.path.join(root, "benchmark")
    run(["nnUNetv2_ext_benchmark", "-d", LABELLED_ID, "-c", "2d", "-tr", "nnUNetTrainer", "nnUNetTrainerCPS", "-f",
         "0", "--seeds", *a.seeds, *BUDGET, "-device", "cpu", "--disable-tta", "-o", bench], log)

    work = WorkFolder(bench)
    cfg = work.load()
    raw = raw_folder(cfg)
    images, labels, djson = (os.path.join(raw, n) for n in ("imagesTs", "labelsTs", "dataset.json"))
    loops = {"nnUNetTrainerCPS": f"CPS + pseudo-label loop (top {a.top_fraction:g})",
             "nnUNetTrainer": f"plain nnU-Net + one self-training round (top {a.top_fraction:g})"}
    folders = {name: [] for name in ["nnUNetTrainer", "nnUNetTrainerCPS", *loops.values()]}
    seconds = {name: [] for name in folders}
    selected, ranking = {name: {} for name in loops.values()}, {name: {} for name in loops.values()}
    for r in plan_runs(cfg):
        folders[r.trainer].append(prediction_folder(cfg, work, r.name, r.fold, "raw"))
        seconds[r.trainer].append(work.status(r)["predict_wall_s"])
        arm = loops[r.trainer]
        out, took, state = self_training_arm(r, root, a.top_fraction, images, log)
        selected[arm][r.seed] = len(state["rounds"]["0"]["selected"])
        ranking[arm][r.seed] = pseudo_label_ranking(state, raw)
        folders[arm].append(out)
        seconds[arm].append(took)

    arms = {name: arm_matrices(f, labels, djson) for name, f in folders.items()}
    selected_text = "; ".join(f"{arm}: {' / '.join(str(n) for _, n in sorted(per_seed.items()))}"
                              for arm, per_seed in selected.items())
    lines = [f"# Plain nnU-Net, one self-training round, CPS and CPS with the pseudo-label loop (semi-supervised "
             f"phantom, {len(arms['nnUNetTrainer']['_cases'])} held-out volumes, seeds {a.seeds})", "",
             f"`python scripts/semi_supervised_benchmark.py WORK_ROOT --seeds {' '.join(map(str, a.seeds))} "
             f"--top-fraction {a.top_fraction:g}`", "",
             f"Phantom: 8 labelled, 32 unlabelled, 12 held-out cases (24 x 48 x 48), 2d. Every model: "
             f"{' '.join(BUDGET)} (nnUNetv2_ext_benchmark's budget names; CPS: as many unlabelled patches per batch "
             f"on top, two networks). Loops: round 0's two models (folds 0, 1; fold 0 is the benchmark's) score the "
             f"32 unlabelled cases (Eq. 1, slice level); the top {a.top_fraction:g} join the labelled cases "
             f"(selected per seed: {selected_text}); the final model (fold 0, same trainer and budget) trains on them "
             f"(CPS: with the rest as unlabelled input). DSC in %, mean over seeds ± seed SD; Δ paired by case, "
             f"95 % hierarchical bootstrap over cases and seeds. Seconds: nnUNetv2_predict's wall time on the "
             f"held-out cases (median over seeds).", "",
             arms_table(arms, "nnUNetTrainer", seconds), "", "Mean DSC per seed:", "",
             per_seed_table(arms, a.seeds), "",
             "How well round 0's consensus score ranked the pseudo-labels (true DSC of the averaged mask, the "
             "phantom's labels of the unlabelled cases):", "", ranking_table(ranking)]
    write_report(lines, a.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
