#!/usr/bin/env python
"""Reference model on every slice vs k reference slices + mask propagation, on held-out phantom volumes, over seeds
(issue 19, item 4; Pham et al. §2.2).

    python scripts/propagation_evidence.py WORK_ROOT                # all steps; resumes what is done
    python scripts/propagation_evidence.py WORK_ROOT --seeds 1 2 3 -k 5 --keep 2

Steps, each through the package's commands and resumable:

1. the phantom (16 training + 8 held-out volumes, 40 x 64 x 64, every 4th case hard) in ``WORK_ROOT/nnUNet_raw``,
   planned and preprocessed for 2d;
2. ``nnUNetv2_ext_benchmark`` trains plain nnU-Net (the reference module) per seed at one budget, predicts every
   slice of the held-out volumes with ``nnUNetv2_predict`` and times it (``WORK_ROOT/benchmark``);
3. per seed, ``nnUNetv2_ext_train_propagation`` trains the propagation network on the same training volumes (the
   seed also seeds it), and ``nnUNetv2_ext_propagate`` segments the held-out volumes with the same seed's reference
   model on k slices + propagation (timed the same way: the command's wall time);
4. both prediction sets are measured with the benchmark's own evaluation (DSC, worst-10 %, min, HD95, false-positive
   components); the difference is paired by case with the benchmark's hierarchical bootstrap over cases and seeds.

The table goes to stdout and to ``--report`` (default docs/evidence/propagation_benchmark.md). Run it with nothing
else on the machine (the times are compared).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

PHANTOM_ID = 940
BUDGET = ["--epochs", "30", "--iterations", "25", "--val-iterations", "5", "--batch", "4", "--width", "16"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work_root")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("-k", type=int, default=5, help="reference slices per volume (nnUNetv2_ext_propagate -k)")
    p.add_argument("--keep", type=int, default=2, help="reference masks kept (nnUNetv2_ext_propagate --keep)")
    p.add_argument("--propagation-iterations", type=int, default=600)
    p.add_argument("--report", default="docs/evidence/propagation_benchmark.md")
    a = p.parse_args(argv)
    root = os.path.abspath(a.work_root)
    from nnunetv2_ext.benchmark.arms import arm_matrices, arms_table, per_seed_table, use_work_root, write_report
    from nnunetv2_ext.benchmark.runs import WorkFolder, plan_runs, prediction_folder, raw_folder
    from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
    from nnunetv2_ext.pipeline import timed_command as run
    env = use_work_root(root)
    log = os.path.join(root, "propagation_evidence.log")

    if not any(d.startswith(f"Dataset{PHANTOM_ID}_") for d in os.listdir(env["nnUNet_raw"])):
        write_phantom_dataset(PHANTOM_ID, PhantomConfig(num_cases=16, num_test=8, dataset_name="PropagationBench"),
                              env["nnUNet_raw"])
    if not any(d.startswith(f"Dataset{PHANTOM_ID}_") for d in os.listdir(env["nnUNet_preprocessed"])):
        run(["nnUNetv2_plan_and_preprocess", "-d", PHANTOM_ID, "-c", "2d", "-np", "1"], log)

    bench = os.path.join(root, "benchmark")
    bench_args = ["-d", PHANTOM_ID, "-c", "2d", "-tr", "nnUNetTrainer", "-f", "0", "--seeds", *a.seeds, *BUDGET,
                  "-device", "cpu", "--disable-tta", "-o", bench]
    run(["nnUNetv2_ext_benchmark", *bench_args], log)  # trains, predicts every slice (timed), writes its report

    work = WorkFolder(bench)
    cfg = work.load()
    images = os.path.join(raw_folder(cfg), "imagesTs")
    labels = os.path.join(raw_folder(cfg), "labelsTs")
    djson = os.path.join(raw_folder(cfg), "dataset.json")
    every_name, prop_name = "every slice", f"k = {a.k} + propagation"
    folders = {every_name: [], prop_name: []}
    seconds = {every_name: [], prop_name: []}
    fallbacks = []
    for r in plan_runs(cfg):
        # the settings are in the file names: other settings train and propagate anew, never reuse these
        model = os.path.join(root, f"propagation_organ_i{a.propagation_iterations}_s{r.seed}.pth")
        if not os.path.isfile(model):
            run(["nnUNetv2_ext_train_propagation", "-d", PHANTOM_ID, "-l", "organ", "-o", model, "--iterations",
                 a.propagation_iterations, "--seed", r.seed, "-device", "cpu"], log)
        out = os.path.join(root, f"propagated_i{a.propagation_iterations}_s{r.seed}_k{a.k}_keep{a.keep}")
        timing = out + ".seconds"
        if not os.path.isfile(timing):
            took = run(["nnUNetv2_ext_propagate", "-i", images, "-o", out, "-d", PHANTOM_ID, "-c", "2d", "-tr",
                        r.name, "-f", r.fold, "-pm", model, "-k", a.k, "--keep", a.keep, "--disable_tta",
                        "--overwrite", "-device", "cpu"], log)
            with open(timing, "w") as f:
                f.write(str(took))
        with open(timing) as f:
            seconds[prop_name].append(float(f.read()))
        seconds[every_name].append(work.status(r)["predict_wall_s"])
        with open(os.path.join(out, "propagation_log.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
        fallbacks.append(sum(any(lab["fallback"] for lab in rec["labels"].values()) for rec in records))
        folders[every_name].append(prediction_folder(cfg, work, r.name, r.fold, "raw"))
        folders[prop_name].append(out)

    arms = {name: arm_matrices(f, labels, djson) for name, f in folders.items()}
    cases = list(arms[every_name]["_cases"])
    lines = [f"# Mask propagation vs every slice (phantom {PHANTOM_ID}, {len(cases)} held-out volumes, seeds "
             f"{a.seeds})", "",
             f"`python scripts/propagation_evidence.py WORK_ROOT --seeds {' '.join(map(str, a.seeds))} -k {a.k} "
             f"--keep {a.keep} --propagation-iterations {a.propagation_iterations}`", "",
             f"Reference model: plain nnU-Net 2d, {' '.join(BUDGET)} (nnUNetv2_ext_benchmark, fold 0, no test-time "
             f"mirroring). Propagation network: {a.propagation_iterations} iterations per seed, trained on the same "
             f"16 training volumes. DSC in %, mean over seeds ± seed SD; Δ paired by case, 95 % hierarchical "
             f"bootstrap over cases and seeds. Seconds: wall time of the whole command on the {len(cases)} volumes "
             f"(nnUNetv2_predict vs nnUNetv2_ext_propagate; median over seeds).", "",
             arms_table(arms, every_name, seconds), "", "Mean DSC per seed:", "", per_seed_table(arms, a.seeds), "",
             "Per case (DSC %, seeds averaged): " + ", ".join(
                 f"{c} {100 * arms[every_name]['DSC'][:, i].mean():.1f} → {100 * arms[prop_name]['DSC'][:, i].mean():.1f}"
                 for i, c in enumerate(cases)), "",
             f"Volumes whose propagation fell back to the full prediction (no reference slice showed the organ), per "
             f"seed: {fallbacks}."]
    write_report(lines, a.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
