"""Unlabelled cases of an nnU-Net dataset: where they are declared and how they are preprocessed for training.

Declaration (in the raw dataset folder ``$nnUNet_raw/DatasetXXX_Name``), read in this order:

1. ``imagesUnlabeled/CASE_0000.ext`` ... ``CASE_000{C-1}.ext``: nnU-Net's naming, one file per channel, the
   dataset's file ending. This is what ``nnunetv2_ext_convert_flare22 --write-unlabeled`` writes, and what
   ``nnunetv2_ext.semisupervised.phantom`` writes.
2. ``unlabeled_cases.json`` (the FLARE22 converter's list): ``{"cases": {"ID": {"file": path relative to the
   dataset folder or null, "source": absolute path}}}``; ``file`` is used when set, else ``source`` (one file, so
   only for single-channel datasets). Cases already found in 1. are not read twice.

A case that is also a labelled training case, or lacks a channel, is an error naming it.

Preprocessing (:func:`preprocess_unlabelled`) runs nnU-Net's own preprocessor of the configuration (the plans'
``preprocessor_name``: same transpose, crop, normalisation and resampling as the labelled cases) without a
segmentation, and stores each case with the dataset's storage class into ``<data_identifier>_unlabelled`` beside
the labelled preprocessed data (always nnU-Net's blosc2 format: :data:`UNLABELLED_DATASET_CLASS`). Cases already
there are skipped (resumable); ``<data_identifier>_unlabelled.json`` beside it holds a fingerprint of the
configuration and intensity properties, and the folder is rebuilt when the plans change.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

from nnunetv2_ext.semisupervised.errors import SemiSupervisedError

UNLABELLED_IMAGES = "imagesUnlabeled"
UNLABELLED_LIST = "unlabeled_cases.json"


class UnlabelledCasesError(SemiSupervisedError):
    """No unlabelled cases, or badly declared ones; the message names the case and says how to declare them."""


HOW_TO_DECLARE = (f"declare unlabelled cases in the raw dataset folder: images in {UNLABELLED_IMAGES}/ "
                  f"(CASE_0000<file ending>, one file per channel; nnunetv2_ext_convert_flare22 --write-unlabeled "
                  f"writes them) or listed in {UNLABELLED_LIST}")


def images_in_folder(folder: str, dataset_json: dict) -> Tuple[Dict[str, List[str]], List[str]]:
    """(case -> image files, one per channel; problems) of the images in ``folder`` in nnU-Net's naming
    (CASE_0000<file ending>, one file per channel); a case lacking a channel is a problem, not a case."""
    ending = dataset_json["file_ending"]
    num_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {0: "x"})))
    cases: Dict[str, List[str]] = {}
    problems: List[str] = []
    if os.path.isdir(folder):
        names = set(os.listdir(folder))
        for name in sorted(names):
            if name.endswith("_0000" + ending):
                case = name[:-len("_0000" + ending)]
                files = [join(folder, f"{case}_{ch:04d}{ending}") for ch in range(num_channels)]
                lacking = [os.path.basename(f) for f in files if os.path.basename(f) not in names]
                if lacking:
                    problems.append(f"{case}: {', '.join(lacking)} missing in {folder}")
                else:
                    cases[case] = files
    return cases, problems


def find_unlabelled_cases(raw_dataset_folder: str, dataset_json: dict,
                          labelled_cases: Sequence[str] = ()) -> Dict[str, List[str]]:
    """Case identifier -> image files (one per channel) of the declared unlabelled cases (module docstring)."""
    ending = dataset_json["file_ending"]
    num_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {0: "x"})))
    cases, problems = images_in_folder(join(raw_dataset_folder, UNLABELLED_IMAGES), dataset_json)
    listing = join(raw_dataset_folder, UNLABELLED_LIST)
    if isfile(listing):
        for case, entry in sorted(load_json(listing).get("cases", {}).items()):
            if case in cases:
                continue
            if entry.get("file"):
                path = join(raw_dataset_folder, entry["file"])
                files = [path.replace("_0000" + ending, f"_{ch:04d}{ending}") for ch in range(num_channels)]
            elif num_channels == 1 and entry.get("source"):
                files = [entry["source"]]
            else:
                problems.append(f"{case}: {UNLABELLED_LIST} gives no converted file for this {num_channels}-channel "
                                f"dataset (convert with --write-unlabeled)")
                continue
            lacking = [f for f in files if not isfile(f)]
            if lacking:
                problems.append(f"{case}: {', '.join(lacking)} not found ({UNLABELLED_LIST})")
            else:
                cases[case] = files
    if problems:
        raise UnlabelledCasesError(f"{len(problems)} unlabelled case(s) are badly declared: " +
                                   "; ".join(problems[:5]))
    both = sorted(set(cases) & set(labelled_cases))
    if both:
        raise UnlabelledCasesError(f"{len(both)} case(s) are declared unlabelled but are labelled training cases: "
                                   f"{both[:5]}")
    return cases


def dataset_class():
    """The storage class of the preprocessed unlabelled cases (nnU-Net's blosc2 dataset)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    return nnUNetDatasetBlosc2


def unlabelled_folder(preprocessed_dataset_folder: str) -> str:
    """``.../DatasetXXX/<data_identifier>_unlabelled`` for the configuration folder ``.../<data_identifier>``."""
    return os.path.normpath(preprocessed_dataset_folder) + "_unlabelled"


def preprocessed_cases(folder: str) -> List[str]:
    """Cases completely preprocessed in ``folder`` (the .pkl is written last)."""
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".pkl"))


def configuration_fingerprint(plans: dict, configuration: str, dataset_json: dict) -> str:
    """Hash of what preprocessing depends on (a change means the stored cases are stale)."""
    relevant = {"configuration": plans["configurations"][configuration],
                "intensity": plans.get("foreground_intensity_properties_per_channel"),
                "transpose": plans.get("transpose_forward"), "channels": dataset_json.get("channel_names"),
                "reader": plans.get("image_reader_writer")}
    return hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def _preprocess_one(args) -> Optional[str]:
    case, files, out_folder, plans, configuration, dataset_json = args
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    try:
        pm = PlansManager(plans)
        cm = pm.get_configuration(configuration)
        preprocessor = cm.preprocessor_class(verbose=False)
        data, seg, properties = preprocessor.run_case(files, None, pm, cm, dataset_json)
        properties["class_locations"] = {}  # no labels: the CPS loader draws random patches only
        data = data.astype(np.float32, copy=False)
        seg = seg.astype(np.int8, copy=False)  # nnU-Net's non-zero mask (-1 outside), never used as a target
        blocks, chunks = comp_blosc2_params(data.shape, tuple(cm.patch_size), data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, tuple(cm.patch_size), seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, properties, join(out_folder, case), chunks=chunks, blocks=blocks,
                                      chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    except Exception as e:  # name the case
        return f"{case}: {type(e).__name__}: {e}"
    return None


def preprocess_unlabelled(cases: Dict[str, List[str]], out_folder: str, plans: dict, configuration: str,
                          dataset_json: dict, num_processes: int = 1, log=print) -> List[str]:
    """Preprocesses the cases not yet in ``out_folder``; returns all cases there. Raises UnlabelledCasesError."""
    fingerprint = configuration_fingerprint(plans, configuration, dataset_json)
    stamp = os.path.normpath(out_folder) + ".json"
    if os.path.isdir(out_folder) and (not isfile(stamp) or load_json(stamp).get("fingerprint") != fingerprint):
        log(f"unlabelled cases in {out_folder} were preprocessed with other plans: preprocessing them again")
        shutil.rmtree(out_folder)
    os.makedirs(out_folder, exist_ok=True)
    with open(stamp, "w", encoding="utf-8") as f:
        json.dump({"fingerprint": fingerprint, "configuration": configuration}, f)
    done = set(preprocessed_cases(out_folder))
    todo = [(c, files, out_folder, plans, configuration, dataset_json) for c, files in sorted(cases.items())
            if c not in done]
    if todo:
        log(f"preprocessing {len(todo)} unlabelled case(s) into {out_folder} ({len(done)} done before)")
        if num_processes > 1 and len(todo) > 1:
            with multiprocessing.get_context("spawn").Pool(min(num_processes, len(todo))) as pool:
                errors = [e for e in pool.map(_preprocess_one, todo, chunksize=1) if e]
        else:
            errors = [e for e in map(_preprocess_one, todo) if e]
        if errors:
            raise UnlabelledCasesError(f"{len(errors)} unlabelled case(s) could not be preprocessed; first: "
                                       f"{errors[0]}")
    return preprocessed_cases(out_folder)
