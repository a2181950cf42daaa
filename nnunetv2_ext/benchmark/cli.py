"""``nnUNetv2_ext_benchmark``: trainers x folds x seeds at an equal budget through nnU-Net's own commands, one report.

    nnUNetv2_ext_benchmark -d 901 -c 2d -tr nnUNetTrainer nnUNetTrainerHESS -f 0 --seeds 1 2 3 \\
        --epochs 30 --iterations 50 --batch 8 --width 8 -device cpu --group-regex '^(PANCREAS_\\d+)_' -o bench_nih

runs everything that is not finished yet, then writes ``bench_nih/report/report.md``. The same command again
continues a killed benchmark. For a cluster: ``--list`` prints the runs, ``--run-index K`` executes one (every run is
independent: a SLURM array job over the indices), ``--collect`` writes the report from the finished runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import List, Optional

from nnunetv2_ext.benchmark.budget import Budget, BudgetError, budget_name, find_trainer_class
from nnunetv2_ext.benchmark.runs import (BenchmarkConfig, BenchmarkError, WorkFolder, execute_run, plan_runs,
                                         postprocess_trainer)
from nnunetv2_ext.benchmark.splits import SplitError, case_groups, grouped_splits, write_splits
from nnunetv2_ext.io_atomic import OutputFolderError, check_output_folder, write_folder_atomically


def _dataset_name(dataset: str) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise BenchmarkError(f"dataset {dataset}: {str(e).splitlines()[0]}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_ext_benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("-d", "--dataset", help="dataset id or name (preprocessed for -c)")
    p.add_argument("-c", "--configuration", default="2d", help="nnU-Net configuration (default 2d)")
    p.add_argument("-tr", "--trainers", nargs="+", help="trainer class names; the first is the baseline unless "
                                                        "--baseline")
    p.add_argument("-f", "--folds", type=int, nargs="+", default=[0], help="folds (default 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds, each >= 1 (default 1 2 3)")
    p.add_argument("--epochs", type=int, help="epochs of every trainer")
    p.add_argument("--iterations", type=int, default=250, help="training iterations per epoch (default 250)")
    p.add_argument("--val-iterations", type=int, default=5, help="validation iterations per epoch (default 5)")
    p.add_argument("--batch", type=int, default=0, help="batch size (default 0: the plans')")
    p.add_argument("--width", type=int, default=0, help="features of the first stage, later stages scaled alike "
                                                        "(default 0: the plans')")
    p.add_argument("--keep-checkpoints-every", type=int, default=0, metavar="K",
                   help="keep the weights after every K-th epoch and predict the held-out set with each, so that the "
                        "report follows DSC and false-positive components over training (default 0: off)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-device", "--device", default="cuda", choices=("cpu", "cuda", "mps"), help="as nnUNetv2_train")
    p.add_argument("--test", choices=("imagesTs", "validation"), default="imagesTs",
                   help="evaluate on the held-out imagesTs/labelsTs (default) or on the folds' validation cases")
    p.add_argument("--disable-tta", action="store_true", help="predict without test-time mirroring")
    p.add_argument("--group-regex", default=None, help="cases of one patient stay in one fold: regex whose first "
                                                       "group names the patient, e.g. '^(PANCREAS_\\d+)_'")
    p.add_argument("--groups", default=None, help="JSON file case -> patient (instead of --group-regex)")
    p.add_argument("--baseline", default=None, help="baseline trainer (default: the first of -tr)")
    p.add_argument("--label", default=None, help="the dataset.json label (or region) name the report measures, e.g. "
                   "tumour (default: the first foreground label)")
    p.add_argument("-o", "--output", required=True, help="work folder (settings, run states, predictions, logs, "
                                                         "report)")
    p.add_argument("--list", action="store_true", help="check the settings, write them (and the grouped split), print "
                                                       "the runs with their indices and states; train nothing")
    p.add_argument("--run-index", type=int, default=None, help="execute only this run (for a cluster array job)")
    p.add_argument("--collect", action="store_true", help="only write the report from the finished runs")
    p.add_argument("--n-bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="processes for the evaluation (default 1)")
    return p


def _config_from_args(a) -> BenchmarkConfig:
    missing = [flag for flag, v in (("-d", a.dataset), ("-tr", a.trainers), ("--epochs", a.epochs)) if not v]
    if missing:
        raise BenchmarkError(f"a new benchmark needs {', '.join(missing)}")
    if any(s < 1 for s in a.seeds):
        raise BenchmarkError(f"--seeds must be >= 1, got {a.seeds}")
    if len(set(a.seeds)) != len(a.seeds) or len(set(a.trainers)) != len(a.trainers) or len(set(a.folds)) != len(a.folds):
        raise BenchmarkError("--seeds, -tr and -f must not repeat a value")
    if a.baseline is not None and a.baseline not in a.trainers:
        raise BenchmarkError(f"--baseline {a.baseline} is not one of -tr {a.trainers}")
    Budget(a.epochs, a.iterations, a.val_iterations, a.batch, a.width, 1, a.keep_checkpoints_every)  # names the value
    if a.keep_checkpoints_every and a.test != "imagesTs":
        raise BenchmarkError("--keep-checkpoints-every needs the held-out set (--test imagesTs)")
    if a.keep_checkpoints_every >= a.epochs:
        raise BenchmarkError(f"--keep-checkpoints-every {a.keep_checkpoints_every} keeps nothing in {a.epochs} epochs")
    keep = {"keep_every": a.keep_checkpoints_every} if a.keep_checkpoints_every else {}  # older work folders: no key
    return BenchmarkConfig(dataset=_dataset_name(a.dataset), configuration=a.configuration, trainers=list(a.trainers),
                           folds=list(a.folds), seeds=list(a.seeds),
                           budget=dict(epochs=a.epochs, iterations=a.iterations, val_iterations=a.val_iterations,
                                       batch=a.batch, width=a.width, **keep),
                           plans=a.plans, device=a.device, test=a.test, tta=not a.disable_tta,
                           group_regex=a.group_regex, groups_file=os.path.abspath(a.groups) if a.groups else None,
                           baseline=a.baseline, label=a.label)


def check_benchmark(cfg: BenchmarkConfig) -> None:
    """Everything that can be checked before training: nnU-Net folders, preprocessing, trainers, folds, held-out set,
    grouping (writes the grouped splits_final.json)."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        if not os.environ.get(var):
            raise BenchmarkError(f"{var} is not set (nnU-Net's folders must be configured)")
    pre = os.path.join(os.environ["nnUNet_preprocessed"], cfg.dataset)
    plans_file = os.path.join(pre, f"{cfg.plans}.json")
    if not os.path.isfile(plans_file):
        raise BenchmarkError(f"{plans_file} does not exist: run nnUNetv2_plan_and_preprocess for {cfg.dataset} first")
    with open(plans_file, encoding="utf-8") as f:
        plans = json.load(f)
    if cfg.configuration not in plans["configurations"]:
        raise BenchmarkError(f"-c {cfg.configuration} is not a configuration of {plans_file} "
                             f"({sorted(plans['configurations'])})")
    data_id = plans["configurations"][cfg.configuration].get("data_identifier", f"{cfg.plans}_{cfg.configuration}")
    if not os.path.isdir(os.path.join(pre, data_id)):
        raise BenchmarkError(f"{cfg.dataset} is not preprocessed for {cfg.configuration} ({os.path.join(pre, data_id)} "
                             f"missing): nnUNetv2_plan_and_preprocess -d ... -c {cfg.configuration}")
    for t in cfg.trainers:
        try:
            find_trainer_class(t)
            budget_name(t, cfg.budget_for(1))
        except BudgetError as e:
            raise BenchmarkError(str(e)) from None
    if any(f < 0 or f >= cfg.n_splits for f in cfg.folds):
        raise BenchmarkError(f"-f {cfg.folds}: folds of the {cfg.n_splits}-fold split are 0..{cfg.n_splits - 1}")
    raw = os.path.join(os.environ["nnUNet_raw"], cfg.dataset)
    with open(os.path.join(raw, "dataset.json"), encoding="utf-8") as f:
        djson = json.load(f)
    ending = djson["file_ending"]
    names = [k for k in djson.get("labels", {}) if k not in ("background", "ignore")]
    if cfg.label is not None and cfg.label not in names:
        raise BenchmarkError(f"--label {cfg.label!r} is not a foreground label of {cfg.dataset} ({names})")
    if cfg.test == "imagesTs":
        images = {f[:-len(ending) - 5] for f in os.listdir(os.path.join(raw, "imagesTs"))
                  if f.endswith(ending)} if os.path.isdir(os.path.join(raw, "imagesTs")) else set()
        labels = {f[:-len(ending)] for f in os.listdir(os.path.join(raw, "labelsTs"))
                  if f.endswith(ending)} if os.path.isdir(os.path.join(raw, "labelsTs")) else set()
        if not images:
            raise BenchmarkError(f"{raw}/imagesTs has no cases: give --test validation or add a held-out set")
        if images - labels:
            raise BenchmarkError(f"{len(images - labels)} held-out case(s) have no reference in labelsTs, e.g. "
                                 f"{sorted(images - labels)[:3]}")
    cases = sorted(f[:-len(ending)] for f in os.listdir(os.path.join(raw, "labelsTr")) if f.endswith(ending))
    try:
        groups = case_groups(cases, cfg.group_regex, cfg.groups_file)
        if groups is not None:
            write_splits(pre, grouped_splits(groups, cfg.n_splits))
    except SplitError as e:
        raise BenchmarkError(str(e)) from None


def main(argv: Optional[List[str]] = None) -> int:
    a = _parser().parse_args(argv)
    work = WorkFolder(a.output)
    report_folder = os.path.join(work.path, "report")
    try:
        if a.trainers is None and os.path.isfile(work.config_file()):
            cfg = work.load()  # --list / --run-index / --collect on an existing benchmark: its own settings
        else:
            cfg = _config_from_args(a)
        runs = plan_runs(cfg)
        if a.run_index is not None and not 0 <= a.run_index < len(runs):
            raise BenchmarkError(f"--run-index {a.run_index}: this benchmark has runs 0..{len(runs) - 1}")
        work.check(cfg)  # a work folder of other settings or someone else's files: refused before anything
        check_output_folder(report_folder, [], overwrite=True)  # the report is ours, renewed by every collect
        check_benchmark(cfg)  # also writes the grouped split: --list is the set-up step before a cluster array
        work.save(cfg)
    except (BenchmarkError, BudgetError, OutputFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.list:
        for r in runs:
            st = (work.status(r) or {}).get("state", "to do")
            print(f"{r.index:3d}  {st:7s}  {r.trainer}  fold {r.fold}  seed {r.seed}  (-tr {r.name})")
        return 0
    if a.run_index is not None:
        return 0 if execute_run(cfg, work, runs[a.run_index])["state"] == "done" else 1
    if not a.collect:
        for r in runs:
            st = execute_run(cfg, work, r)
            if st["state"] != "done":
                print(f"[benchmark] run {r.index} ({r.name} fold {r.fold}) failed; see {st['log']}; going on",
                      file=sys.stderr)
    return collect(cfg, work, report_folder, a)


def collect(cfg: BenchmarkConfig, work: WorkFolder, report_folder: str, a) -> int:
    from nnunetv2_ext.benchmark.report import write_report
    log = os.path.join(work.path, "logs", "collect.txt")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    for r in plan_runs(cfg):
        if r.fold != cfg.folds[0] or not all((work.status(x) or {}).get("state") == "done" for x in plan_runs(cfg)
                                             if x.name == r.name):
            continue
        error = postprocess_trainer(cfg, work, r.name, log)
        if error:
            print(f"[benchmark] {error}", file=sys.stderr)
    djson = os.path.join(os.environ["nnUNet_raw"], cfg.dataset, "dataset.json")
    command = "nnUNetv2_ext_benchmark " + " ".join(shlex.quote(x) for x in sys.argv[1:]) if sys.argv[1:] else None
    text = write_folder_atomically(report_folder, lambda d: write_report(cfg, work, d, djson, command,
                                                                        a.n_bootstrap, a.num_processes),
                                   "nnUNetv2_ext_benchmark")
    print(text)
    print(f"report in {report_folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
