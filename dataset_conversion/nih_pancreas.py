"""NIH Pancreas-CT (TCIA) -> nnU-Net raw dataset ``DatasetXXX_NIHPancreas`` (label 1 = pancreas, CT in HU).

Source layout (see dataset_conversion/README.md): one DICOM series per patient in TCIA's nested folders
``PANCREAS_0001/<study>/<series>/1-001.dcm`` and the labels ``label0001.nii.gz`` in a separate folder. The label
volumes do not share the DICOM index order (they are flipped along y), so every label is checked to describe the
same voxels in physical space and then resampled (nearest neighbour, exact) onto its series' grid.

Reading: SimpleITK/GDCM (``ImageSeriesReader``) groups and sorts the slices and applies RescaleSlope/Intercept,
so the written images are in HU. Validation only scans the DICOM headers (GDCM scanner + first/last slice
information); pixel data are read once, when writing.
"""
import argparse
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from nnunetv2_ext.dataset_conversion.common import (CaseError, CaseListing, CaseProblem, ConversionError,
                                                    DatasetConverter, FILE_ENDING, SourceCase, has_files,
                                                    kfold_test_folds, make_parser, run_cli)
from nnunetv2_ext.dataset_conversion.geometry import Geometry, grid_mismatch

#: Scans TCIA no longer serves (their patient folders are empty while the label files exist): skipped with a note.
WITHDRAWN_SCANS = ("PANCREAS_0025", "PANCREAS_0070")
#: Seed of the paper protocol's 4-fold cross-validation (kfold_test_folds over the label file numbers).
SPLIT_SEED = 12345
NUM_FOLDS = 4

_PATIENT = re.compile(r"^PANCREAS_(\d{4})$", re.IGNORECASE)
_LABEL = re.compile(r"^label(\d{4})\.nii(\.gz)?$", re.IGNORECASE)


def find_patient_root(folder: Path) -> Path:
    """The folder holding the PANCREAS_XXXX folders: ``folder`` itself or a descendant up to 3 levels deep (TCIA's
    downloader adds ``manifest-.../Pancreas-CT/``)."""
    candidates = [folder] + [p for depth in ("*", "*/*", "*/*/*") for p in sorted(folder.glob(depth)) if p.is_dir()]
    for candidate in candidates:
        if any(_PATIENT.match(p.name) and p.is_dir() for p in candidate.iterdir()):
            return candidate
    raise ConversionError(f"no PANCREAS_XXXX patient folders found in {folder} (or 3 levels below)")


def dicom_folders(patient: Path) -> List[Path]:
    """Folders below ``patient`` (inclusive) that directly contain files (hidden files ignored)."""
    return [Path(d) for d, _, files in sorted(os.walk(patient, followlinks=True))
            if any(not f.startswith(".") for f in files)]


def scan_dicom_series(patient: Path) -> List[str]:
    """Sorted slice files of the single DICOM series in ``patient`` (any depth).

    Raises CaseError when there is no series, several series (also in different sub-folders), or files GDCM cannot
    read as DICOM images.
    """
    folders = dicom_folders(patient)
    if not folders:
        raise CaseError(f"no files in {patient}")
    series = []  # (folder, series uid, sorted files)
    for folder in folders:
        in_folder = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]
        # one scan suffices when GDCM puts every file into its first series (the normal case); otherwise look closer
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
        if len(files) == len(in_folder):
            series.append((folder, None, files))
            continue
        grouped = set()
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
            series.append((folder, uid, list(files)))
            grouped.update(Path(f).name for f in files)
        unreadable = sorted(f.name for f in in_folder if f.name not in grouped)
        if unreadable:
            shown = ", ".join(unreadable[:5]) + (" ..." if len(unreadable) > 5 else "")
            raise CaseError(f"{len(unreadable)} file(s) in {folder} are not readable DICOM images: {shown}")
    if len(series) > 1:
        listed = "; ".join(f"{Path(f).relative_to(patient)} ({len(files)} files" + (f", UID {uid})" if uid else ")")
                           for f, uid, files in series)
        raise CaseError(f"several DICOM series in {patient.name}: {listed}; keep only the CT series")
    files = series[0][2]
    if len(files) < 2:
        raise CaseError(f"the series in {series[0][0]} has {len(files)} slice(s); need a 3D series")
    return files


def series_geometry(files: List[str]) -> Geometry:
    """Geometry of a sorted slice list from the headers of its first and last slice (no pixel data)."""
    reader = sitk.ImageFileReader()
    first, last = [], []
    for path, out in ((files[0], first), (files[-1], last)):
        reader.SetFileName(path)
        reader.ReadImageInformation()
        out += [reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection(), reader.GetSize()]
    if first[3][:2] != last[3][:2] or not np.allclose(first[2], last[2], atol=1e-4):
        raise CaseError(f"first and last slice differ in size or orientation ({files[0]}, {files[-1]})")
    direction = np.asarray(first[2]).reshape(3, 3)
    step = np.subtract(last[0], first[0]) / (len(files) - 1)
    slice_spacing = float(np.linalg.norm(step))
    if slice_spacing == 0:
        raise CaseError("first and last slice lie at the same position")
    normal = step / slice_spacing
    if abs(abs(normal @ direction[:, 2]) - 1) > 1e-3:
        raise CaseError("slices are not stacked along their normal (gantry tilt?); not supported")
    direction[:, 2] = normal
    return Geometry((int(first[3][0]), int(first[3][1]), len(files)), (first[1][0], first[1][1], slice_spacing),
                    tuple(first[0]), tuple(direction.ravel()))


class NIHPancreasConverter(DatasetConverter):
    dataset_name = "NIHPancreas"
    channel_names = {0: "CT"}
    labels = {"background": 0, "pancreas": 1}
    extra_json = {"reference": "https://doi.org/10.7937/K9/TCIA.2016.tNB1kqBU",
                  "license": "see the data terms at the reference page (TCIA)"}

    def __init__(self, input_folder: str, labels_folder: str, paper_splits: bool = False, **kwargs):
        super().__init__(input_folder, labels_folder=str(Path(labels_folder).resolve()), paper_splits=paper_splits,
                         **kwargs)
        self.labels_folder = Path(labels_folder).resolve()
        if not self.labels_folder.is_dir():
            raise ConversionError(f"labels folder {labels_folder} does not exist")
        self.paper_splits = paper_splits
        self.protocol_cases: List[str] = []

    def find_cases(self) -> CaseListing:
        patient_root = find_patient_root(self.input_folder)
        patients = {f"PANCREAS_{int(m.group(1)):04d}": p for p in patient_root.iterdir()
                    if p.is_dir() and (m := _PATIENT.match(p.name))}
        label_files = {f"PANCREAS_{int(m.group(1)):04d}": p for p in self.labels_folder.iterdir()
                       if (m := _LABEL.match(p.name))}
        if not label_files:
            raise ConversionError(f"no labelXXXX.nii.gz files in {self.labels_folder}")
        self.protocol_cases = sorted(label_files)
        listing = CaseListing(cases=[])
        for case_id in sorted(set(patients) | set(label_files)):
            patient, label = patients.get(case_id), label_files.get(case_id)
            scanned = patient is not None and has_files(patient)
            if label is None:
                listing.problems.append(CaseProblem(case_id, f"image without label: no label{case_id[-4:]}.nii.gz "
                                                             f"in {self.labels_folder}"))
            elif not scanned and case_id in WITHDRAWN_SCANS:
                listing.notes.append(f"{case_id} skipped as expected: TCIA no longer serves this scan (its folder "
                                     f"is empty or missing; {label.name} exists)")
            elif not scanned:
                listing.problems.append(CaseProblem(case_id, f"label without image: {label.name} exists but "
                                                             f"{patient or patient_root / case_id} has no files"))
            else:
                listing.cases.append(SourceCase(case_id, "train", (str(patient),), str(label)))
        return listing

    def validate_case(self, case: SourceCase) -> SourceCase:
        files = scan_dicom_series(Path(case.images[0]))
        geometry = series_geometry(files)
        self.check_label_geometry(case, geometry)
        return replace(case, images=tuple(files), info={"geometry": geometry})

    def convert_case(self, case: SourceCase, dataset_folder: Path) -> None:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(list(case.images))
        reader.MetaDataDictionaryArrayUpdateOff()
        image = reader.Execute()
        geometry = Geometry.from_image(image)
        mismatch = grid_mismatch(case.info["geometry"], geometry, self.geometry_tolerance)
        if mismatch is not None or image.HasMetaDataKey("ITK_non_uniform_sampling_deviation"):
            raise CaseError(f"the DICOM series is not a regular grid (missing slices or uneven slice spacing): "
                            f"{mismatch or 'non-uniform sampling reported by ITK'}")
        sitk.WriteImage(image, str(dataset_folder / "imagesTr" / f"{case.identifier}_0000{FILE_ENDING}"),
                        useCompression=True)
        self.write_label(sitk.ReadImage(case.label), geometry,
                         dataset_folder / "labelsTr" / f"{case.identifier}{FILE_ENDING}")

    def splits(self, converted: Dict[str, List[str]]) -> Optional[List[Dict[str, List[str]]]]:
        """Paper protocol: 4-fold CV, test folds drawn (seed SPLIT_SEED) over all label files (82 -> 21/21/20/20);
        cases without a converted scan are then left out of their fold."""
        if not self.paper_splits:
            return None
        available = set(converted["train"])
        folds = kfold_test_folds(self.protocol_cases, NUM_FOLDS, SPLIT_SEED)
        return [{"train": sorted(available - set(fold)), "val": sorted(available & set(fold))} for fold in folds]


def main(argv=None) -> int:
    parser = make_parser("Convert NIH Pancreas-CT (TCIA DICOM + label00XX.nii.gz) into an nnU-Net raw dataset "
                         "DatasetXXX_NIHPancreas.")
    parser.add_argument("--labels", required=True, help="folder with the label00XX.nii.gz files")
    parser.add_argument("--paper-split", dest="paper_splits", action="store_true",
                        help=f"write splits_final.json with the papers' 4-fold cross-validation (seed {SPLIT_SEED}; "
                             f"nnUNetv2_plan_and_preprocess copies it to nnUNet_preprocessed)")
    parser.add_argument("--paper-splits", dest="paper_splits", action="store_true", help=argparse.SUPPRESS)  # old
    args = parser.parse_args(argv)
    return run_cli(lambda a: NIHPancreasConverter(a.input, a.labels, paper_splits=a.paper_splits,
                                                  geometry_tolerance=a.geometry_tolerance), args)


if __name__ == "__main__":
    sys.exit(main())
