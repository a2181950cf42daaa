"""The reference module + propagation applied to volumes (Pham et al. §2.2, Fig. 2): :func:`propagate_cases`.

Per case: the trained nnU-Net 2D model (the reference model) segments ``k`` slices spread uniformly over the volume
(nnU-Net's own preprocessing and sliding window, on a stack of just those slices); per label, the ``keep`` masks with
the largest areas become the references and that label's propagation model carries them through the volume
(:func:`~nnunetv2_ext.propagation.propagate.propagate_volume`); labels are merged by the highest probability above
0.5. A label that no reference slice shows falls back to the reference model's prediction of the whole volume for
that label - said per case in the log and in ``propagation_log.jsonl``, never silently. Output: ordinary nnU-Net
prediction files (the dataset's writer, the input's geometry) plus ``dataset.json``/``plans.json``, written to a
temporary folder and swapped in at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch

from nnunetv2_ext.propagation.data import NORMALISATION, dataset_reader, normalise_volume
from nnunetv2_ext.propagation.propagate import propagate_volume
from nnunetv2_ext.propagation.references import largest_masks, uniform_slices
from nnunetv2_ext.propagation.training import load_propagation_model

LOG_NAME = "propagation_log.jsonl"


def check_models(metas: Sequence[dict], dataset_json: dict, paths: Sequence[str]) -> None:
    """Each propagation model against the reference model's dataset: a label of the dataset with the same value,
    the dataset's channels, our normalisation, no label twice."""
    channels = len(dataset_json["channel_names"])
    labels = dataset_json.get("labels", {})
    seen = set()
    for meta, path in zip(metas, paths):
        name = meta["label"]
        if labels.get(name) != meta["label_value"]:
            raise ValueError(f"propagation model {path} was trained for label {name!r} = {meta['label_value']}; the "
                             f"reference model's dataset has labels {labels}")
        if meta["num_channels"] != channels:
            raise ValueError(f"propagation model {path} was trained on {meta['num_channels']} channel(s), the "
                             f"dataset has {channels}")
        if meta.get("normalisation") != NORMALISATION:
            raise ValueError(f"propagation model {path}: unknown normalisation {meta.get('normalisation')!r}")
        if name in seen:
            raise ValueError(f"two propagation models for label {name!r}")
        seen.add(name)


def input_cases(folder: str, ending: str, channels: int) -> List[Tuple[str, List[str]]]:
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder, \
        get_identifiers_from_splitted_dataset_folder
    ids = [str(i) for i in get_identifiers_from_splitted_dataset_folder(folder, ending)]
    if not ids:
        raise ValueError(f"{folder} holds no images ending in {ending} (nnU-Net naming CASE_0000{ending})")
    lists = create_lists_from_splitted_dataset_folder(folder, ending, ids, 1)
    for case, files in zip(ids, lists):
        if len(files) != channels:
            raise ValueError(f"case {case}: {len(files)} channel file(s), the model expects {channels}")
    return list(zip(ids, lists))


def _image_shape(reader, files: Sequence[str]) -> tuple:
    """(Z, Y, X) of a case as the dataset's reader returns it: from the header alone for nnU-Net's SimpleITK reader,
    else by reading the image."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    if type(reader) is SimpleITKIO:
        import SimpleITK as sitk
        info = sitk.ImageFileReader()
        info.SetFileName(files[0])
        info.ReadImageInformation()
        return tuple(info.GetSize()[::-1])
    return tuple(reader.read_images(files)[0].shape[1:])


def propagate_cases(input_folder: str, output_folder: str, model_folder: str, folds, propagation_models: Sequence[str],
                    k: int = 5, keep: int = 2, device: str = "cpu", use_mirroring: bool = True,
                    checkpoint: str = "checkpoint_final.pth", log: Callable[[str], None] = print) -> List[dict]:
    """Checks everything (k, keep, every case's slice count, the models), then predicts every case into
    ``output_folder`` (written atomically). Returns the per-case records."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2_ext.io_atomic import write_folder_atomically

    with open(os.path.join(model_folder, "dataset.json"), encoding="utf-8") as f:
        dataset_json = json.load(f)
    ending = dataset_json["file_ending"]
    dev = torch.device(device)
    nets, metas = zip(*[load_propagation_model(p, dev) for p in propagation_models]) if propagation_models else ((), ())
    if not propagation_models:
        raise ValueError("give at least one propagation model (-pm)")
    check_models(metas, dataset_json, propagation_models)
    uniform_slices(10 ** 9, k)  # k itself (an integer >= 1)
    largest_masks({}, keep)      # keep itself
    cases = input_cases(input_folder, ending, len(dataset_json["channel_names"]))
    reader = dataset_reader(dataset_json, cases[0][1][0])
    shapes = {}
    for case, files in cases:  # every case's slice count before anything is predicted or written
        shapes[case] = _image_shape(reader, files)
        try:
            uniform_slices(int(shapes[case][0]), k)
        except ValueError as e:
            raise ValueError(f"case {case}: {e}") from None

    predictor = nnUNetPredictor(use_mirroring=use_mirroring, device=dev, verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint)
    if len(predictor.configuration_manager.patch_size) != 2:
        raise ValueError(f"the reference model {model_folder} is not a 2D model (patch "
                         f"{predictor.configuration_manager.patch_size}): the reference module segments single slices")

    def write(tmp: str) -> List[dict]:
        records = []
        for case, files in cases:
            records.append(_one_case(case, files, tmp, reader, predictor, nets, metas, k, keep, dev, ending, log))
        with open(os.path.join(tmp, LOG_NAME), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        for name in ("dataset.json", "plans.json"):
            shutil.copy(os.path.join(model_folder, name), os.path.join(tmp, name))
        return records

    return write_folder_atomically(output_folder, write, "nnUNetv2_ext_propagate")


def _one_case(case, files, out_folder, reader, predictor, nets, metas, k, keep, device, ending, log) -> dict:
    start = time.time()
    data, props = reader.read_images(files)
    z = data.shape[1]
    refs = uniform_slices(z, k)
    reference = predictor.predict_single_npy_array(data[:, refs], props)
    reference_seconds = time.time() - start
    volume = normalise_volume(data)
    full = None
    best = np.zeros(data.shape[1:], np.float32)
    out = np.zeros(data.shape[1:], np.uint8)
    record = {"case": case, "slices": z, "k": k, "reference_slices": refs, "labels": {}}
    for net, meta in zip(nets, metas):
        value = meta["label_value"]
        masks = {r: reference[i] == value for i, r in enumerate(refs)}
        areas = {r: int(m.sum()) for r, m in masks.items()}
        kept = largest_masks(areas, keep)
        if kept:
            prob = propagate_volume(net, volume, {r: masks[r] for r in kept}, device)
            how = f"propagated from slices {kept}"
        else:
            if full is None:
                full = predictor.predict_single_npy_array(data, props)
            prob = (full == value).astype(np.float32)
            how = "fallback: the reference model's full prediction"
            log(f"WARNING: propagation: {case}: no reference slice (k = {k}: {refs}) shows label "
                f"{meta['label']!r}; the reference model's full prediction of that label is used")
        take = (prob > 0.5) & (prob > best)
        out[take], best[take] = value, prob[take]
        record["labels"][meta["label"]] = {"areas": {str(r): a for r, a in areas.items()}, "kept": kept,
                                           "fallback": not kept, "voxels": int((out == value).sum())}
        log(f"propagation: {case}: label {meta['label']!r} {how}")
    reader.write_seg(out, os.path.join(out_folder, case + ending), props)
    record.update({"reference_seconds": round(reference_seconds, 2), "seconds": round(time.time() - start, 2),
                   "full_prediction_run": full is not None})
    return record
