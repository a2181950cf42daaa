"""Consensus-scored pseudo-labels: score M prediction folders of the same unlabelled cases, select the trusted ones
and write them, with the labelled cases, as a new nnU-Net raw dataset (issue 10, part 2).

Flow of :func:`run_pseudolabel` (``nnUNetv2_ext_pseudolabel`` is its command line):

1. :func:`find_predictions` lists the M folders (``nnUNetv2_predict`` outputs, with or without
   ``--save_probabilities``, or plain folders of label maps) and checks that they hold the same cases; the labels
   come from dataset.json (given, or the one nnUNetv2_predict writes beside its predictions), else from the data.
2. Every case is scored (Eq. 1, :mod:`nnunetv2_ext.semisupervised.consensus`) in parallel; the M maps must share the
   grid (shape, spacing, origin, direction) and hold only known labels.
3. Selection by ``threshold`` (score >= t) or ``top_fraction`` (the best ceil(f N) of all N cases; ties by case
   name). Cases without a score (nothing predicted) rank last and are never selected.
4. The output dataset is checked (labelled dataset exists, output id free or ``overwrite``, images of every selected
   case present, no identifier both labelled and unlabelled) before anything is written; then ``scores.csv``, the
   histogram and the manifest go to ``out``, and the dataset is written into a hidden temporary folder that is
   renamed at the end: labelled images/labels and the selected images hard-linked (or copied), the averaged
   pseudo-labels written with nnU-Net's writer, dataset.json, ``splits_final.json`` (the labelled dataset's folds,
   every pseudo-labelled case added to each fold's training set: validation stays on manual labels) and
   ``pseudo_labels.json`` (what was selected with which score).
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

from nnunetv2_ext.evaluation.io import (EvaluationInputError, files_by_case, geometry_from_properties,
                                        grid_mismatch_message, guess_file_ending, read_segmentation, reader_class)
from nnunetv2_ext.file_checks import TruncatedFileError, check_complete
from nnunetv2_ext.figure_style import own_style
from nnunetv2_ext.io_atomic import mark_folder, write_folder_atomically
from nnunetv2_ext.semisupervised.consensus import averaged_from_probabilities, check_level, consensus_score
from nnunetv2_ext.semisupervised.unlabelled import UNLABELLED_IMAGES

MANIFEST_NAME = "pseudo_labels.json"
SCORES_NAME = "scores.csv"
HISTOGRAM_NAME = "scores_histogram.png"


class PseudoLabelError(ValueError):
    """Bad input (folders, cases, geometry, ids, parameters); the message names the case or parameter."""


# ---------------------------------------------------------------------------------------------- predictions
@dataclass
class PredictionSet:
    folders: List[str]
    file_ending: str
    cases: List[str]
    files: List[Dict[str, str]]
    """Per folder: case -> segmentation file."""
    probability_files: Optional[List[Dict[str, str]]]
    """Per folder: case -> .npz softmax (``--save_probabilities``), when used for the averaged mask."""
    dataset_json: Optional[dict]
    labels: Optional[Tuple[int, ...]]
    """Foreground labels from dataset.json; None: inferred per case from the data."""
    label_names: Dict[int, str] = field(default_factory=dict)

    def for_case(self, case: str) -> "PredictionSet":
        """The same set restricted to one case (what a worker process needs; cheap to pickle for 2000 cases)."""
        return PredictionSet(self.folders, self.file_ending, [case], [{case: f[case]} for f in self.files],
                             [{case: f[case]} for f in self.probability_files] if self.probability_files else None,
                             self.dataset_json, self.labels, self.label_names)


def foreground_labels(dataset_json: dict) -> Tuple[Tuple[int, ...], Dict[int, str]]:
    """(foreground labels, names) of a label-based dataset.json; regions are refused (argmax pseudo-labels and Eq. 1
    are defined for mutually exclusive labels)."""
    if "regions_class_order" in dataset_json or any(
            not np.isscalar(v) and len(v) > 1 for v in dataset_json.get("labels", {}).values()):
        raise PseudoLabelError("the dataset is region-based (regions_class_order); consensus pseudo-labels need "
                               "mutually exclusive labels")
    names = {}
    for name, value in dataset_json.get("labels", {}).items():
        value = int(value if np.isscalar(value) else value[0])
        if name in ("background", "ignore") or value == 0:
            continue
        names[value] = name
    if not names:
        raise PseudoLabelError("dataset.json names no foreground label")
    return tuple(sorted(names)), names


def find_predictions(folders: Sequence[str], dataset_json: Optional[str] = None, file_ending: Optional[str] = None,
                     probabilities: str = "auto") -> PredictionSet:
    if len(folders) < 2:
        raise PseudoLabelError(f"need at least two prediction folders (M >= 2 models), got {len(folders)}")
    if probabilities not in ("auto", "yes", "no"):
        raise PseudoLabelError(f"probabilities must be auto, yes or no, got {probabilities!r}")
    folders = [os.path.abspath(f) for f in folders]
    if len(set(folders)) != len(folders):
        raise PseudoLabelError("the same prediction folder is given twice: " + ", ".join(folders))
    for f in folders:
        if not os.path.isdir(f):
            raise PseudoLabelError(f"prediction folder {f} does not exist")
    if dataset_json is not None:
        if not isfile(dataset_json):
            raise PseudoLabelError(f"dataset.json {dataset_json} does not exist")
        djson = load_json(dataset_json)
    else:
        found = [load_json(join(f, "dataset.json")) for f in folders if isfile(join(f, "dataset.json"))]
        djson = found[0] if found else None
        if any(d.get("labels") != djson.get("labels") for d in found):
            raise PseudoLabelError("the prediction folders' dataset.json files name different labels: "
                                   + "; ".join(f"{f}: {load_json(join(f, 'dataset.json')).get('labels')}"
                                               for f in folders if isfile(join(f, 'dataset.json'))))
    labels, names = foreground_labels(djson) if djson is not None else (None, {})
    try:
        ending = file_ending or (djson or {}).get("file_ending") or guess_file_ending(folders[0])
    except EvaluationInputError as e:
        raise PseudoLabelError(str(e)) from e
    files = [files_by_case(f, ending) for f in folders]
    for f, fl in zip(folders, files):
        if not fl:
            raise PseudoLabelError(f"prediction folder {f} holds no {ending} files")
    cases = sorted(files[0])
    for f, fl in zip(folders[1:], files[1:]):
        if set(fl) != set(cases):
            missing, extra = sorted(set(cases) - set(fl)), sorted(set(fl) - set(cases))
            raise PseudoLabelError(
                f"prediction folders hold different cases: {f} lacks {len(missing)} case(s) of {folders[0]}"
                f"{' (' + ', '.join(missing[:5]) + (' ...' if len(missing) > 5 else '') + ')' if missing else ''}"
                f" and has {len(extra)} other(s)"
                f"{' (' + ', '.join(extra[:5]) + (' ...' if len(extra) > 5 else '') + ')' if extra else ''}")
    prob_files = None
    if probabilities != "no":
        npz = [{c: join(f, c + ".npz") for c in cases} for f in folders]
        complete = all(isfile(p) for d in npz for p in d.values())
        if probabilities == "yes" and not complete:
            raise PseudoLabelError("probabilities=yes but not every folder has a .npz (nnUNetv2_predict "
                                   "--save_probabilities) for every case")
        if probabilities == "yes" and djson is None:
            raise PseudoLabelError("probabilities need dataset.json (the channel order of the softmax)")
        if complete and djson is not None:
            prob_files = npz
    return PredictionSet(folders, ending, cases, files, prob_files, djson, labels, names)


# ---------------------------------------------------------------------------------------------- scoring
@dataclass
class CaseScore:
    case: str
    score: float
    class_scores: Dict[int, float]
    labels_found: Tuple[int, ...]


def _read_maps(pred: PredictionSet, case: str):
    """(label maps (M, *spatial), geometry of the first, reader, nnU-Net properties of the first)."""
    reader = reader_class(pred.dataset_json, pred.file_ending, pred.files[0][case])()
    maps, first_geometry = [], None
    for folder, files in zip(pred.folders, pred.files):
        try:
            seg, geometry = read_segmentation(reader, case, files[case], f"prediction in {folder}")
        except EvaluationInputError as e:
            raise PseudoLabelError(str(e)) from e
        if first_geometry is None:
            first_geometry, first_shape = geometry, seg.shape
        else:
            problem = grid_mismatch_message(case, ("prediction", pred.folders[0], first_shape, first_geometry),
                                            ("prediction", folder, seg.shape, geometry))
            if problem is not None:
                raise PseudoLabelError(problem)
        maps.append(seg)
    dtype = np.result_type(*[m.dtype for m in maps])
    return np.stack([m.astype(dtype, copy=False) for m in maps]), reader


def _labels_for_case(pred: PredictionSet, case: str, maps: np.ndarray) -> Tuple[int, ...]:
    present = np.flatnonzero(np.bincount(maps.ravel()))
    present = tuple(int(v) for v in present if v != 0)
    if pred.labels is None:
        return present
    unknown = sorted(set(present) - set(pred.labels))
    if unknown:
        raise PseudoLabelError(f"case {case}: predictions hold labels {unknown} that dataset.json does not name "
                               f"(labels {list(pred.labels)})")
    return pred.labels


def _averaged(pred: PredictionSet, case: str, maps: np.ndarray, labels: Tuple[int, ...]) -> Optional[np.ndarray]:
    if pred.probability_files is None:
        return None
    total = None
    for files in pred.probability_files:
        p = np.load(files[case])["probabilities"]
        if p.shape[1:] != maps.shape[1:]:
            raise PseudoLabelError(f"case {case}: probabilities {files[case]} have shape {p.shape[1:]}, the "
                                   f"segmentation {maps.shape[1:]}")
        total = p.astype(np.float32) if total is None else total + p
    return averaged_from_probabilities(total, pred.labels)


def score_case(pred: PredictionSet, case: str, level: str) -> CaseScore:
    maps, _ = _read_maps(pred, case)
    labels = _labels_for_case(pred, case, maps)
    if not labels:  # nothing predicted by any model (label inference): no score
        return CaseScore(case, float("nan"), {}, ())
    result = consensus_score(maps, labels, level, _averaged(pred, case, maps, labels))
    return CaseScore(case, result.score, result.class_scores, labels)


def averaged_pseudo_label(pred: PredictionSet, case: str):
    """(averaged mask, shaped as nnU-Net's reader returns a segmentation without its channel axis, the reader,
    the nnU-Net properties of the first model's file) -> ``reader.write_seg(mask, path, properties)``."""
    maps, reader = _read_maps(pred, case)
    labels = _labels_for_case(pred, case, maps)
    _, properties = reader.read_seg(pred.files[0][case])
    if not labels:
        return np.zeros(maps.shape[1:], np.uint8), reader, properties
    return consensus_score(maps, labels, "slice", _averaged(pred, case, maps, labels)).averaged, reader, properties


def _score_worker(args):
    pred, case, level = args
    try:
        return score_case(pred, case, level), None
    except PseudoLabelError as e:
        return None, str(e)


def score_predictions(pred: PredictionSet, level: str = "slice", num_processes: int = 1,
                      progress: bool = False) -> List[CaseScore]:
    """Scores every case; raises PseudoLabelError naming the first bad case (after all were tried)."""
    check_level(level)
    jobs = [(pred.for_case(c), c, level) for c in pred.cases]
    if num_processes > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            iterator = pool.imap(_score_worker, jobs, chunksize=1)
            results = list(_progress(iterator, len(jobs), progress, "scoring"))
    else:
        results = [_score_worker(j) for j in _progress(jobs, len(jobs), progress, "scoring")]
    errors = [e for _, e in results if e is not None]
    if errors:
        raise PseudoLabelError(f"{len(errors)} bad case(s); first: {errors[0]}")
    return [r for r, _ in results]


def _progress(iterable, total, enabled, desc):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc)


# ---------------------------------------------------------------------------------------------- selection
def check_selection(threshold: Optional[float], top_fraction: Optional[float]) -> None:
    if threshold is not None and top_fraction is not None:
        raise PseudoLabelError("give either a threshold or a top fraction, not both")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
        raise PseudoLabelError(f"threshold must be in [0, 1] (a consensus score), got {threshold}")
    if top_fraction is not None and not (isinstance(top_fraction, (int, float)) and 0 < top_fraction <= 1):
        raise PseudoLabelError(f"top fraction must be in (0, 1], got {top_fraction}")


def select_cases(scores: Sequence[CaseScore], threshold: Optional[float] = None,
                 top_fraction: Optional[float] = None) -> List[str]:
    """Selected case names, best first. Threshold: score >= t. Top fraction f: the best ceil(f N) of all N cases
    (ties broken by case name). Cases without a score rank last and are never selected."""
    check_selection(threshold, top_fraction)
    if threshold is None and top_fraction is None:
        raise PseudoLabelError("a selection needs a threshold or a top fraction")
    ranked = sorted((s for s in scores if not math.isnan(s.score)), key=lambda s: (-s.score, s.case))
    if threshold is not None:
        return [s.case for s in ranked if s.score >= threshold]
    return [s.case for s in ranked[:math.ceil(top_fraction * len(scores) - 1e-9)]]


# ---------------------------------------------------------------------------------------------- output dataset
def raw_folder() -> str:
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise PseudoLabelError("the environment variable nnUNet_raw is not set")
    return raw


def find_dataset_folder(dataset_id: int, base: Optional[str] = None) -> Optional[str]:
    """``base``/DatasetXXX_* (default $nnUNet_raw) or None; more than one is an error."""
    base = base or raw_folder()
    if not os.path.isdir(base):
        return None
    found = sorted(d for d in os.listdir(base) if d.startswith(f"Dataset{int(dataset_id):03d}_"))
    if len(found) > 1:
        raise PseudoLabelError(f"dataset id {dataset_id} is used by several folders in {base}: {found}")
    return join(base, found[0]) if found else None


@dataclass
class DatasetPlan:
    """Everything the output dataset needs, checked before writing."""
    labelled_folder: str
    labelled_json: dict
    labelled_cases: Dict[str, dict]
    target: str
    existing: Optional[str]
    images: Dict[str, List[str]]
    """Selected case -> its image files (all channels)."""
    splits: Optional[List[dict]]


def labelled_splits(labelled_folder: str, cases: Sequence[str]) -> Optional[List[dict]]:
    """The labelled dataset's folds: nnUNet_preprocessed's splits_final.json, else the raw folder's, else the split
    nnU-Net would create (5-fold KFold, seed 12345, over the sorted cases); None for fewer than 5 cases."""
    name = os.path.basename(labelled_folder)
    preprocessed = os.environ.get("nnUNet_preprocessed")
    for candidate in ([join(preprocessed, name, "splits_final.json")] if preprocessed else []) + \
            [join(labelled_folder, "splits_final.json")]:
        if isfile(candidate):
            return load_json(candidate)
    if len(cases) < 5:
        return None
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    return generate_crossval_split(sorted(cases), seed=12345, n_splits=5)


def plan_dataset(labelled_id: int, output_id: int, selected: Sequence[str], pred: PredictionSet,
                 images_folder: Optional[str] = None, output_name: Optional[str] = None,
                 overwrite: bool = False, check_images: bool = True) -> DatasetPlan:
    """Checks everything the output dataset needs (raises PseudoLabelError); ``selected`` are the cases to add
    (``check_images=False``: only checked against the labelled cases, e.g. all predicted cases before scoring)."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    raw = raw_folder()
    if not 1 <= int(output_id) <= 999:
        raise PseudoLabelError(f"output dataset id must be in 1..999, got {output_id}")
    if int(output_id) == int(labelled_id):
        raise PseudoLabelError(f"output dataset id {output_id} is the labelled dataset's id")
    labelled = find_dataset_folder(labelled_id, raw)
    if labelled is None:
        raise PseudoLabelError(f"labelled dataset id {labelled_id} does not exist in nnUNet_raw ({raw})")
    if not isfile(join(labelled, "dataset.json")):
        raise PseudoLabelError(f"labelled dataset {labelled} has no dataset.json")
    ljson = load_json(join(labelled, "dataset.json"))
    labels, _ = foreground_labels(ljson)
    if pred.labels is not None and tuple(pred.labels) != labels:
        raise PseudoLabelError(f"the predictions name labels {list(pred.labels)}, the labelled dataset "
                               f"{os.path.basename(labelled)} {list(labels)}")
    if pred.file_ending != ljson["file_ending"]:
        raise PseudoLabelError(f"predictions are {pred.file_ending} files, the labelled dataset uses "
                               f"{ljson['file_ending']}")
    lcases = get_filenames_of_train_images_and_targets(labelled, ljson)
    both = sorted(set(selected) & set(lcases))
    if both:
        raise PseudoLabelError(f"{len(both)} predicted case(s) are labelled cases of {os.path.basename(labelled)} "
                               f"(e.g. {', '.join(both[:5])}); labelled cases are never replaced: predict only the "
                               f"unlabelled images")
    name = output_name or os.path.basename(labelled).split("_", 1)[1] + "Pseudo"
    target = join(raw, f"Dataset{int(output_id):03d}_{name}")
    existing = find_dataset_folder(output_id, raw)
    if existing is not None and not overwrite:
        raise PseudoLabelError(f"output dataset id {output_id} exists ({existing}); pass --overwrite to replace it")
    if existing is not None and os.path.basename(existing) != os.path.basename(target):
        raise PseudoLabelError(f"output dataset id {output_id} is held by another dataset ({existing}, not "
                               f"{os.path.basename(target)}); --overwrite never replaces another dataset: choose a "
                               f"free --output-dataset id")
    if existing is not None and not isfile(join(existing, MANIFEST_NAME)):
        raise PseudoLabelError(f"{existing} was not written by nnUNetv2_ext_pseudolabel (no {MANIFEST_NAME}); "
                               f"--overwrite only replaces pseudo-label datasets: choose a free --output-dataset id")
    images_folder = images_folder or join(labelled, UNLABELLED_IMAGES)
    if not check_images:
        selected = []
    if selected and not os.path.isdir(images_folder):
        raise PseudoLabelError(f"images folder {images_folder} does not exist (give the folder of the unlabelled "
                               f"images with --images)")
    num_channels = len(ljson["channel_names"])
    ending = ljson["file_ending"]
    images, missing = {}, []
    for case in selected:
        files = [join(images_folder, f"{case}_{ch:04d}{ending}") for ch in range(num_channels)]
        lacking = [f for f in files if not isfile(f)]
        if lacking:
            missing.append(f"{case} ({', '.join(os.path.basename(f) for f in lacking)})")
        images[case] = files
    if missing:
        raise PseudoLabelError(f"{len(missing)} selected case(s) have no image in {images_folder} with "
                               f"{num_channels} channel(s): {'; '.join(missing[:5])}")
    for case in selected:  # an image on another grid than its pseudo-label would make a broken training case
        _check_image_grid(pred, case, images[case])
    splits = labelled_splits(labelled, list(lcases))
    if splits is not None:
        unknown = sorted({c for fold in splits for c in fold["train"] + fold["val"]} - set(lcases))
        if unknown:
            raise PseudoLabelError(f"the labelled dataset's splits name cases it does not have: {unknown[:5]}")
    return DatasetPlan(labelled, ljson, lcases, target, existing, images, splits)


def _check_image_grid(pred: PredictionSet, case: str, image_files: List[str]) -> None:
    """Raises PseudoLabelError when the case's image (all channels) is not on the grid of its first prediction:
    shape, spacing, origin and direction as nnU-Net's reader reports them."""
    reader = reader_class(pred.dataset_json, pred.file_ending, pred.files[0][case])()
    try:
        seg, seg_geometry = read_segmentation(reader, case, pred.files[0][case], f"prediction in {pred.folders[0]}")
        for f in image_files:
            check_complete(f)
        data, properties = reader.read_images(image_files)
    except (EvaluationInputError, TruncatedFileError) as e:
        raise PseudoLabelError(str(e)) from e
    except Exception as e:  # any reader error: name the case and the files
        raise PseudoLabelError(f"case {case}: cannot read image {', '.join(image_files)}: {e}") from e
    problem = grid_mismatch_message(case, ("image", image_files[0], data.shape[1:],
                                           geometry_from_properties(properties)),
                                    ("prediction", pred.files[0][case], seg.shape, seg_geometry))
    if problem is not None:
        raise PseudoLabelError(f"{problem}; give the images that were predicted")


def _link_or_copy(src: str, dst: str, copy: bool) -> None:
    if not copy:
        try:
            os.link(src, dst)
            return
        except OSError:  # other file system, or links not allowed: copy
            pass
    shutil.copyfile(src, dst)


def write_dataset(plan: DatasetPlan, pred: PredictionSet, selected: Sequence[str], scores: Dict[str, CaseScore],
                  selection: dict, copy: bool = False, num_processes: int = 1) -> str:
    """Writes the dataset into a temporary folder and swaps it in at ``plan.target`` at the end
    (``io_atomic.write_folder_atomically``: a failure keeps an older dataset and leaves nothing behind)."""
    ending = plan.labelled_json["file_ending"]

    def write(tmp: str) -> None:
        for sub in ("imagesTr", "labelsTr"):
            os.makedirs(join(tmp, sub))
        for case, entry in plan.labelled_cases.items():
            for i, f in enumerate(entry["images"]):
                _link_or_copy(f, join(tmp, "imagesTr", f"{case}_{i:04d}{ending}"), copy)
            _link_or_copy(entry["label"], join(tmp, "labelsTr", case + ending), copy)
        for sub in ("imagesTs", "labelsTs"):  # held-out cases come along for evaluation
            if os.path.isdir(join(plan.labelled_folder, sub)):
                os.makedirs(join(tmp, sub))
                for f in sorted(os.listdir(join(plan.labelled_folder, sub))):
                    _link_or_copy(join(plan.labelled_folder, sub, f), join(tmp, sub, f), copy)
        for case in selected:
            for i, f in enumerate(plan.images[case]):
                _link_or_copy(f, join(tmp, "imagesTr", f"{case}_{i:04d}{ending}"), copy)
        jobs = [(pred.for_case(case), case, join(tmp, "labelsTr", case + ending)) for case in selected]
        if num_processes > 1 and len(jobs) > 1:
            with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
                errors = [e for e in pool.map(_write_pseudo_label, jobs) if e]
        else:
            errors = [e for e in map(_write_pseudo_label, jobs) if e]
        if errors:
            raise PseudoLabelError(f"writing pseudo-labels failed: {errors[0]}")
        djson = dict(plan.labelled_json)
        djson["numTraining"] = len(plan.labelled_cases) + len(selected)
        djson.pop("dataset", None)  # files now follow nnU-Net's folder convention
        djson["name"] = os.path.basename(plan.target)
        djson["pseudo_labels"] = {"labelled_dataset": os.path.basename(plan.labelled_folder),
                                  "num_labelled": len(plan.labelled_cases), "num_pseudo_labelled": len(selected),
                                  "manifest": MANIFEST_NAME}
        with open(join(tmp, "dataset.json"), "w", encoding="utf-8") as f:
            json.dump(djson, f, indent=1)
        if plan.splits is not None:
            splits = [{"train": list(fold["train"]) + list(selected), "val": list(fold["val"])}
                      for fold in plan.splits]
            with open(join(tmp, "splits_final.json"), "w", encoding="utf-8") as f:
                json.dump(splits, f, indent=1)
        manifest = dict(selection, labelled_dataset=os.path.basename(plan.labelled_folder),
                        labelled_cases=sorted(plan.labelled_cases),
                        selected=[{"case": c, "score": scores[c].score,
                                   "class_scores": {str(k): v for k, v in scores[c].class_scores.items()}}
                                  for c in selected])
        with open(join(tmp, MANIFEST_NAME), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)

    write_folder_atomically(plan.target, write)
    if plan.existing is not None:  # --overwrite replaced an earlier pseudo-label dataset
        _drop_stale_splits(plan.target)
    return plan.target


def _drop_stale_splits(target: str) -> None:
    """A replaced dataset's splits_final.json in nnUNet_preprocessed names the old cases; nnU-Net's planner would
    refuse the new one, so it goes (the new raw one is copied by nnUNetv2_plan_and_preprocess)."""
    preprocessed = os.environ.get("nnUNet_preprocessed")
    stale = join(preprocessed, os.path.basename(target), "splits_final.json") if preprocessed else None
    if stale and isfile(stale) and isfile(join(target, "splits_final.json")) and \
            load_json(stale) != load_json(join(target, "splits_final.json")):
        os.remove(stale)
        print(f"removed {stale} (splits of the replaced dataset)")


def _write_pseudo_label(args) -> Optional[str]:
    pred, case, path = args
    try:
        seg, reader, properties = averaged_pseudo_label(pred, case)
        if seg.ndim == 2:  # a 2D image: nnU-Net's writers take (1, y, x)
            seg = seg[None]
        reader.write_seg(seg, path, properties)
    except Exception as e:  # a worker error: name the case
        return f"case {case}: {e}"
    return None


# ---------------------------------------------------------------------------------------------- reports
def write_scores(out: str, scores: Sequence[CaseScore], names: Dict[int, str], selected: Sequence[str] = (),
                 level: str = "slice", threshold: Optional[float] = None) -> Dict[str, str]:
    """scores.csv (case, score, one column per class, selected, rank) and the histogram PNG."""
    os.makedirs(out, exist_ok=True)
    classes = sorted({c for s in scores for c in s.class_scores} | set(names))
    rank = {c: i + 1 for i, c in enumerate(s.case for s in sorted(
        (s for s in scores if not math.isnan(s.score)), key=lambda s: (-s.score, s.case)))}
    chosen = set(selected)
    path = join(out, SCORES_NAME)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case", "score"] + [f"score_{names.get(c, c)}" for c in classes] + ["rank", "selected"])
        for s in sorted(scores, key=lambda s: s.case):
            w.writerow([s.case, _fmt(s.score)] + [_fmt(s.class_scores.get(c, float("nan"))) for c in classes] +
                       [rank.get(s.case, ""), int(s.case in chosen)])
    png = join(out, HISTOGRAM_NAME)
    _histogram(png, [s.score for s in scores], [s.score for s in scores if s.case in chosen], level, threshold)
    return {"scores": path, "histogram": png}


def _fmt(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.6f}"


@own_style
def _histogram(path: str, values, selected_values, level: str, threshold: Optional[float]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    values = [v for v in values if not math.isnan(v)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(min(values + [0.0]), 1.0, 41) if values else np.linspace(0, 1, 41)
    ax.hist(values, bins=bins, color="0.7", label=f"all ({len(values)})")
    if selected_values:
        ax.hist([v for v in selected_values if not math.isnan(v)], bins=bins, color="tab:green",
                label=f"selected ({len(selected_values)})")
    if threshold is not None:
        ax.axvline(threshold, color="tab:red", ls="--", label=f"threshold {threshold:g}")
    ax.set_xlabel(f"consensus score (Eq. 1, {level} level)")
    ax.set_ylabel("cases")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- all together
@dataclass
class PseudoLabelResult:
    scores: List[CaseScore]
    selected: List[str]
    dataset_folder: Optional[str]
    files: Dict[str, str]


def run_pseudolabel(prediction_folders: Sequence[str], out: str, level: str = "slice",
                    dataset_json: Optional[str] = None, file_ending: Optional[str] = None,
                    probabilities: str = "auto", labelled_dataset: Optional[int] = None,
                    output_dataset: Optional[int] = None, threshold: Optional[float] = None,
                    top_fraction: Optional[float] = None, images_folder: Optional[str] = None,
                    output_name: Optional[str] = None, overwrite: bool = False, copy: bool = False,
                    num_processes: int = 1, progress: bool = False, require_selection: bool = True,
                    manifest_extra: Optional[dict] = None) -> PseudoLabelResult:
    """The whole flow (module docstring). Every check that can fail on bad input runs before anything is written.

    With ``output_dataset`` and an empty selection nothing but the scores is written and ``dataset_folder`` is
    None (``require_selection`` then raises instead)."""
    check_level(level)
    check_selection(threshold, top_fraction)
    if (labelled_dataset is None) != (output_dataset is None):
        raise PseudoLabelError("--labelled-dataset and --output-dataset go together")
    if output_dataset is not None and threshold is None and top_fraction is None:
        raise PseudoLabelError("writing a dataset needs --threshold or --top-fraction")
    pred = find_predictions(prediction_folders, dataset_json, file_ending, probabilities)
    if output_dataset is not None:  # cheap checks first, so that bad ids fail before the (long) scoring
        plan_dataset(labelled_dataset, output_dataset, pred.cases, pred, images_folder, output_name, overwrite,
                     check_images=False)
    scores = score_predictions(pred, level, num_processes, progress)
    selected = select_cases(scores, threshold, top_fraction) if (threshold is not None or
                                                                top_fraction is not None) else []
    plan = None
    if output_dataset is not None and (selected or require_selection):
        if not selected:
            raise PseudoLabelError(_nothing_selected(scores, threshold, top_fraction))
        plan = plan_dataset(labelled_dataset, output_dataset, selected, pred, images_folder, output_name, overwrite)
    names = pred.label_names
    files = write_scores(out, scores, names, selected, level, threshold)
    by_case = {s.case: s for s in scores}
    selection = {"level": level, "threshold": threshold, "top_fraction": top_fraction,
                 "prediction_folders": pred.folders, "averaged_from": "probabilities" if pred.probability_files
                 else "label maps (soft vote)", "num_scored": len(scores),
                 "num_selected": len(selected), **(manifest_extra or {})}
    with open(join(out, MANIFEST_NAME), "w", encoding="utf-8") as f:
        json.dump(dict(selection, selected=[{"case": c, "score": by_case[c].score} for c in selected]), f, indent=1)
    files["manifest"] = join(out, MANIFEST_NAME)
    mark_folder(out, "nnUNetv2_ext_pseudolabel")
    folder = None
    if plan is not None:
        folder = write_dataset(plan, pred, selected, by_case, selection, copy, num_processes)
    return PseudoLabelResult(scores, selected, folder, files)


def _nothing_selected(scores, threshold, top_fraction) -> str:
    valid = [s.score for s in scores if not math.isnan(s.score)]
    best = f"best score {max(valid):.4f}" if valid else "no case has a score"
    rule = f"threshold {threshold}" if threshold is not None else f"top fraction {top_fraction}"
    return f"no case passes the selection ({rule}; {best} of {len(scores)} cases); no dataset written"
