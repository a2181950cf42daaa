"""Speed of the NIH Pancreas-CT converter on synthetic DICOM against a plain SimpleITK conversion, same run.

Baseline per case: ``ImageSeriesReader.GetGDCMSeriesFileNames`` on the (known) series folder, ``Execute``,
``WriteImage`` to .nii.gz, and the label read + written as .nii.gz: the least work that turns the same data into
NIfTI. Ours: ``run_conversion`` of the whole dataset (finding the cases, validating every header and geometry,
resampling the y-flipped labels onto the series grid, dataset.json, manifest, temporary folder + rename), single
process like the baseline. Rounds alternate between the two; the best round of each counts.

    python benchmarks/bench_conversion.py [--cases 6] [--slices 64] [--size 128] [--rounds 3]

Target (issue 3): ours >= 0.8x the baseline's cases/s. The ratio is printed last.
"""
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from nnunetv2_ext.dataset_conversion import synthetic
from nnunetv2_ext.dataset_conversion.common import run_conversion
from nnunetv2_ext.dataset_conversion.nih_pancreas import NIHPancreasConverter


def plain_simpleitk(series_folders, label_files, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for i, (folder, label) in enumerate(zip(series_folders, label_files)):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        sitk.WriteImage(reader.Execute(), str(out / f"case_{i}_0000.nii.gz"), True)
        sitk.WriteImage(sitk.ReadImage(str(label)), str(out / f"case_{i}.nii.gz"), True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # both sides single-threaded, as the workers would be

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dicom, labels = synthetic.make_nih_pancreas(tmp / "source", range(1, args.cases + 1),
                                                    (args.slices, args.size, args.size))
        series_folders = [next(p.parent for p in (dicom / f"PANCREAS_{n:04d}").rglob("1-001.dcm"))
                          for n in range(1, args.cases + 1)]
        label_files = [labels / f"label{n:04d}.nii.gz" for n in range(1, args.cases + 1)]
        os.environ["nnUNet_raw"] = str(tmp / "raw")
        best = {"plain SimpleITK": float("inf"), "nnunetv2_ext NIH converter": float("inf")}
        for _ in range(args.rounds):
            start = time.perf_counter()
            plain_simpleitk(series_folders, label_files, tmp / "plain")
            best["plain SimpleITK"] = min(best["plain SimpleITK"], time.perf_counter() - start)
            shutil.rmtree(tmp / "plain")

            start = time.perf_counter()
            report = run_conversion(NIHPancreasConverter(str(tmp / "source"), str(labels)), 999,
                                    overwrite=True, num_processes=1)
            best["nnunetv2_ext NIH converter"] = min(best["nnunetv2_ext NIH converter"],
                                                     time.perf_counter() - start)
            assert len(report.converted["train"]) == args.cases and not report.problems
            shutil.rmtree(report.dataset_folder)

    print(f"{args.cases} synthetic cases, {args.slices} DICOM slices of {args.size}x{args.size} each, "
          f"best of {args.rounds} rounds, 1 process, 1 SimpleITK thread")
    for name, seconds in best.items():
        print(f"{name:28s} {seconds:7.3f} s  {args.cases / seconds:7.2f} cases/s")
    ratio = best["plain SimpleITK"] / best["nnunetv2_ext NIH converter"]
    print(f"ratio ours/plain (cases/s): {ratio:.2f}x (target >= 0.8x)")


if __name__ == "__main__":
    main()
