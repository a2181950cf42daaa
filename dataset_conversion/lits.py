"""LiTS (Liver Tumor Segmentation challenge) -> nnU-Net raw ``DatasetXXX_LiTS`` (1 liver, 2 tumour) or, with
``--tumor-only``, ``DatasetXXX_LiTSTumour`` (1 tumour; liver becomes background).

Source layout: ``volume-N.nii`` / ``segmentation-N.nii`` (N = 0..130), anywhere below the input folder (the
official download splits them into ``Training Batch 1`` and ``Training Batch 2``). The challenge test volumes
(``test-volume-N.nii``) have no public labels and are not converted.

Paper protocol (``--paper-split``): 105 training / 26 test volumes, the test volumes drawn with seed SPLIT_SEED
and written to imagesTs/labelsTs (nnU-Net's own 5-fold cross-validation then runs on the 105).
"""
import re
import sys
from pathlib import Path
from typing import Dict, List

import SimpleITK as sitk

from nnunetv2_ext.dataset_conversion.common import (CaseListing, CaseProblem, DatasetConverter, FILE_ENDING,
                                                    SUBSET_FOLDERS, SourceCase, holdout_split, make_parser, run_cli)

SPLIT_SEED = 12345
NUM_TEST_CASES = 26

_VOLUME = re.compile(r"^volume-(\d+)\.nii(\.gz)?$")
_SEGMENTATION = re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$")
_TEST_VOLUME = re.compile(r"^test-volume-(\d+)\.nii(\.gz)?$")


class LiTSConverter(DatasetConverter):
    channel_names = {0: "CT"}
    extra_json = {"reference": "https://competitions.codalab.org/competitions/17094",
                  "license": "see the data terms at the reference page"}

    def __init__(self, input_folder: str, tumor_only: bool = False, paper_split: bool = False,
                 num_test_cases: int = NUM_TEST_CASES, **kwargs):
        super().__init__(input_folder, tumor_only=tumor_only, paper_split=paper_split,
                         num_test_cases=num_test_cases, **kwargs)
        self.paper_split, self.num_test_cases = paper_split, num_test_cases
        if tumor_only:
            self.dataset_name = "LiTSTumour"
            self.labels = {"background": 0, "tumour": 1}
            self.label_mapping = {0: 0, 1: 0, 2: 1}
        else:
            self.dataset_name = "LiTS"
            self.labels = {"background": 0, "liver": 1, "tumour": 2}
            self.label_mapping = {0: 0, 1: 1, 2: 2}

    def find_cases(self) -> CaseListing:
        volumes: Dict[int, List[Path]] = {}
        segmentations: Dict[int, List[Path]] = {}
        num_test_volumes = 0
        for path in sorted(self.input_folder.rglob("*.nii*")):
            if (m := _VOLUME.match(path.name)):
                volumes.setdefault(int(m.group(1)), []).append(path)
            elif (m := _SEGMENTATION.match(path.name)):
                segmentations.setdefault(int(m.group(1)), []).append(path)
            elif _TEST_VOLUME.match(path.name):
                num_test_volumes += 1
        listing = CaseListing(cases=[])
        if num_test_volumes:
            listing.notes.append(f"{num_test_volumes} challenge test volumes (test-volume-N.nii) have no labels "
                                 f"and were not converted")
        pairs = {}
        for n in sorted(set(volumes) | set(segmentations)):
            case_id = f"LiTS_{n:03d}"
            found = volumes.get(n, []) + segmentations.get(n, [])
            if len(volumes.get(n, [])) > 1 or len(segmentations.get(n, [])) > 1:
                listing.problems.append(CaseProblem(case_id, "found more than once: " +
                                                    ", ".join(str(p) for p in found)))
            elif n not in segmentations:
                listing.problems.append(CaseProblem(case_id, f"image without label: {volumes[n][0]} has no "
                                                             f"segmentation-{n}.nii"))
            elif n not in volumes:
                listing.problems.append(CaseProblem(case_id, f"label without image: {segmentations[n][0]} has no "
                                                             f"volume-{n}.nii"))
            else:
                pairs[case_id] = (volumes[n][0], segmentations[n][0])
        test = set()
        if self.paper_split:
            # drawn over every case id present in the source (bad ones too), so skipping a case keeps the split
            all_ids = sorted({f"LiTS_{n:03d}" for n in set(volumes) | set(segmentations)})
            test = set(holdout_split(all_ids, self.num_test_cases, SPLIT_SEED)[1])
            listing.notes.append(f"paper split: {len(all_ids) - len(test)} training / {len(test)} test volumes "
                                 f"(seed {SPLIT_SEED}); test volumes in imagesTs/labelsTs")
        listing.cases = [SourceCase(i, "test" if i in test else "train", (str(v),), str(s))
                         for i, (v, s) in pairs.items()]
        return listing

    def convert_case(self, case: SourceCase, dataset_folder: Path) -> None:
        images, labels = SUBSET_FOLDERS[case.subset]
        for sub in (images, labels):
            (dataset_folder / sub).mkdir(parents=True, exist_ok=True)
        image = sitk.ReadImage(case.images[0])
        # the label is checked and written first so that a bad label does not cost the (larger) image write
        self.write_label(sitk.ReadImage(case.label), case.info["geometry"],
                         dataset_folder / labels / f"{case.identifier}{FILE_ENDING}", self.label_mapping)
        sitk.WriteImage(image, str(dataset_folder / images / f"{case.identifier}_0000{FILE_ENDING}"),
                        useCompression=True)


def main(argv=None) -> int:
    parser = make_parser("Convert LiTS (volume-N.nii / segmentation-N.nii) into an nnU-Net raw dataset "
                         "DatasetXXX_LiTS (or DatasetXXX_LiTSTumour with --tumor-only).")
    parser.add_argument("--tumor-only", action="store_true",
                        help="tumour as the only foreground label (liver becomes background)")
    parser.add_argument("--paper-split", action="store_true",
                        help=f"hold out {NUM_TEST_CASES} test volumes (seed {SPLIT_SEED}) to imagesTs/labelsTs, "
                             f"as in the papers' 105/26 protocol")
    args = parser.parse_args(argv)
    return run_cli(lambda a: LiTSConverter(a.input, tumor_only=a.tumor_only, paper_split=a.paper_split,
                                           geometry_tolerance=a.geometry_tolerance), args)


if __name__ == "__main__":
    sys.exit(main())
