"""NIH Pancreas-CT axial slices (8-bit PNG export, ``images/`` + ``labels/``) -> nnU-Net raw 2D dataset
``DatasetXXX_NIHPancreasSlices``: the real-data benchmark of the 2D methods.

Each slice becomes one case ``PANCREAS_XXXX_SSSS`` (a 1-slice NIfTI, so that every tool of ours and nnU-Net's reads
it with the same reader and in-plane distances are in mm). The export has no spacing: the in-plane pixel of the
collection is 0.66-0.98 mm, and 0.8 mm (times ``--downsample``) is written as a nominal spacing, so HD95 and NSD are
in nominal mm. ``--downsample F`` averages F x F pixel blocks of the image and takes the majority of the label
block (a tie counts as pancreas, so a thin organ does not vanish): half resolution (F = 2) makes CPU benchmarks
feasible. Patients, never slices, are held out: ``--test-patients N`` puts every slice of N patients (seeded) into
imagesTs/labelsTs, and ``splits_final.json`` holds patient-grouped 5-fold splits of the others (nnU-Net's own split
function applied to patients). ``case_groups.json`` maps each case to its patient for other tools.
"""
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from nnunetv2_ext.dataset_conversion.common import (CaseError, CaseListing, CaseProblem, ConversionError,
                                                    DatasetConverter, FILE_ENDING, SUBSET_FOLDERS, SourceCase,
                                                    holdout_split, make_parser, run_cli)

NOMINAL_SPACING_MM = 0.8
SPLIT_SEED = 12345
_NAME = re.compile(r"^(PANCREAS_\d{4})_(\d{4})\.png$", re.IGNORECASE)
GROUP_REGEX = r"^(PANCREAS_\d{4})_"


def downsample(image: np.ndarray, label: np.ndarray, factor: int):
    """Block mean of the image, block majority of the label (ties: foreground); shapes must divide by factor."""
    if factor == 1:
        return image.astype(np.float32), label.astype(np.uint8)
    h, w = image.shape
    if h % factor or w % factor:
        raise CaseError(f"size {h}x{w} is not divisible by --downsample {factor}")
    blocks = lambda a: a.reshape(h // factor, factor, w // factor, factor).astype(np.float32).mean(axis=(1, 3))  # noqa
    return blocks(image), (blocks(label > 0) >= 0.5).astype(np.uint8)


class NIHSlicesConverter(DatasetConverter):
    dataset_name = "NIHPancreasSlices"
    channel_names = {0: "CT"}
    labels = {"background": 0, "pancreas": 1}

    def __init__(self, input_folder: str, downsample: int = 2, test_patients: int = 20, **kwargs):
        if downsample < 1:
            raise ConversionError(f"--downsample must be >= 1, got {downsample}")
        if test_patients < 0:
            raise ConversionError(f"--test-patients must be >= 0, got {test_patients}")
        super().__init__(input_folder, downsample=downsample, test_patients=test_patients, **kwargs)
        self.factor, self.test_patients = downsample, test_patients
        for sub in ("images", "labels"):
            if not (self.input_folder / sub).is_dir():
                raise ConversionError(f"{self.input_folder} has no {sub}/ folder (expected images/ and labels/ "
                                      f"with PANCREAS_XXXX_SSSS.png)")

    def find_cases(self) -> CaseListing:
        images = {p.name: p for p in (self.input_folder / "images").iterdir() if _NAME.match(p.name)}
        labels = {p.name: p for p in (self.input_folder / "labels").iterdir() if _NAME.match(p.name)}
        problems = [CaseProblem(n[:-4], "image without label") for n in sorted(set(images) - set(labels))]
        problems += [CaseProblem(n[:-4], "label without image") for n in sorted(set(labels) - set(images))]
        names = sorted(set(images) & set(labels))
        patients = sorted({_NAME.match(n).group(1) for n in names})
        if self.test_patients >= len(patients):
            raise ConversionError(f"--test-patients {self.test_patients}: only {len(patients)} patients found")
        test = set(holdout_split(patients, self.test_patients, SPLIT_SEED)[1]) if self.test_patients else set()
        cases = [SourceCase(n[:-4], "test" if _NAME.match(n).group(1) in test else "train", (str(images[n]),),
                             str(labels[n])) for n in names]
        return CaseListing(cases, problems)

    def validate_case(self, case: SourceCase) -> SourceCase:
        image = sitk.ReadImage(case.images[0])
        label = sitk.ReadImage(case.label)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise CaseError(f"image has {image.GetNumberOfComponentsPerPixel()} components per pixel; expected grey")
        if image.GetSize() != label.GetSize():
            raise CaseError(f"image size {image.GetSize()} differs from label size {label.GetSize()}")
        values = set(np.unique(sitk.GetArrayViewFromImage(label)).tolist())
        if not values <= {0, 1}:
            raise CaseError(f"label values {sorted(values)} are not 0/1")
        h, w = image.GetSize()[::-1]
        if h % self.factor or w % self.factor:
            raise CaseError(f"size {h}x{w} is not divisible by --downsample {self.factor}")
        return case

    def convert_case(self, case: SourceCase, dataset_folder: Path) -> None:
        image = sitk.GetArrayFromImage(sitk.ReadImage(case.images[0]))
        label = sitk.GetArrayFromImage(sitk.ReadImage(case.label))
        image, label = downsample(image, label, self.factor)
        images_dir, labels_dir = SUBSET_FOLDERS[case.subset]
        spacing = NOMINAL_SPACING_MM * self.factor
        for array, path in ((image, dataset_folder / images_dir / f"{case.identifier}_0000{FILE_ENDING}"),
                            (label, dataset_folder / labels_dir / f"{case.identifier}{FILE_ENDING}")):
            path.parent.mkdir(parents=True, exist_ok=True)
            out = sitk.GetImageFromArray(array[None])
            out.SetSpacing((spacing, spacing, 999.0))  # nnU-Net 2D convention for single slices: a large z spacing
            sitk.WriteImage(out, str(path), useCompression=True)

    def _groups(self, identifiers) -> Dict[str, str]:
        return {c: re.match(GROUP_REGEX, c).group(1) for c in identifiers}

    def splits(self, converted: Dict[str, List[str]]) -> Optional[List[Dict[str, List[str]]]]:
        from nnunetv2_ext.benchmark.splits import grouped_splits
        return grouped_splits(self._groups(converted["train"]))

    def write_extras(self, dataset_folder: Path, converted, cases) -> None:
        all_cases = [c for subset in converted.values() for c in subset]
        (dataset_folder / "case_groups.json").write_text(json.dumps(self._groups(sorted(all_cases)), indent=1))


def main(argv=None) -> int:
    parser = make_parser("Convert the NIH Pancreas-CT slice export (images/ + labels/ PNG) into an nnU-Net raw 2D "
                         "dataset DatasetXXX_NIHPancreasSlices, patients held out and folds grouped by patient.")
    parser.add_argument("--downsample", type=int, default=2, help="block size of the in-plane downsampling "
                                                                  "(1 = full 512x512)")
    parser.add_argument("--test-patients", type=int, default=20, help="patients held out in imagesTs/labelsTs "
                                                                      f"(seed {SPLIT_SEED})")
    args = parser.parse_args(argv)
    return run_cli(lambda a: NIHSlicesConverter(a.input, a.downsample, a.test_patients,
                                                geometry_tolerance=a.geometry_tolerance), args)


if __name__ == "__main__":
    sys.exit(main())
