"""Medical Segmentation Decathlon task -> nnU-Net raw ``DatasetXXX_<Name>`` (tested on Task01 BrainTumour,
Task03 Liver, Task07 Pancreas, Task09 Spleen; other MSD tasks use the same code).

What nnU-Net's own ``nnUNetv2_convert_MSD_dataset`` does (channels of 4D files split into ``_000X`` files, labels
and channel names taken from the MSD dataset.json) is reused: its ``split_4d_nifti`` writes the images. Added here:
validation of every case before writing (channel count, image/label geometry), the temporary-folder/--skip-bad-cases/
--overwrite handling of ``common.run_conversion``, and two paper settings:

- ``--brats-edema-t1gd`` (Task01 only): T1-Gd channel only, peritumoral edema (MSD label 1) as the single target
  label; dataset ``DatasetXXX_BrainTumourEdemaT1Gd``.
- ``--paper-split`` (Task01 only): 436 training / 48 test cases (seed SPLIT_SEED), test cases to
  imagesTs/labelsTs. MSD's own unlabelled imagesTs are then not converted, so that imagesTs holds exactly the
  labelled test set.
"""
import json
import re
import sys
from pathlib import Path
from typing import Dict

import SimpleITK as sitk
from nnunetv2.dataset_conversion.convert_MSD_dataset import split_4d_nifti

from nnunetv2_ext.dataset_conversion.common import (CaseError, CaseListing, CaseProblem, ConversionError,
                                                    DatasetConverter, FILE_ENDING, SUBSET_FOLDERS, SourceCase,
                                                    holdout_split, make_parser, run_cli)

SPLIT_SEED = 12345
#: Paper protocols: task -> number of held-out test cases (484 labelled BrainTumour cases -> 436 / 48).
PAPER_TEST_CASES = {1: 48}
EDEMA_CHANNEL = "t1gd"
EDEMA_LABEL = "edema"

_TASK = re.compile(r"^Task(\d+)_(\w+)$")


def _nifti_files(folder: Path) -> Dict[str, Path]:
    """identifier -> file for the .nii.gz files of an MSD folder (macOS '._' files and hidden files ignored, as in
    nnU-Net's converter)."""
    if not folder.is_dir():
        return {}
    return {p.name[:-len(".nii.gz")]: p for p in sorted(folder.iterdir())
            if p.name.endswith(".nii.gz") and not p.name.startswith((".", "_"))}


class MSDConverter(DatasetConverter):
    def __init__(self, input_folder: str, brats_edema_t1gd: bool = False, paper_split: bool = False,
                 num_test_cases: int = None, **kwargs):
        super().__init__(input_folder, brats_edema_t1gd=brats_edema_t1gd, paper_split=paper_split,
                         num_test_cases=num_test_cases, **kwargs)
        m = _TASK.match(self.input_folder.name)
        source_json = self.input_folder / "dataset.json"
        if m is None or not source_json.is_file():
            raise ConversionError(f"{self.input_folder} is not an MSD task folder (expected TaskXX_Name with a "
                                  f"dataset.json)")
        self.task_id, name = int(m.group(1)), m.group(2)
        try:
            self.source_json = json.loads(source_json.read_text())
        except ValueError as e:
            raise ConversionError(f"{source_json} is not valid JSON ({e}); the download may be incomplete") from None
        modality = {int(k): v for k, v in self.source_json["modality"].items()}
        source_labels = {v: int(k) for k, v in self.source_json["labels"].items()}
        self.edema = brats_edema_t1gd
        if paper_split and self.task_id not in PAPER_TEST_CASES:
            raise ConversionError(f"--paper-split is defined for MSD tasks {sorted(PAPER_TEST_CASES)} only, "
                                  f"not Task{self.task_id:02d}")
        self.num_test_cases = (num_test_cases or PAPER_TEST_CASES[self.task_id]) if paper_split else 0
        self.num_channels = len(modality)
        if brats_edema_t1gd:
            channel = [k for k, v in modality.items() if v.lower() == EDEMA_CHANNEL]
            if self.task_id != 1 or not channel or EDEMA_LABEL not in source_labels:
                raise ConversionError(f"--brats-edema-t1gd needs Task01_BrainTumour (a '{EDEMA_CHANNEL}' channel "
                                      f"and an '{EDEMA_LABEL}' label), got {self.input_folder.name}")
            self.edema_channel = channel[0]
            self.dataset_name = f"{name}EdemaT1Gd"
            self.channel_names = {0: modality[self.edema_channel]}
            self.labels = {"background": 0, EDEMA_LABEL: 1}
            self.label_mapping = {v: int(v == source_labels[EDEMA_LABEL]) for v in source_labels.values()}
        else:
            self.dataset_name = name
            self.channel_names = modality
            self.labels = source_labels
            self.label_mapping = None
        self.extra_json = {k: self.source_json[k] for k in ("reference", "licence", "release", "description")
                           if k in self.source_json}

    def find_cases(self) -> CaseListing:
        images = _nifti_files(self.input_folder / "imagesTr")
        labels = _nifti_files(self.input_folder / "labelsTr")
        listing = CaseListing(cases=[])
        for case_id in sorted(set(images) - set(labels)):
            listing.problems.append(CaseProblem(case_id, f"image without label: no labelsTr/{case_id}.nii.gz"))
        for case_id in sorted(set(labels) - set(images)):
            listing.problems.append(CaseProblem(case_id, f"label without image: no imagesTr/{case_id}.nii.gz"))
        test = set()
        if self.num_test_cases:
            test = set(holdout_split(sorted(set(images) | set(labels)), self.num_test_cases, SPLIT_SEED)[1])
            listing.notes.append(f"paper split: {len(set(images) | set(labels)) - len(test)} training / "
                                 f"{len(test)} test cases (seed {SPLIT_SEED}) in imagesTs/labelsTs; MSD's "
                                 f"unlabelled imagesTs not converted")
        for case_id in sorted(set(images) & set(labels)):
            listing.cases.append(SourceCase(case_id, "test" if case_id in test else "train",
                                            (str(images[case_id]),), str(labels[case_id])))
        if not self.num_test_cases:
            listing.cases += [SourceCase(case_id, "test", (str(path),))
                              for case_id, path in _nifti_files(self.input_folder / "imagesTs").items()]
        return listing

    def validate_case(self, case: SourceCase) -> SourceCase:
        reader = sitk.ImageFileReader()
        reader.SetFileName(case.images[0])
        reader.ReadImageInformation()
        channels = reader.GetSize()[3] if reader.GetDimension() == 4 else 1
        if channels != self.num_channels:
            raise CaseError(f"{Path(case.images[0]).name} has {channels} channel(s), dataset.json lists "
                            f"{self.num_channels}")
        return super().validate_case(case)

    def convert_case(self, case: SourceCase, dataset_folder: Path) -> None:
        images, labels = SUBSET_FOLDERS[case.subset]
        (dataset_folder / images).mkdir(parents=True, exist_ok=True)
        if case.label is not None:
            (dataset_folder / labels).mkdir(parents=True, exist_ok=True)
            self.write_label(sitk.ReadImage(case.label), case.info["geometry"],
                             dataset_folder / labels / f"{case.identifier}{FILE_ENDING}", self.label_mapping)
        if self.edema:
            image = sitk.ReadImage(case.images[0])
            image = image[:, :, :, self.edema_channel] if image.GetDimension() == 4 else image
            sitk.WriteImage(image, str(dataset_folder / images / f"{case.identifier}_0000{FILE_ENDING}"),
                            useCompression=True)
        else:
            split_4d_nifti(case.images[0], str(dataset_folder / images))


def main(argv=None) -> int:
    parser = make_parser("Convert a Medical Segmentation Decathlon task folder (TaskXX_Name) into an nnU-Net raw "
                         "dataset DatasetXXX_Name.")
    parser.add_argument("--brats-edema-t1gd", action="store_true",
                        help="Task01 only: T1-Gd channel only, edema as the single target label")
    parser.add_argument("--paper-split", action="store_true",
                        help=f"Task01 only: hold out {PAPER_TEST_CASES[1]} test cases (seed {SPLIT_SEED}) to "
                             f"imagesTs/labelsTs (436/48 protocol)")
    args = parser.parse_args(argv)
    return run_cli(lambda a: MSDConverter(a.input, brats_edema_t1gd=a.brats_edema_t1gd, paper_split=a.paper_split,
                                          geometry_tolerance=a.geometry_tolerance), args)


if __name__ == "__main__":
    sys.exit(main())
