#!/usr/bin/env python
"""Coarse-to-fine, its multi-level structural network and the paper's MLL model against plain nnU-Net on the
phantom, seeded, through ``nnUNetv2_ext_benchmark`` (issue 18 item 7, issue 17 item 3; Liu, Duan, Zeng 2021).
Replaces the single unseeded run of the retired ``scripts/coarse_to_fine_evidence.py`` (which wrote its trainers
into a string).

    python scripts/coarse_to_fine_benchmark.py WORK_ROOT                 # all steps; resumes what is done
    python scripts/coarse_to_fine_benchmark.py WORK_ROOT --run-index 3   # one benchmark run (a scheduler's job)

Steps, each through nnU-Net's or the package's commands and resumable:

1. the phantom (16 training + 6 held-out cases, 24 x 64 x 64, every 4th case hard) in ``WORK_ROOT/nnUNet_raw``,
   planned and preprocessed for 2d;
2. ``nnUNetv2_ext_benchmark`` trains plain nnU-Net and the three coarse-to-fine trainers at one budget, fold 0,
   seeds 1-3 (``--epochs 30 --iterations 25 --batch 4 --width 16``; the old single run's 16 epochs were tried first
   and were too short: plain nnU-Net learned the organ in 1 of 3 seeds), predicts the held-out cases (the
   coarse-to-fine trainers with their iterative test), applies the postprocessing ``nnUNetv2_find_best_configuration``
   chose and writes its report (work folder ``docs/evidence/coarse_to_fine_benchmark_e<epochs>``);
3. the iterative test's Table 4 (iterations, converged share, RDSC after round 1) per trainer and seed, from the
   ``coarse_to_fine_iterations.jsonl`` that ``nnUNetv2_predict`` wrote beside the predictions.

The coarse-to-fine trainers are the ``...K4`` variants (``nnunetv2_ext.trainers.small_variants``): crop margin
K = 4 voxels instead of the paper's 20 (which is for 512 x 512 slices) and 256 pixel-wise points; everything else is
the paper's (ω1 = 0.3, the MLN's Eq. 13 schedule, the MLL model's β switch and learning-rate restart at 60 %).
Run it with nothing else on the machine (the report compares times).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

PHANTOM_ID = 939
TRAINERS = ["nnUNetTrainer", "nnUNetTrainerCoarseToFineK4", "nnUNetTrainerCoarseToFineMLNK4",
            "nnUNetTrainerCoarseToFineMLLK4"]
BUDGET = ["--iterations", "25", "--val-iterations", "5", "--batch", "4", "--width", "16"]


def iterative_test_table(rows: dict) -> str:
    """Table 4 per trainer: ``rows`` maps a trainer to one :func:`summarise_cases` result per seed."""
    lines = ["| trainer | seed | cases | iterations per case (its slowest slice) | cases converged | slices refined | "
             "iterations per refined slice | refined slices converged | mean RDSC after round 1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for trainer, per_seed in rows.items():
        for seed, s in per_seed:
            cases = s["per_case"]
            refined = sum(c["inputs_refined"] for c in cases)
            per_input = sum(c["mean_iterations"] * c["inputs_refined"] for c in cases) / refined if refined else 0.0
            conv = sum(c["converged_inputs"] * c["inputs_refined"] for c in cases) / refined if refined else None
            first = s["mean_rdsc_by_iteration"][0] if s["mean_rdsc_by_iteration"] else None
            lines.append(f"| {trainer} | {seed} | {s['cases']} | {s['mean_iterations']:.2f} | "
                         f"{100 * s['converged_fraction']:.0f} % | {refined} of {sum(c['inputs'] for c in cases)} | "
                         f"{per_input:.2f} | {'–' if conv is None else f'{100 * conv:.0f} %'} | "
                         f"{'–' if first is None else f'{first:.3f}'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work_root", help="gets nnUNet_raw / nnUNet_preprocessed / nnUNet_results")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=30, help="epochs of 25 iterations (16: the first, failed try)")
    p.add_argument("--run-index", type=int, help="run only this benchmark run (then no report)")
    p.add_argument("-o", "--output", help="the benchmark's work folder (default "
                                          "docs/evidence/coarse_to_fine_benchmark_e<epochs>)")
    a = p.parse_args(argv)
    a.output = a.output or f"docs/evidence/coarse_to_fine_benchmark_e{a.epochs}"
    root = os.path.abspath(a.work_root)
    from nnunetv2_ext.benchmark.arms import use_work_root, write_report
    from nnunetv2_ext.benchmark.runs import WorkFolder, plan_runs, prediction_folder
    from nnunetv2_ext.coarse_to_fine.iterative import StoppingRule, summarise_cases
    from nnunetv2_ext.coarse_to_fine.network import ITERATION_CASE_LOG
    from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
    from nnunetv2_ext.pipeline import timed_command as run
    from nnunetv2_ext.trainers.coarse_to_fine import nnUNetTrainerCoarseToFine as C2F
    env = use_work_root(root)
    log = os.path.join(root, "coarse_to_fine_benchmark.log")

    if not any(d.startswith(f"Dataset{PHANTOM_ID}_") for d in os.listdir(env["nnUNet_raw"])):
        write_phantom_dataset(PHANTOM_ID, PhantomConfig(num_cases=16, num_test=6, shape=(24, 64, 64),
                                                        dataset_name="CoarseToFineBench"), env["nnUNet_raw"])
    if not any(d.startswith(f"Dataset{PHANTOM_ID}_") for d in os.listdir(env["nnUNet_preprocessed"])):
        run(["nnUNetv2_plan_and_preprocess", "-d", PHANTOM_ID, "-c", "2d", "-np", "1"], log)

    bench_args = ["-d", PHANTOM_ID, "-c", "2d", "-tr", *TRAINERS, "-f", "0", "--seeds", *a.seeds, "--epochs", a.epochs,
                  *BUDGET, "-device", "cpu", "--disable-tta", "-o", a.output]
    if a.run_index is not None:
        run(["nnUNetv2_ext_benchmark", *bench_args, "--run-index", a.run_index], log)
        return 0
    run(["nnUNetv2_ext_benchmark", *bench_args], log)  # trains, predicts, postprocesses, writes its report

    work = WorkFolder(a.output)
    cfg = work.load()
    rule = StoppingRule(C2F.tol, C2F.max_iterations)
    table4 = {}
    for r in plan_runs(cfg):
        case_log = os.path.join(prediction_folder(cfg, work, r.name, r.fold, "raw"), ITERATION_CASE_LOG)
        if r.trainer == "nnUNetTrainer" or not os.path.isfile(case_log):
            continue
        with open(case_log, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        table4.setdefault(r.trainer, []).append((r.seed, summarise_cases(records, rule)))
    with open(os.path.join(a.output, "report", "report.md"), encoding="utf-8") as f:
        report = f.read().rstrip()
    lines = [report, "", f"## Iterative test (Algorithm 1, tol {rule.tol:g}, T_max {rule.max_iterations}), the paper's "
             "Table 4", "",
             "A slice is refined when its coarse mask is not empty (an empty coarse mask gives no box and the slice "
             "is predicted empty; most phantom slices hold no organ); a case converges when all its slices do (no "
             "test-time mirroring).", "", iterative_test_table(table4)]
    write_report(lines, os.path.join(a.output, "coarse_to_fine_benchmark.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
