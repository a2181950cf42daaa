"""Finding and reading the cases of reference / prediction folders with nnU-Net's own reader classes.

Folders may be plain folders of segmentations, or nnU-Net result folders: a fold folder (``fold_0``, whose
``validation/`` holds the predictions), a trainer folder ``Trainer__Plans__config`` (the ``validation/`` folders
of all its folds are pooled, i.e. the cross-validation predictions) or a ``validation`` folder itself.
"""
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Type, Union

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, subdirs, subfiles
from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.imageio.reader_writer_registry import (determine_reader_writer_from_dataset_json,
                                                     determine_reader_writer_from_file_ending)

from nnunetv2_ext.file_checks import check_complete

LabelOrRegion = Union[int, Tuple[int, ...]]

#: file endings tried (in this order) when neither dataset.json nor the caller names one
KNOWN_FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl", ".tif", ".tiff", ".png", ".bmp")


class EvaluationInputError(ValueError):
    """Inconsistent or broken input (folders, files, labels, geometry); the message names the case or parameter."""


@dataclass(frozen=True)
class LabelSpec:
    """One evaluated label (an int) or region (a tuple of ints, nnU-Net region training) with its display name."""
    value: LabelOrRegion
    name: str

    @property
    def key(self) -> str:
        return label_or_region_to_key(self.value)


@dataclass(frozen=True)
class LabelSetup:
    labels: Tuple[LabelSpec, ...]
    ignore_label: Optional[int]
    #: all label values a segmentation may contain (background, labels, ignore); None = not checked
    allowed_values: Optional[Tuple[int, ...]]


def label_setup_from_dataset_json(dataset_json: dict, labels: Optional[Sequence[LabelOrRegion]] = None) -> LabelSetup:
    """Labels (or regions), their names and the ignore label from an nnU-Net dataset.json (as a dict).
    ``labels`` restricts the evaluation to some of them (values as in dataset.json)."""
    if "labels" not in dataset_json:
        raise EvaluationInputError("dataset.json has no 'labels' entry")
    names: Dict[LabelOrRegion, str] = {}
    ignore_label = None
    allowed = {0}
    for name, value in dataset_json["labels"].items():
        if name == "ignore":
            ignore_label = int(value)
            allowed.add(ignore_label)
            continue
        value = int(value) if np.isscalar(value) else tuple(int(v) for v in value)
        if len(value if isinstance(value, tuple) else (value,)) == 1 and isinstance(value, tuple):
            value = value[0]
        if value == 0 or name == "background":
            continue
        names[value] = name
        allowed.update(value if isinstance(value, tuple) else (value,))
    if "regions_class_order" in dataset_json:  # region training: the label map holds the regions' class order
        allowed.update(int(v) for v in dataset_json["regions_class_order"])
    if labels is not None:
        wanted = [int(v) if np.isscalar(v) else tuple(int(i) for i in v) for v in labels]
        unknown = [v for v in wanted if v not in names]
        if unknown:
            raise EvaluationInputError(f"labels {unknown} are not in dataset.json (it has {list(names)})")
        names = {v: names[v] for v in wanted}
    if not names:
        raise EvaluationInputError("dataset.json names no foreground label to evaluate")
    return LabelSetup(tuple(LabelSpec(v, n) for v, n in names.items()), ignore_label, tuple(sorted(allowed)))


def find_dataset_json(pred_folder: str, ref_folder: str) -> Optional[str]:
    """The dataset.json nnU-Net keeps beside predictions: in the prediction folder (nnUNetv2_predict output, trainer
    folder), in the trainer folder of a fold folder or a fold's validation folder, or in the dataset folder holding
    a labelsTr / labelsTs / gt_segmentations reference folder. None if there is none."""
    pred_folder, ref_folder = os.path.abspath(pred_folder), os.path.abspath(ref_folder)
    candidates = [pred_folder]
    if os.path.basename(pred_folder) == "validation":
        pred_folder = os.path.dirname(pred_folder)
    if os.path.basename(pred_folder).startswith("fold_"):
        candidates.append(os.path.dirname(pred_folder))
    if os.path.basename(ref_folder) in ("labelsTr", "labelsTs", "gt_segmentations"):
        candidates.append(os.path.dirname(ref_folder))
    for candidate in candidates:
        if isfile(join(candidate, "dataset.json")):
            return join(candidate, "dataset.json")
    return None


def guess_file_ending(folder: str) -> str:
    files = os.listdir(folder)
    for ending in KNOWN_FILE_ENDINGS:
        if any(f.endswith(ending) and not (ending == ".nii" and f.endswith(".nii.gz")) for f in files):
            return ending
    raise EvaluationInputError(f"no segmentation files ({', '.join(KNOWN_FILE_ENDINGS)}) in {folder}")


def files_by_case(folder: str, file_ending: str) -> Dict[str, str]:
    return {f[:-len(file_ending)]: join(folder, f) for f in subfiles(folder, suffix=file_ending, join=False)}


def prediction_files(folder: str, file_ending: str) -> Tuple[Dict[str, str], bool]:
    """Case identifier -> file of a prediction folder, which may also be an nnU-Net fold or trainer folder, and
    whether the folder is a single fold's validation set (then only a subset of the references is predicted)."""
    if not isdir(folder):
        raise EvaluationInputError(f"prediction folder {folder} does not exist")
    single_fold = os.path.basename(os.path.normpath(folder)) == "validation"
    files = files_by_case(folder, file_ending)
    if files:
        return files, single_fold
    if isdir(join(folder, "validation")):  # a fold folder
        return files_by_case(join(folder, "validation"), file_ending), True
    # numbered folds only: fold_all was trained on every case, its "validation" cases are training cases
    fold_dirs = sorted(d for d in subdirs(folder, prefix="fold_", join=False)
                       if d[5:].isdigit() and isdir(join(folder, d, "validation")))
    if fold_dirs:  # a trainer folder: pool the folds' validation predictions (the cross-validation)
        pooled: Dict[str, str] = {}
        for fold in fold_dirs:
            for case, f in files_by_case(join(folder, fold, "validation"), file_ending).items():
                if case in pooled:
                    raise EvaluationInputError(f"case {case} is predicted in two folds of {folder}: "
                                               f"{pooled[case]} and {f}")
                pooled[case] = f
        return pooled, False
    return {}, False


def method_name_for_folder(folder: str) -> str:
    """Display name: the trainer for nnU-Net result folders (plus the fold), otherwise the folder's name."""
    folder = os.path.normpath(os.path.abspath(folder))
    parts = folder.split(os.sep)
    if parts[-1] == "validation":
        parts = parts[:-1]
    if parts[-1].startswith("fold_") and len(parts) > 1 and "__" in parts[-2]:
        return f"{parts[-2].split('__')[0]} {parts[-1]}"
    if "__" in parts[-1]:
        return parts[-1].split("__")[0]
    return parts[-1]


def reader_class(dataset_json: Optional[dict], file_ending: str, example_file: str) -> Type[BaseReaderWriter]:
    try:
        if dataset_json is not None:
            return determine_reader_writer_from_dataset_json(dataset_json, example_file, verbose=False)
        return determine_reader_writer_from_file_ending(file_ending, example_file, verbose=False)
    except RuntimeError as e:
        raise EvaluationInputError(f"nnU-Net has no reader for {example_file}: {e}") from e


def geometry_from_properties(properties: dict) -> Dict[str, np.ndarray]:
    geometry = {"spacing": np.asarray(properties["spacing"], dtype=float)}
    for key, sub in properties.items():  # sitk_stuff (origin, direction, ...), nibabel_stuff (affines)
        if isinstance(sub, dict):
            for name, value in sub.items():
                geometry[f"{key}.{name}"] = np.asarray(value, dtype=float)
    return geometry


def geometry_difference(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> Optional[str]:
    """The first geometry entry (spacing, origin, direction) of ``a`` that ``b`` lacks or that differs beyond
    rounding (rtol 1e-5, atol 1e-3); None when the two agree."""
    for key, value in a.items():
        other = b.get(key)
        if other is None or other.shape != value.shape or not np.allclose(value, other, rtol=1e-5, atol=1e-3):
            return key
    return None


def grid_mismatch_message(case: str, a: tuple, b: tuple) -> Optional[str]:
    """Why two arrays of ``case`` are not on one voxel grid, or None. ``a`` and ``b`` are (role, file, shape,
    geometry): the shapes must be equal and the geometries agree (:func:`geometry_difference`)."""
    (role_a, file_a, shape_a, geometry_a), (role_b, file_b, shape_b, geometry_b) = a, b
    if tuple(shape_a) != tuple(shape_b):
        return f"case {case}: {role_a} shape {tuple(shape_a)} != {role_b} shape {tuple(shape_b)} ({file_a} vs {file_b})"
    key = geometry_difference(geometry_a, geometry_b)
    if key is None:
        return None
    other = geometry_b.get(key)
    return (f"case {case}: {role_a} and {role_b} differ in {key}: {geometry_a[key].tolist()} vs "
            f"{None if other is None else other.tolist()} ({file_a} vs {file_b})")


def read_segmentation(reader: BaseReaderWriter, case: str, file: str, role: str
                      ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Label map (without nnU-Net's channel axis, smallest unsigned integer type) and its geometry."""
    try:
        check_complete(file)  # a cut file would be read with zeros for its missing part
        seg, properties = reader.read_seg(file)
    except Exception as e:  # any reader error: name the case and the file
        raise EvaluationInputError(f"case {case}: cannot read {role} {file}: {e}") from e
    return _as_labels(seg[0], case, role), geometry_from_properties(properties)


def read_case(reader: BaseReaderWriter, case: str, ref_file: str, pred_file: str
              ) -> Tuple[np.ndarray, np.ndarray, Tuple[float, ...]]:
    """Reads reference and prediction, checks they share the grid (shape, spacing, origin, direction / affine).

    Returns (reference, prediction, spacing): integer arrays without nnU-Net's channel axis (2D images become 2D
    arrays) and the spacing in mm per array axis."""
    ref, ref_geometry = read_segmentation(reader, case, ref_file, "reference")
    pred, pred_geometry = read_segmentation(reader, case, pred_file, "prediction")
    problem = grid_mismatch_message(case, ("reference", ref_file, ref.shape, ref_geometry),
                                    ("prediction", pred_file, pred.shape, pred_geometry))
    if problem is not None:
        raise EvaluationInputError(problem)
    spacing = tuple(float(s) for s in ref_geometry["spacing"])
    if ref.ndim == 3 and ref.shape[0] == 1:  # nnU-Net stores 2D images as 1 x H x W: evaluate them in 2D
        ref, pred, spacing = ref[0], pred[0], spacing[1:]
    return ref, pred, spacing


def _as_labels(seg: np.ndarray, case: str, role: str) -> np.ndarray:
    """nnU-Net's readers return float32: back to the smallest unsigned integer type (fast masks and counts)."""
    if seg.size and seg.min() < 0:
        raise EvaluationInputError(f"case {case}: the {role} holds negative values; is it a label map?")
    high = seg.max() if seg.size else 0
    labels = seg.astype(np.uint8 if high < 2 ** 8 else np.uint16 if high < 2 ** 16 else np.int64)
    if not np.array_equal(labels, seg):
        raise EvaluationInputError(f"case {case}: the {role} holds non-integer values; is it a label map?")
    return labels


def label_values(seg: np.ndarray) -> np.ndarray:
    """Sorted label values present in a non-negative integer label map (bincount: one pass, no sort)."""
    return np.flatnonzero(np.bincount(seg.ravel()))
