#!/usr/bin/env python
"""CPS with and without the pseudo-label loop against plain nnU-Net, over seeds, on the semi-supervised phantom
(issue 19, item 4; Pham et al., Table 5 rows 3-4). Replaces the single run of scripts/semi_supervised_evidence.py.

    python scripts/semi_supervised_benchmark.py WORK_ROOT                # all steps; resumes what is done
    python scripts/semi_supervised_benchmark.py WORK_ROOT --seeds 1 2 3 --top-fraction 0.5

Steps, through the package's commands, each resumable:

1. the phantom (8 labelled cases, 32 unlabelled in imagesUnlabeled/, 12 held-out; 24 x 48 x 48) in
   ``WORK_ROOT/nnUNet_raw`` as dataset 945, planned and preprocessed for 2d;
2. ``nnUNetv2_ext_benchmark -tr nnUNetTrainer nnUNetTrainerCPS`` at one budget per seed (fold 0; the budget and the
   seed are in the trainer's name, so every later command trains and predicts with exactly the same budget);
3. per seed, the loop: ``nnUNetv2_ext_self_train -d 945 -o 945+seed -f 0 1 --final-folds 0 -tr
   nnUNetTrainerCPS_BM...s<seed>``: round 0's two CPS models (fold 0 is the benchmark's, reused; fold 1 is trained)
   predict the unlabelled cases, the consensus score selects the top fraction, D_1 = labelled + accepted
   pseudo-labels (the rest stays unlabelled CPS input), and the final CPS model is trained on D_1 with the same
   budget; it then predicts the held-out cases (``nnUNetv2_predict``, timed);
4. the three arms are measured with the benchmark's evaluation and compared with the benchmark's hierarchical
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work_root")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--top-fraction", type=float, default=0.5, help="nnUNetv2_ext_self_train --top-fraction")
    p.add_argument("--report", default="docs/evidence/semi_supervised_benchmark.md")
    a = p.parse_args(argv)
    if any(s < 1 or s > 50 for s in a.seeds):
        p.error("--seeds must be in 1..50 (seed s writes the loop's dataset 945 + s)")
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
    images = os.path.join(raw_folder(cfg), "imagesTs")
    labels = os.path.join(raw_folder(cfg), "labelsTs")
    djson = os.path.join(raw_folder(cfg), "dataset.json")
    loop_name = f"CPS + pseudo-label loop (top {a.top_fraction:g})"
    folders = {"nnUNetTrainer": [], "nnUNetTrainerCPS": [], loop_name: []}
    seconds = {name: [] for name in folders}
    selected = {}
    for r in plan_runs(cfg):
        folders[r.trainer].append(prediction_folder(cfg, work, r.name, r.fold, "raw"))
        seconds[r.trainer].append(work.status(r)["predict_wall_s"])
        if r.trainer != "nnUNetTrainerCPS":
            continue
        round_id = LABELLED_ID + r.seed
        self_train = os.path.join(root, f"self_train_s{r.seed}")
        run(["nnUNetv2_ext_self_train", "-d", LABELLED_ID, "-c", "2d", "-o", round_id, "-f", "0", "1",
             "--final-folds", "0", "-tr", r.name, "--top-fraction", a.top_fraction, "--work-dir", self_train,
             "-device", "cpu", "-np", "2", "-npp", "1", "-nps", "1"], log)
        with open(os.path.join(self_train, "self_train_state.json"), encoding="utf-8") as f:
            state = json.load(f)
        selected[r.seed] = len(state["rounds"]["0"]["selected"])
        out = os.path.join(root, f"loop_s{r.seed}")
        timing = out + ".seconds"
        if not os.path.isfile(timing):
            took = run(["nnUNetv2_predict", "-i", images, "-o", out, "-d", state["final"]["dataset"], "-c", "2d",
                        "-f", "0", "-tr", r.name, "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"], log)
            with open(timing, "w") as f:
                f.write(str(took))
        with open(timing) as f:
            seconds[loop_name].append(float(f.read()))
        folders[loop_name].append(out)

    arms = {name: arm_matrices(f, labels, djson) for name, f in folders.items()}
    lines = [f"# CPS with and without the pseudo-label loop vs plain nnU-Net (semi-supervised phantom, "
             f"{len(arms['nnUNetTrainer']['_cases'])} held-out volumes, seeds {a.seeds})", "",
             f"`python scripts/semi_supervised_benchmark.py WORK_ROOT --seeds {' '.join(map(str, a.seeds))} "
             f"--top-fraction {a.top_fraction:g}`", "",
             f"Phantom: 8 labelled, 32 unlabelled, 12 held-out cases (24 x 48 x 48), 2d. Every model: "
             f"{' '.join(BUDGET)} (nnUNetv2_ext_benchmark's budget names; CPS: as many unlabelled patches per batch "
             f"on top, two networks). Loop: round 0's two CPS models (folds 0, 1) score the 32 unlabelled cases "
             f"(Eq. 1, slice level); the top {a.top_fraction:g} join the labelled cases (selected per seed: "
             f"{selected}); the final CPS model (fold 0) trains on them with the rest as unlabelled input. DSC in "
             f"%, mean over seeds ± seed SD; Δ paired by case, 95 % hierarchical bootstrap over cases and seeds. "
             f"Seconds: nnUNetv2_predict's wall time on the held-out cases (median over seeds).", "",
             arms_table(arms, "nnUNetTrainer", seconds), "", "Mean DSC per seed:", "",
             per_seed_table(arms, a.seeds)]
    write_report(lines, a.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
