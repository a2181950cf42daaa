"""Consensus-scored pseudo-labels, the scoring step: score M prediction folders of the same unlabelled cases, select the trusted ones
and write them, with the labelled cases, as a new nnU-Net raw dataset (issue 10, part 2).

Flow of :func:`~nnunetv2_ext.semisupervised.pseudolabel_run.run_pseudolabel` (``nnUNetv2_ext_pseudolabel`` is its
command line), one module per job: scoring (this module: steps 1-2), selection (:mod:`.selection`, step 3), the
output dataset (:mod:`.dataset_writer`, step 4), the score table and histogram (:mod:`.reports`):

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

import multiprocessing
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

from nnunetv2_ext.evaluation.io import (EvaluationInputError, files_by_case, grid_mismatch_message,
                                        guess_file_ending, read_segmentation, reader_class)
from nnunetv2_ext.semisupervised.consensus import averaged_from_probabilities, check_level, consensus_score
from nnunetv2_ext.semisupervised.errors import PseudoLabelError



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


@dataclass
class CaseScore:
    case: str
    score: float
    class_scores: Dict[int, float]
    labels_found: Tuple[int, ...]


def read_maps(pred: PredictionSet, case: str):
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


def labels_for_case(pred: PredictionSet, case: str, maps: np.ndarray) -> Tuple[int, ...]:
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
    maps, _ = read_maps(pred, case)
    labels = labels_for_case(pred, case, maps)
    if not labels:  # nothing predicted by any model (label inference): no score
        return CaseScore(case, float("nan"), {}, ())
    result = consensus_score(maps, labels, level, _averaged(pred, case, maps, labels))
    return CaseScore(case, result.score, result.class_scores, labels)


def averaged_pseudo_label(pred: PredictionSet, case: str):
    """(averaged mask, shaped as nnU-Net's reader returns a segmentation without its channel axis, the reader,
    the nnU-Net properties of the first model's file) -> ``reader.write_seg(mask, path, properties)``."""
    maps, reader = read_maps(pred, case)
    labels = labels_for_case(pred, case, maps)
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


# moved to their own modules (issue 21); the old names keep working with a DeprecationWarning
from nnunetv2_ext._moved import moved  # noqa: E402

__getattr__ = moved(__name__, ["nnunetv2_ext.semisupervised.selection", "nnunetv2_ext.semisupervised.dataset_writer",
                               "nnunetv2_ext.semisupervised.reports", "nnunetv2_ext.semisupervised.pseudolabel_run"],
                    names=["check_selection", "select_cases", "raw_folder", "find_dataset_folder", "DatasetPlan",
                           "labelled_splits", "plan_dataset", "write_dataset", "write_scores", "PseudoLabelResult",
                           "run_pseudolabel", "MANIFEST_NAME", "SCORES_NAME", "HISTOGRAM_NAME"])
