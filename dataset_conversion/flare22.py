"""FLARE22 (MICCAI 2022 abdominal organ challenge) -> nnU-Net raw ``DatasetXXX_FLARE22``.

- 50 labelled cases (13 organs) -> imagesTr/labelsTr,
- the unlabelled cases (2000 in the release) -> listed in ``unlabeled_cases.json`` (identifier -> source file, and
  the written file with ``--write-unlabeled``, which copies them to ``imagesUnlabeled/ID_0000.nii.gz``) for the
  semi-supervised tools,
- the validation images (no public labels) -> imagesTs.

``--three-windows`` (or ``--window NAME:LEVEL:WIDTH`` ...) writes every image as one channel per CT window instead
(Pham et al.'s input; ``windows.py``).

Files are recognised by name anywhere below the input folder: ``FLARE22_Tr_0001_0000.nii.gz`` (image),
``FLARE22_Tr_0001.nii.gz`` (label), ``Case_00001_0000.nii.gz`` (unlabelled), ``FLARE22_Ts_0001_0000.nii.gz``
(validation).
"""
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, List

import SimpleITK as sitk

from nnunetv2_ext.dataset_conversion.common import (CaseListing, CaseProblem, DatasetConverter, FILE_ENDING,
                                                    SUBSET_FOLDERS, SourceCase, make_parser, run_cli)
from nnunetv2_ext.dataset_conversion.windows import (add_window_arguments, windowed_channel_names, windows_from_args,
                                                     windows_json, write_windowed_channels)

UNLABELED_LIST = "unlabeled_cases.json"
ORGANS = ("liver", "right kidney", "spleen", "pancreas", "aorta", "inferior vena cava", "right adrenal gland",
          "left adrenal gland", "gallbladder", "esophagus", "stomach", "duodenum", "left kidney")

_PATTERNS = {  # kind -> (pattern, identifier format)
    "image": (re.compile(r"^FLARE22_Tr_(\d+)_0000\.nii\.gz$"), "FLARE22_Tr_{:04d}"),
    "label": (re.compile(r"^FLARE22_Tr_(\d+)\.nii\.gz$"), "FLARE22_Tr_{:04d}"),
    "unlabeled": (re.compile(r"^Case_(\d+)_0000\.nii\.gz$"), "FLARE22_Un_{:05d}"),
    "validation": (re.compile(r"^FLARE22_Ts_(\d+)_0000\.nii\.gz$"), "FLARE22_Ts_{:04d}"),
}


class FLARE22Converter(DatasetConverter):
    dataset_name = "FLARE22"
    channel_names = {0: "CT"}
    labels = {"background": 0, **{organ: i + 1 for i, organ in enumerate(ORGANS)}}
    extra_json = {"reference": "https://flare22.grand-challenge.org/",
                  "license": "see the data terms at the reference page"}

    def __init__(self, input_folder: str, write_unlabeled: bool = False, windows=None, **kwargs):
        windows = tuple(windows or ())  # three-window input (windows.py): one channel per window, noNorm
        if windows:
            kwargs["windows"] = [[w.name, w.level, w.width] for w in windows]
        super().__init__(input_folder, write_unlabeled=write_unlabeled, **kwargs)
        self.write_unlabeled = write_unlabeled
        self.windows = windows
        if windows:
            self.channel_names = windowed_channel_names(windows)
            self.extra_json = {**self.extra_json, **windows_json(windows)}

    def find_cases(self) -> CaseListing:
        found: Dict[str, Dict[str, List[Path]]] = {kind: {} for kind in _PATTERNS}
        for path in sorted(self.input_folder.rglob("*.nii.gz")):
            for kind, (pattern, id_format) in _PATTERNS.items():
                if (m := pattern.match(path.name)):
                    found[kind].setdefault(id_format.format(int(m.group(1))), []).append(path)
        listing = CaseListing(cases=[])
        for kind, cases in found.items():
            for case_id, paths in cases.items():
                if len(paths) > 1:
                    listing.problems.append(CaseProblem(case_id, f"{kind} found more than once: "
                                                                 + ", ".join(map(str, paths))))
        images, labels = found["image"], found["label"]
        for case_id in sorted(set(images) | set(labels)):
            if case_id not in labels:
                listing.problems.append(CaseProblem(case_id, f"image without label: {images[case_id][0]}"))
            elif case_id not in images:
                listing.problems.append(CaseProblem(case_id, f"label without image: {labels[case_id][0]}"))
            elif len(images[case_id]) == len(labels[case_id]) == 1:
                listing.cases.append(SourceCase(case_id, "train", (str(images[case_id][0]),),
                                                str(labels[case_id][0])))
        for kind, subset in (("unlabeled", "unlabeled"), ("validation", "test")):
            listing.cases += [SourceCase(case_id, subset, (str(paths[0]),))
                              for case_id, paths in sorted(found[kind].items()) if len(paths) == 1]
        return listing

    def convert_case(self, case: SourceCase, dataset_folder: Path) -> None:
        images, labels = SUBSET_FOLDERS[case.subset]
        if case.subset == "unlabeled" and not self.write_unlabeled:
            return
        (dataset_folder / images).mkdir(parents=True, exist_ok=True)
        # source images are already .nii.gz in nnU-Net naming: copy them byte for byte
        if self.windows:
            write_windowed_channels(case.images[0], dataset_folder / images, case.identifier, self.windows)
        else:
            shutil.copyfile(case.images[0], dataset_folder / images / f"{case.identifier}_0000{FILE_ENDING}")
        if case.label is not None:
            (dataset_folder / labels).mkdir(parents=True, exist_ok=True)
            self.write_label(sitk.ReadImage(case.label), case.info["geometry"],
                             dataset_folder / labels / f"{case.identifier}{FILE_ENDING}")

    def write_extras(self, dataset_folder: Path, converted: Dict[str, List[str]], cases: List[SourceCase]) -> None:
        unlabeled = {c.identifier: c for c in cases if c.subset == "unlabeled"}
        entries = {i: {"source": c.images[0],
                       "file": f"{SUBSET_FOLDERS['unlabeled'][0]}/{i}_0000{FILE_ENDING}" if self.write_unlabeled
                       else None} for i, c in sorted(unlabeled.items())}
        (dataset_folder / UNLABELED_LIST).write_text(json.dumps({"num_unlabeled": len(entries), "cases": entries},
                                                                indent=1))


def main(argv=None) -> int:
    parser = make_parser("Convert FLARE22 into an nnU-Net raw dataset DatasetXXX_FLARE22 (labelled cases to "
                         "imagesTr/labelsTr, validation images to imagesTs, unlabelled cases listed).")
    parser.add_argument("--write-unlabeled", action="store_true",
                        help="also copy the unlabelled cases to imagesUnlabeled/ (otherwise only listed in "
                             f"{UNLABELED_LIST})")
    add_window_arguments(parser)
    args = parser.parse_args(argv)
    windows = windows_from_args(args, parser)
    return run_cli(lambda a: FLARE22Converter(a.input, write_unlabeled=a.write_unlabeled, windows=windows,
                                              geometry_tolerance=a.geometry_tolerance), args)


if __name__ == "__main__":
    sys.exit(main())
