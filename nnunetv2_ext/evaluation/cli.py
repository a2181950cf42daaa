"""Command lines ``nnunetv2_ext_evaluate`` and ``nnunetv2_ext_compare`` (thin wrappers of the Python API)."""
import argparse
import math
import os
import sys
from typing import Dict, List, Optional

from nnunetv2.configuration import default_num_processes

from nnunetv2_ext.evaluation.evaluate import compare_folders, evaluate_folders
from nnunetv2_ext.evaluation.io import EvaluationInputError
from nnunetv2_ext.io_atomic import OutputFolderError, check_output_folder, write_folder_atomically
from nnunetv2_ext.evaluation.figures import default_images_folder, write_evaluation_figures
from nnunetv2_ext.evaluation.metrics import (DEFAULT_HD95_METHOD, DEFAULT_NSD_METHOD, DEFAULT_NSD_TOLERANCE_MM,
                                             HD95_METHODS, METRICS, NSD_METHODS)
from nnunetv2_ext.evaluation.presets import PRESETS, parse_tolerances
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


def _penalty(text: str):
    """'none' -> None, 'diagonal', or a distance in mm."""
    if text in ("none", "diagonal"):
        return None if text == "none" else text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):  # 0 would make a missed organ look perfect
        raise argparse.ArgumentTypeError(f"must be none, diagonal or a distance > 0 in mm, got {text!r}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-djfile", "--dataset-json", default=None,
                        help="nnU-Net dataset.json: labels/regions, names, ignore label, file ending, reader. Default: "
                             "the one in the prediction (trainer) folder or beside the reference folder, if any; "
                             "otherwise every non-zero label found in the references is evaluated")
    parser.add_argument("-o", "--output", default=None,
                        help="report folder (default: <prediction folder>/ext_evaluation for evaluate, "
                             "./ext_comparison for compare); an existing one needs --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument("-l", "--labels", nargs="+", type=_label, default=None,
                        help="evaluate only these labels; a region as comma-separated labels, e.g. 1,2")
    parser.add_argument("-np", "--num-processes", type=int, default=default_num_processes,
                        help=f"worker processes (default {default_num_processes})")
    parser.add_argument("--nsd-tolerance", type=_positive, default=DEFAULT_NSD_TOLERANCE_MM,
                        help=f"NSD tolerance in mm for every label (default {DEFAULT_NSD_TOLERANCE_MM:g}, FLARE21's "
                             f"convention)")
    parser.add_argument("--nsd-tolerances", nargs="+", default=None, metavar="LABEL=MM",
                        help="per-label NSD tolerances by label name or value, e.g. pancreas=5 2=3 (override "
                             "--nsd-tolerance and the preset)")
    parser.add_argument("--nsd-preset", choices=PRESETS, default=None,
                        help="a challenge's NSD settings: flare22 = FLARE22's per-organ tolerances (liver 5, kidneys "
                             "3, spleen 3, pancreas 5, aorta 2, IVC 2, adrenal glands 2, gallbladder 2, oesophagus 3, "
                             "stomach 5, duodenum 7 mm) and its axial cropping of aorta, IVC and oesophagus")
    parser.add_argument("--nsd-method", choices=NSD_METHODS, default=DEFAULT_NSD_METHOD,
                        help="surfel: surface elements weighted by area, as DeepMind's surface-distance used by FLARE "
                             "(default); voxel: surface voxels counted (MONAI's use_subvoxels=False)")
    parser.add_argument("--hd95-method", choices=HD95_METHODS, default=DEFAULT_HD95_METHOD,
                        help="max-directed: the larger of the two directed 95th percentiles (MONAI; default); "
                             "pooled: the 95th percentile of both directions together (MedPy's hd95)")
    parser.add_argument("--hd-penalty", type=_penalty, default=None, metavar="{none,diagonal,MM}",
                        help="HD95/ASSD when exactly one mask is empty (a missed or a spurious structure): none = "
                             "undefined, counted and listed (default); diagonal = the image diagonal in mm; or a "
                             "distance in mm (BraTS uses 373.13). Both masks empty then count as 0")
    parser.add_argument("--file-ending", default=None, help="e.g. .nii.gz (default: dataset.json's, else guessed)")
    parser.add_argument("--skip-bad-cases", action="store_true",
                        help="leave out (and list) cases that are missing, unreadable, misaligned or hold unknown "
                             "labels, instead of stopping with an error")
    parser.add_argument("--skip-bad", dest="skip_bad_cases", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--metrics", type=_metrics, default=list(DEFAULT_TABLE_METRICS),
                        help=f"comma-separated table metrics (default {','.join(DEFAULT_TABLE_METRICS)}); all "
                             f"metrics are always in the JSON/CSV")
    parser.add_argument("--worst-k", type=int, default=5, help="worst cases named per metric (default 5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _metric_kwargs(args) -> dict:
    tolerance = args.nsd_tolerance
    if args.nsd_tolerances:
        tolerance = {"__default__": args.nsd_tolerance, **parse_tolerances(args.nsd_tolerances)}
    return {"nsd_tolerance_mm": tolerance, "nsd_method": args.nsd_method, "hd95_method": args.hd95_method,
            "hd_penalty": args.hd_penalty, "nsd_preset": args.nsd_preset}


def _check_output(folder: str, overwrite: bool, inputs) -> None:
    """Fails before any work: the report folder may not be or hold an input, and an existing one with files needs
    --overwrite and must be a report of ours (:mod:`nnunetv2_ext.io_atomic`'s rule, the same for every command)."""
    try:
        check_output_folder(folder, inputs, overwrite)
    except OutputFolderError as e:
        raise EvaluationInputError(str(e)) from None


def _write_atomically(folder: str, write, written_by: str) -> Dict[str, str]:
    """Runs ``write(tmp_folder)`` and then swaps the finished folder in: a failure leaves no half-written report
    and keeps an old one. Returns write's {kind: path} with paths inside ``folder``."""
    folder = os.path.abspath(folder)
    tmp_paths = {}

    def run(tmp):
        tmp_paths.update(write(tmp))
        return tmp

    tmp = write_folder_atomically(folder, run, written_by)
    return {k: os.path.join(folder, os.path.relpath(v, tmp)) for k, v in tmp_paths.items()}


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def evaluate_main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_ext_evaluate",
        description="Per-case, per-label DSC, IoU, precision, recall, specificity, HD95, ASSD, NSD and volume "
                    "difference; summary mean ± std [min, max], median and worst cases (missed structures "
                    "first), as JSON, CSV and Markdown; a per-case plot and overlays of the worst cases as PNG.")
    parser.add_argument("ref_folder", help="reference segmentations (e.g. labelsTr or gt_segmentations)")
    parser.add_argument("pred_folder", help="predictions; or an nnU-Net fold folder / trainer folder")
    _common_arguments(parser)
    parser.add_argument("--overlays", type=int, default=3,
                        help="overlay PNGs of this many worst cases (by DSC) per label; 0 = none (default 3)")
    parser.add_argument("--images", default=None,
                        help="image folder for the overlays (<case>_0000<file ending>; default: imagesTr/imagesTs "
                             "beside a labelsTr/labelsTs reference folder; without images the reference mask is "
                             "the background)")
    args = parser.parse_args(argv)
    output = args.output or os.path.join(args.pred_folder, "ext_evaluation")
    try:
        if args.overlays < 0:
            raise EvaluationInputError(f"--overlays must be >= 0, got {args.overlays}")
        if args.images is not None and not os.path.isdir(args.images):
            raise EvaluationInputError(f"image folder {args.images} does not exist")
        _check_output(output, args.overwrite, [args.ref_folder, args.pred_folder, args.images, args.dataset_json])
        result = evaluate_folders(args.ref_folder, args.pred_folder, args.dataset_json, args.labels,
                                  args.num_processes, skip_bad_cases=args.skip_bad_cases,
                                  file_ending=args.file_ending, progress=not args.no_progress, **_metric_kwargs(args))
    except EvaluationInputError as e:
        return _fail(str(e))
    images = args.images or default_images_folder(args.ref_folder)

    def write(folder):
        paths = write_evaluation_report(result, folder, metrics=args.metrics, worst_k=args.worst_k)
        paths.update(write_evaluation_figures(result, folder, args.overlays, images))
        return paths

    paths = _write_atomically(output, write, "nnUNetv2_ext_evaluate")
    if result.settings["labels_inferred"]:
        print(f"no dataset.json: evaluated the labels found in the references: {[s.key for s in result.labels]}")
    print(format_markdown_table({os.path.basename(os.path.normpath(args.pred_folder)): result}, args.metrics))
    if result.skipped:
        print(f"{len(result.skipped)} case(s) skipped:\n  " + "\n  ".join(sorted(result.skipped.values())))
    if args.overlays and images is None:
        print("overlays drawn on the reference mask (no image folder; give --images for the CT)")
    print(f"report in {os.path.abspath(output)}: " + ", ".join(sorted(os.path.basename(p) for p in paths.values())))
    return 0


def compare_main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_ext_compare",
        description="Compares two or more prediction folders on the same references: metrics side by side, paired "
                    "per-case differences against the first (baseline), bootstrap 95 percent intervals of the mean "
                    "and of the mean of the worst cases, and a PNG box/strip plot with the worst cases named.")
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
        _check_output(output, args.overwrite, [args.ref_folder, *args.pred_folders, args.dataset_json])
        results = compare_folders(args.ref_folder, args.pred_folders, args.names, args.dataset_json, args.labels,
                                  args.num_processes, skip_bad_cases=args.skip_bad_cases,
                                  file_ending=args.file_ending, progress=not args.no_progress,
                                  **_metric_kwargs(args))
        comparison = compare_results(results, args.baseline, args.metrics, args.worst_fraction, args.n_bootstrap,
                                     args.seed, args.worst_k)
    except (EvaluationInputError, ValueError) as e:
        return _fail(str(e))
    paths = _write_atomically(output, lambda folder: write_comparison_report(results, folder, comparison,
                                                                             args.metrics, args.plot_metrics),
                              "nnUNetv2_ext_compare")
    first = next(iter(results.values()))
    if first.settings["labels_inferred"]:
        print(f"no dataset.json: evaluated the labels found in the references: {[s.key for s in first.labels]}")
    print(format_markdown_table(results, args.metrics))
    print(format_comparison_table(comparison, args.metrics[0]))
    for name, result in results.items():
        if result.skipped:
            print(f"{name}: {len(result.skipped)} case(s) skipped:\n  " + "\n  ".join(sorted(result.skipped.values())))
    print(f"report in {os.path.abspath(output)}: " + ", ".join(sorted(os.path.basename(p) for p in paths.values())))
    return 0


if __name__ == "__main__":  # python -m nnunetv2_ext.evaluation.cli
    sys.exit(evaluate_main())
