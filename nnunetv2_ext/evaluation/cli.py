"""Command lines ``nnunetv2_ext_evaluate`` and ``nnunetv2_ext_compare`` (thin wrappers of the Python API)."""
import argparse
import os
import sys
from typing import List, Optional

from nnunetv2.configuration import default_num_processes

from nnunetv2_ext.evaluation.evaluate import compare_folders, evaluate_folders
from nnunetv2_ext.evaluation.io import EvaluationInputError
from nnunetv2_ext.evaluation.metrics import DEFAULT_NSD_TOLERANCE_MM, METRICS
from nnunetv2_ext.evaluation.report import (DEFAULT_PLOT_METRICS, DEFAULT_TABLE_METRICS, compare_results,
                                            format_comparison_table, format_markdown_table, write_comparison_report,
                                            write_evaluation_report)
from nnunetv2_ext.evaluation.summary import DEFAULT_N_BOOTSTRAP, DEFAULT_WORST_FRACTION


def _label(text: str):
    """'1' -> 1, '1,2' -> (1, 2) (a region)."""
    parts = [int(p) for p in text.split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else tuple(parts)


def _metrics(text: str) -> List[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
    return names


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-djfile", "--dataset-json", default=None,
                        help="nnU-Net dataset.json: labels/regions, names, ignore label, file ending, reader. Default: "
                             "the one in the prediction (trainer) folder or beside the reference folder, if any; "
                             "otherwise every non-zero label found in the references is evaluated")
    parser.add_argument("-o", "--output", default=None,
                        help="report folder (default: <prediction folder>/ext_evaluation for evaluate, "
                             "./ext_comparison for compare)")
    parser.add_argument("-l", "--labels", nargs="+", type=_label, default=None,
                        help="evaluate only these labels; a region as comma-separated labels, e.g. 1,2")
    parser.add_argument("-np", "--num-processes", type=int, default=default_num_processes,
                        help=f"worker processes (default {default_num_processes})")
    parser.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM,
                        help=f"tolerance of the normalised surface Dice in mm (default {DEFAULT_NSD_TOLERANCE_MM:g}, "
                             f"FLARE21's convention; FLARE22 used 2-7 mm per organ, 5 mm for the pancreas)")
    parser.add_argument("--file-ending", default=None, help="e.g. .nii.gz (default: dataset.json's, else guessed)")
    parser.add_argument("--skip-bad-cases", action="store_true",
                        help="leave out (and list) cases that are missing, unreadable, misaligned or hold unknown "
                             "labels, instead of stopping with an error")
    parser.add_argument("--metrics", type=_metrics, default=list(DEFAULT_TABLE_METRICS),
                        help=f"comma-separated table metrics (default {','.join(DEFAULT_TABLE_METRICS)}); all "
                             f"metrics are always in the JSON/CSV")
    parser.add_argument("--worst-k", type=int, default=5, help="worst cases named per metric (default 5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_writable(folder: str) -> None:
    """Fails before any work when the report folder cannot be created (e.g. a read-only prediction folder)."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        raise EvaluationInputError(f"cannot write the report to {folder} ({existing} is not a writable folder); "
                                   f"give -o")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def evaluate_main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunetv2_ext_evaluate",
        description="Per-case, per-label DSC, IoU, precision, recall, specificity, HD95, ASSD, NSD and volume "
                    "difference; summary mean ± std [min, max], median and worst cases, as JSON, CSV and Markdown.")
    parser.add_argument("ref_folder", help="reference segmentations (e.g. labelsTr or gt_segmentations)")
    parser.add_argument("pred_folder", help="predictions; or an nnU-Net fold folder / trainer folder")
    _common_arguments(parser)
    args = parser.parse_args(argv)
    output = args.output or os.path.join(args.pred_folder, "ext_evaluation")
    try:
        _check_writable(output)
        result = evaluate_folders(args.ref_folder, args.pred_folder, args.dataset_json, args.labels,
                                  args.num_processes, args.nsd_tolerance, args.skip_bad_cases, args.file_ending,
                                  progress=not args.no_progress)
    except EvaluationInputError as e:
        return _fail(str(e))
    paths = write_evaluation_report(result, output, metrics=args.metrics, worst_k=args.worst_k)
    if result.settings["labels_inferred"]:
        print(f"no dataset.json: evaluated the labels found in the references: {[s.key for s in result.labels]}")
    print(format_markdown_table({os.path.basename(os.path.normpath(args.pred_folder)): result}, args.metrics))
    if result.skipped:
        print(f"{len(result.skipped)} case(s) skipped:\n  " + "\n  ".join(sorted(result.skipped.values())))
    print("report: " + ", ".join(paths.values()))
    return 0


def compare_main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunetv2_ext_compare",
        description="Compares two or more prediction folders on the same references: metrics side by side, paired "
                    "per-case differences against the first (baseline), bootstrap 95%% intervals of the mean and of "
                    "the mean of the worst cases, and a PNG box/strip plot with the worst cases named.")
    parser.add_argument("ref_folder", help="reference segmentations")
    parser.add_argument("pred_folders", nargs="+", help="two or more prediction folders (or nnU-Net result "
                                                        "folders); the first is the baseline")
    parser.add_argument("--names", nargs="+", default=None, help="method names, one per prediction folder")
    parser.add_argument("--baseline", default=None, help="name of the baseline method (default: the first)")
    parser.add_argument("--worst-fraction", type=float, default=DEFAULT_WORST_FRACTION,
                        help=f"fraction of worst cases averaged for the worst-case statistic (default "
                             f"{DEFAULT_WORST_FRACTION:g})")
    parser.add_argument("--n-bootstrap", type=int, default=DEFAULT_N_BOOTSTRAP,
                        help=f"bootstrap resamples (default {DEFAULT_N_BOOTSTRAP})")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--plot-metrics", type=_metrics, default=list(DEFAULT_PLOT_METRICS),
                        help=f"comma-separated metrics of the PNG panels (default {','.join(DEFAULT_PLOT_METRICS)})")
    _common_arguments(parser)
    args = parser.parse_args(argv)
    if len(args.pred_folders) < 2:
        return _fail("compare needs at least two prediction folders")
    if not 0 < args.worst_fraction <= 1:
        return _fail(f"--worst-fraction must be in (0, 1], got {args.worst_fraction}")
    if args.names is not None and len(args.names) != len(args.pred_folders):
        return _fail(f"--names has {len(args.names)} names for {len(args.pred_folders)} prediction folders")
    if args.baseline is not None and args.names is not None and args.baseline not in args.names:
        return _fail(f"--baseline {args.baseline} is not one of --names {args.names}")
    output = args.output or "ext_comparison"
    try:
        _check_writable(output)
        results = compare_folders(args.ref_folder, args.pred_folders, args.names, args.dataset_json, args.labels,
                                  args.num_processes, args.nsd_tolerance, args.skip_bad_cases, args.file_ending,
                                  progress=not args.no_progress)
        comparison = compare_results(results, args.baseline, args.metrics, args.worst_fraction, args.n_bootstrap,
                                     args.seed, args.worst_k)
    except (EvaluationInputError, ValueError) as e:
        return _fail(str(e))
    paths = write_comparison_report(results, output, comparison, args.metrics, args.plot_metrics)
    first = next(iter(results.values()))
    if first.settings["labels_inferred"]:
        print(f"no dataset.json: evaluated the labels found in the references: {[s.key for s in first.labels]}")
    print(format_markdown_table(results, args.metrics))
    print(format_comparison_table(comparison, args.metrics[0]))
    for name, result in results.items():
        if result.skipped:
            print(f"{name}: {len(result.skipped)} case(s) skipped:\n  " + "\n  ".join(sorted(result.skipped.values())))
    print("report: " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":  # python -m nnunetv2_ext.evaluation.cli
    sys.exit(evaluate_main())
