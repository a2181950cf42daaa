"""Speed of the per-case metrics against an independent reference implementation, side by side in one run.

Ours: ``nnunetv2_ext.evaluation.metrics.mask_metrics`` (all metrics; surfaces and the ``edt`` distance transform on
the bounding box of both masks). Reference: ``nnunetv2_ext.evaluation.sitk_reference.reference_metrics``
(SimpleITK's LabelContour + SignedMaurerDistanceMap + LabelOverlapMeasures on the whole volume; DSC, IoU, HD95, ASSD,
NSD only). Both run single-threaded in this process on the same label maps, read beforehand (reading is the same
for both and is timed separately). Data: the MSD pancreas predictions of ../shared/data (48 cases, one loss).

    python benchmarks/bench_evaluation.py [--method DiceCE] [--cases 48] [--repeats 1]

Prints cases/s of both, the largest difference between their values, and the speed ratio (ours / reference) last.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from nnunetv2_ext.evaluation.metrics import mask_metrics  # noqa: E402
from nnunetv2_ext.evaluation.sitk_reference import reference_metrics  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                    "msd_pancreas_predictions")


def _touches_border(mask: np.ndarray) -> bool:
    return any(np.take(mask, i, axis=a).any() for a in range(mask.ndim) for i in (0, -1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="DiceCE", help="prediction folder (loss) to evaluate")
    parser.add_argument("--cases", type=int, default=48, help="number of cases (default all 48)")
    parser.add_argument("--repeats", type=int, default=1, help="timing repeats; the fastest is reported")
    parser.add_argument("--data", default=DATA, help="msd_pancreas_predictions folder")
    args = parser.parse_args()
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)  # single-threaded like ours: a per-core comparison
    if not os.path.isdir(args.data):
        print(f"data folder {args.data} is missing", file=sys.stderr)
        return 1
    files = sorted(os.listdir(os.path.join(args.data, "ground_truth")))[:args.cases]
    t0 = time.perf_counter()
    cases = []
    for f in files:
        ref_image = sitk.ReadImage(os.path.join(args.data, "ground_truth", f))
        pred_image = sitk.ReadImage(os.path.join(args.data, "predictions", args.method, f))
        cases.append((sitk.GetArrayFromImage(ref_image) == 1, sitk.GetArrayFromImage(pred_image) == 1,
                      ref_image.GetSpacing()[::-1]))
    read_s = time.perf_counter() - t0
    voxels = np.mean([c[0].size for c in cases])
    print(f"{len(cases)} cases of {args.method}, mean {voxels / 1e6:.2f} M voxels; reading both files: "
          f"{len(cases) / read_s:.1f} cases/s")

    def run(function):
        best, values = float("inf"), None
        for _ in range(args.repeats):
            start = time.perf_counter()
            values = [function(ref, pred, spacing) for ref, pred, spacing in cases]
            best = min(best, time.perf_counter() - start)
        return len(cases) / best, values

    ours_rate, ours = run(mask_metrics)
    reference_rate, reference = run(reference_metrics)
    comparable = [i for i, (ref, pred, _) in enumerate(cases) if not (_touches_border(ref) or _touches_border(pred))]
    worst = {k: max(abs(ours[i][k] - reference[i][k]) for i in comparable) for k in reference[0]}
    print(f"values, {len(comparable)} cases whose masks do not touch the image border: largest |ours - reference| "
          + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    print(f"reference (SimpleITK, whole volume): {reference_rate:.2f} cases/s")
    print(f"ours (edt on bounding box, all metrics): {ours_rate:.2f} cases/s")
    print(f"speed ratio ours / reference: {ours_rate / reference_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
