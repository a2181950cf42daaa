"""The pseudo-labelled nnU-Net dataset (step 4 of :func:`~nnunetv2_ext.semisupervised.pseudolabel_run.run_pseudolabel`):
checked in full before anything is written (:func:`plan_dataset`), then written into a temporary folder that is swapped
in (:func:`write_dataset`, through :func:`nnunetv2_ext.io_atomic.write_folder_atomically`)."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

from nnunetv2_ext.evaluation.io import (EvaluationInputError, geometry_from_properties, grid_mismatch_message,
                                        read_segmentation, reader_class)
from nnunetv2_ext.file_checks import TruncatedFileError, check_complete
from nnunetv2_ext.io_atomic import write_folder_atomically
from nnunetv2_ext.semisupervised.errors import PseudoLabelError
from nnunetv2_ext.semisupervised.pseudolabel import CaseScore, PredictionSet, averaged_pseudo_label, foreground_labels
from nnunetv2_ext.semisupervised.unlabelled import UNLABELLED_IMAGES, images_in_folder

MANIFEST_NAME = "pseudo_labels.json"


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
    unlabelled: Dict[str, List[str]] = field(default_factory=dict)
    """The unlabelled cases that were not selected -> their image files: they go to the new dataset's
    ``imagesUnlabeled/``, so that CPS (Pham et al., Table 5 rows 3-4) trains on the accepted pseudo-labels as
    labelled cases and on the rest as unlabelled input."""


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
    unlabelled = {}
    if selected and os.path.isdir(images_folder):
        # every unlabelled image of the folder that was not selected (nnU-Net naming CASE_0000<ending>)
        found, problems = images_in_folder(images_folder, ljson)
        if problems:
            raise PseudoLabelError(f"{len(problems)} unlabelled case(s) in {images_folder} are incomplete: "
                                   + "; ".join(problems[:5]))
        labelled_too = sorted(set(found) & set(lcases))
        if labelled_too:
            raise PseudoLabelError(f"{len(labelled_too)} case(s) of {images_folder} are labelled cases of "
                                   f"{os.path.basename(labelled)}: {labelled_too[:5]}")
        unlabelled = {c: f for c, f in found.items() if c not in images}
    splits = labelled_splits(labelled, list(lcases))
    if splits is not None:
        unknown = sorted({c for fold in splits for c in fold["train"] + fold["val"]} - set(lcases))
        if unknown:
            raise PseudoLabelError(f"the labelled dataset's splits name cases it does not have: {unknown[:5]}")
    return DatasetPlan(labelled, ljson, lcases, target, existing, images, splits, unlabelled)


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
        if plan.unlabelled:  # the cases not selected stay unlabelled input (CPS)
            os.makedirs(join(tmp, UNLABELLED_IMAGES))
            for case, files in plan.unlabelled.items():
                for i, f in enumerate(files):
                    _link_or_copy(f, join(tmp, UNLABELLED_IMAGES, f"{case}_{i:04d}{ending}"), copy)
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
                                  "num_unlabelled": len(plan.unlabelled), "manifest": MANIFEST_NAME}
        with open(join(tmp, "dataset.json"), "w", encoding="utf-8") as f:
            json.dump(djson, f, indent=1)
        if plan.splits is not None:
            splits = [{"train": list(fold["train"]) + list(selected), "val": list(fold["val"])}
                      for fold in plan.splits]
            with open(join(tmp, "splits_final.json"), "w", encoding="utf-8") as f:
                json.dump(splits, f, indent=1)
        manifest = dict(selection, labelled_dataset=os.path.basename(plan.labelled_folder),
                        labelled_cases=sorted(plan.labelled_cases), unlabelled_cases=sorted(plan.unlabelled),
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
