"""Slice-position channel (Pham et al., FLARE22 §2.2) for an nnU-Net raw dataset, and for images to predict.

    nnunetv2_ext_add_slice_position -i $nnUNet_raw/Dataset991_Phantom -d 993
    nnunetv2_ext_add_slice_position_to_images -i IMAGES -o IMAGES_WITH_POSITION -d 993

The first writes a new raw dataset ``Dataset993_<Name>SlicePosition``: every image of imagesTr, imagesTs and
imagesUnlabeled with one more channel, the position channel p_k (``nnunetv2_ext.slice_position.encoding``), named
``noNorm`` in ``dataset.json`` (the values already are the normalised input; nnU-Net's CT normalisation would map
them to intensities) and recorded under ``slice_position_channel``; labels are copied unchanged. The second adds the
same channel to a folder of cases to predict with a model trained on such a dataset: ``nnUNetv2_predict`` then sees
each slice at the position it was trained with. Any nnU-Net trainer can train on the new dataset; the trainers of
``nnunetv2_ext.trainers.slice_position`` also keep the channel out of the intensity augmentations.

Bad input (a case missing a channel, a 2D image, a series whose slices are not axial, a dataset that already has a
position channel) is reported per case before anything is written.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import SimpleITK as sitk

from nnunetv2_ext.dataset_conversion.common import (FILE_ENDING, SUBSET_FOLDERS, CaseError, CaseListing, CaseProblem,
                                                    ConversionError, DatasetConverter, SourceCase, make_parser,
                                                    require_scalar_voxels, run_cli)
from nnunetv2_ext.dataset_conversion.geometry import Geometry
from nnunetv2_ext.io_atomic import OutputFolderError, check_output_folder, write_folder_atomically
from nnunetv2_ext.dataset_conversion.windows import NO_NORMALIZATION
from nnunetv2_ext.slice_position.checks import CHANNEL_KEY
from nnunetv2_ext.slice_position.encoding import position_image, slice_axis_problem

_STANDARD_KEYS = {"channel_names", "modality", "labels", "numTraining", "file_ending", "name", "converted_by",
                  "dataset_name", "regions_class_order", "overwrite_image_reader_writer", "description", "reference",
                  "licence", "release", "tensorImageSize"}


def read_dataset_json(folder: Path) -> dict:
    try:
        return json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f"{folder}: no readable dataset.json ({e})") from None


def channel_files(folder: Path, identifier: str, num_channels: int, file_ending: str) -> Tuple[str, ...]:
    return tuple(str(folder / f"{identifier}_{i:04d}{file_ending}") for i in range(num_channels))


def list_cases(folder: Path, num_channels: int,
               file_ending: str) -> Tuple[Dict[str, Tuple[str, ...]], List[CaseProblem]]:
    """{identifier: channel files} of an nnU-Net images folder (``CASE_XXXX<file_ending>``), and the cases missing a
    channel or having one too many."""
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(file_ending) + "$")
    found: Dict[str, set] = {}
    for p in folder.iterdir() if folder.is_dir() else ():
        match = pattern.match(p.name)
        if match:
            found.setdefault(match["case"], set()).add(int(match["channel"]))
    cases, problems = {}, []
    for identifier, channels in sorted(found.items()):
        missing = sorted(set(range(num_channels)) - channels)
        extra = sorted(channels - set(range(num_channels)))
        if missing or extra:
            problems.append(CaseProblem(identifier, f"{folder.name}: expected channels 0..{num_channels - 1}; "
                                                    f"missing {missing}, unexpected {extra}"))
        else:
            cases[identifier] = channel_files(folder, identifier, num_channels, file_ending)
    return cases, problems


def check_case(identifier: str, images: Tuple[str, ...]) -> Geometry:
    """The case's geometry; CaseError when its position channel cannot be defined."""
    for path in images:
        require_scalar_voxels(path, "image")
    geometry = Geometry.from_file(images[0])
    reader = sitk.ImageFileReader()
    reader.SetFileName(images[0])
    reader.ReadImageInformation()
    if reader.GetDimension() != 3:
        raise CaseError(f"slice positions need a 3D image, got a {reader.GetDimension()}D one")
    problem = slice_axis_problem(reader.GetDirection())
    if problem is not None:
        raise CaseError(problem)
    return geometry


def write_case(identifier: str, images: Tuple[str, ...], folder: Path, file_ending: str) -> None:
    """Copies the channels (same name; converted to ``file_ending`` when the source has another) and writes the
    position channel as the next one."""
    for i, path in enumerate(images):
        target = folder / f"{identifier}_{i:04d}{file_ending}"
        if path.endswith(file_ending):
            shutil.copyfile(path, target)
        else:
            sitk.WriteImage(sitk.ReadImage(path), str(target), True)
    reference = sitk.ReadImage(images[0])
    sitk.WriteImage(position_image(reference, identifier), str(folder / f"{identifier}_{len(images):04d}{file_ending}"),
                    True)


class SlicePositionConverter(DatasetConverter):
    """An nnU-Net raw dataset (``-i`` its folder) -> the same dataset with the position channel."""

    def __init__(self, input_folder: str, **kwargs):
        super().__init__(input_folder, **kwargs)
        self.source = read_dataset_json(self.input_folder)
        if CHANNEL_KEY in self.source:
            raise ConversionError(f"{self.input_folder} already has a slice-position channel "
                                  f"({CHANNEL_KEY} = {self.source[CHANNEL_KEY]})")
        channels = self.source.get("channel_names") or self.source.get("modality")
        if not channels:
            raise ConversionError(f"{self.input_folder}/dataset.json has no channel_names")
        self.num_channels = len(channels)
        self.file_ending = self.source.get("file_ending", FILE_ENDING)
        self.channel_names = {int(k): v for k, v in channels.items()}
        self.channel_names[self.num_channels] = NO_NORMALIZATION
        self.labels = self.source["labels"]
        name = self.input_folder.name.split("_", 1)[-1] if self.input_folder.name.startswith("Dataset") \
            else self.input_folder.name
        self.dataset_name = f"{name}SlicePosition"
        self.extra_json = {k: v for k, v in self.source.items() if k not in _STANDARD_KEYS and k != CHANNEL_KEY}
        if "regions_class_order" in self.source:
            self.extra_json["regions_class_order"] = self.source["regions_class_order"]
        self.extra_json[CHANNEL_KEY] = self.num_channels
        self.extra_json["slice_position"] = ("p_k = (k + 1/2) / Z, k = 0 at the most superior slice "
                                             "(nnunetv2_ext.slice_position.encoding)")

    def find_cases(self) -> CaseListing:
        listing = CaseListing(cases=[])
        for subset, (images, labels) in SUBSET_FOLDERS.items():
            cases, problems = list_cases(self.input_folder / images, self.num_channels, self.file_ending)
            listing.problems += problems
            for identifier, files in cases.items():
                label = self.input_folder / labels / f"{identifier}{self.file_ending}" if labels else None
                if subset == "train" and not label.is_file():
                    listing.problems.append(CaseProblem(identifier, f"{images}: no label {label.name} in {labels}"))
                    continue
                listing.cases.append(SourceCase(identifier, subset, files,
                                                str(label) if label is not None and label.is_file() else None))
        return listing

    def validate_case(self, case: SourceCase) -> SourceCase:
        geometry = check_case(case.identifier, case.images)
        if case.label is not None:
            self.check_label_geometry(case, geometry)
        return case

    def convert_case(self, case: SourceCase, dataset_folder: Path) -> None:
        images, labels = SUBSET_FOLDERS[case.subset]
        (dataset_folder / images).mkdir(parents=True, exist_ok=True)
        write_case(case.identifier, case.images, dataset_folder / images, FILE_ENDING)
        if case.label is not None:
            (dataset_folder / labels).mkdir(parents=True, exist_ok=True)
            target = dataset_folder / labels / f"{case.identifier}{FILE_ENDING}"
            if case.label.endswith(FILE_ENDING):
                shutil.copyfile(case.label, target)
            else:
                sitk.WriteImage(sitk.ReadImage(case.label), str(target), True)


def add_to_images(input_folder: str, output_folder: str, dataset_json: dict, overwrite: bool = False) -> List[str]:
    """Writes ``output_folder``: the cases of ``input_folder`` (the channels of the model's dataset but the position
    channel) with the position channel added, as the model's training data had it. Every case is checked before
    anything is written; the folder is swapped in at the end. Returns the identifiers."""
    if CHANNEL_KEY not in dataset_json:
        raise ConversionError(f"the model's dataset has no slice-position channel ({CHANNEL_KEY} missing from its "
                              f"dataset.json): its cases need no position channel")
    position = int(dataset_json[CHANNEL_KEY])
    file_ending = dataset_json.get("file_ending", FILE_ENDING)
    inp = Path(input_folder)
    if not inp.is_dir():
        raise ConversionError(f"input folder {input_folder} does not exist")
    check_output_folder(output_folder, [input_folder], overwrite=overwrite)
    cases, problems = list_cases(inp, position, file_ending)
    for identifier, files in cases.items():
        try:
            check_case(identifier, files)
        except CaseError as e:
            problems.append(CaseProblem(identifier, e.reason))
    if problems:
        raise ConversionError("bad cases, nothing written:\n" + "\n".join(f"  {p.identifier}: {p.reason}"
                                                                         for p in problems))
    if not cases:
        raise ConversionError(f"no cases named CASE_0000{file_ending} ... in {input_folder}")

    def write(tmp: str) -> None:
        for identifier, files in cases.items():
            write_case(identifier, files, Path(tmp), file_ending)

    write_folder_atomically(output_folder, write, written_by="nnunetv2_ext_add_slice_position_to_images")
    return sorted(cases)


def model_dataset_json(dataset: str) -> dict:
    """The dataset.json of a dataset (id or name) as training saw it: from nnUNet_raw, else nnUNet_preprocessed, else
    a trained model's folder in nnUNet_results (a model installed from a zip has only that one)."""
    from nnunetv2 import paths
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise ConversionError(f"dataset {dataset}: {str(e).splitlines()[0]}") from None
    candidates = [Path(base) / name / "dataset.json" for base in (paths.nnUNet_raw, paths.nnUNet_preprocessed) if base]
    if paths.nnUNet_results:
        candidates += sorted((Path(paths.nnUNet_results) / name).glob("*/dataset.json"))
    for path in candidates:
        if path.is_file():
            return read_dataset_json(path.parent)
    raise ConversionError(f"dataset {name}: no dataset.json in nnUNet_raw, nnUNet_preprocessed or nnUNet_results")


def main(argv=None) -> int:
    parser = make_parser("Add the slice-position channel (Pham et al., FLARE22) to an nnU-Net raw dataset: writes "
                         "a new dataset with one more channel, p_k = (k + 1/2) / Z from the most superior slice.")
    args = parser.parse_args(argv)
    return run_cli(lambda a: SlicePositionConverter(a.input, geometry_tolerance=a.geometry_tolerance), args)


def images_main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Add the slice-position channel to a folder of cases to predict with a model trained on a "
                    "dataset written by nnunetv2_ext_add_slice_position.")
    parser.add_argument("-i", "--input", required=True, help="images to predict (the model's channels but the "
                                                             "position channel)")
    parser.add_argument("-o", "--output", required=True, help="output folder, then nnUNetv2_predict -i OUTPUT")
    parser.add_argument("-d", "--dataset", required=True, help="the dataset (id or name) the model was trained on")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder this command wrote")
    args = parser.parse_args(argv)
    try:
        dataset_json = model_dataset_json(args.dataset)
        written = add_to_images(args.input, args.output, dataset_json, overwrite=args.overwrite)
    except (ConversionError, OutputFolderError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {len(written)} cases with the slice-position channel to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
