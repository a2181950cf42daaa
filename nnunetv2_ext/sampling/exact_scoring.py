"""The paper's scoring pass: the DSC (Eq. 1) of every selected unit, without augmentation.

Each unit is scored on one patch of the training patch size: in 2d the unit's slice, in 3d the patch centred on the
unit's z; in-plane the patch is centred on the case's foreground (the mean of nnU-Net's sampled foreground
locations; the image centre if the case has none), so with nnU-Net's usual 2d patch (the whole slice) the score is
the slice's DSC. The pass is as cheap as a forward pass can be: one read per case, all of a case's 2d slices cropped
in one call, batches twice the training batch size (no gradients are kept), the caller's network without deep
supervision and with mixed precision on CUDA.

Trainer-free: the caller passes the dataset object, nnU-Net's validation transforms and a ``predict`` function
(a batch of images on the device -> full-resolution logits).
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import numpy as np
import torch
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

from nnunetv2_ext.sampling.distributed import gather_scores, rank_and_world
from nnunetv2_ext.sampling.hess import per_sample_dice
from nnunetv2_ext.sampling.slice_table import SliceTable


def _foreground_centre(properties: dict, spatial_shape) -> np.ndarray:
    locs = [np.asarray(v) for v in properties.get("class_locations", {}).values() if len(v)]
    if not locs:
        return np.asarray(spatial_shape[1:]) // 2
    return np.concatenate(locs)[:, 2:].mean(0).round().astype(int)


def _patches_of_case(data, seg, z: np.ndarray, patch: List[int], centre_yx: np.ndarray):
    """(images, segs) for the units at slices ``z`` of one case, as float / int16 tensors without the batch axis."""
    yx = [[int(c) - p // 2, int(c) - p // 2 + p] for c, p in zip(centre_yx, patch[-2:])]
    if len(patch) == 2:  # one crop for all slices of the case, then index them
        z0, z1 = int(z.min()), int(z.max()) + 1
        img = crop_and_pad_nd(data, [[z0, z1]] + yx, 0)
        sg = crop_and_pad_nd(seg, [[z0, z1]] + yx, -1)
        for zz in z:
            yield torch.from_numpy(np.ascontiguousarray(img[:, zz - z0])).float(), \
                torch.from_numpy(np.ascontiguousarray(sg[:, zz - z0])).to(torch.int16)
    else:
        pz = patch[0]
        for zz in z:
            box = [[int(zz) - pz // 2, int(zz) - pz // 2 + pz]] + yx
            yield torch.from_numpy(crop_and_pad_nd(data, box, 0)).float(), \
                torch.from_numpy(crop_and_pad_nd(seg, box, -1)).to(torch.int16)


@torch.inference_mode()
def score_units(units: np.ndarray, table: SliceTable, dataset, transforms, predict: Callable, patch_size,
                batch_size: int, device: torch.device, has_regions: bool, ignore_label) -> Tuple[np.ndarray, np.ndarray]:
    """Scores ``units`` (global unit indices); returns (units, dsc) in the order they were scored."""
    units = np.asarray(units, np.int64)
    cases, slices = table.case_and_slice(units)
    order = np.argsort(cases, kind="stable")
    patch = [int(p) for p in patch_size]
    images: List[torch.Tensor] = []
    targets: List[torch.Tensor] = []
    out: List[torch.Tensor] = []

    def flush():
        if images:
            x = torch.stack(images).to(device, non_blocking=True)
            t = torch.stack(targets).to(device, non_blocking=True)
            out.append(per_sample_dice(predict(x), t, has_regions, ignore_label).float().cpu())
            images.clear()
            targets.clear()

    for c in np.unique(cases):
        data, seg, _, props = dataset.load_case(table.identifiers[c])
        for img, sg in _patches_of_case(data, seg, slices[cases == c], patch, _foreground_centre(props, data.shape[1:])):
            s = transforms(image=img, segmentation=sg)
            images.append(s["image"])
            targets.append(s["segmentation"])
            if len(images) == batch_size:
                flush()
    flush()
    dsc = torch.cat(out).numpy() if out else np.zeros(0, np.float32)
    return units[order], dsc


def exact_scores(trainer, table: SliceTable, units: np.ndarray):
    """DSC (Eq. 1) of every unit without augmentation (:func:`score_units`), deep supervision off, batches of twice
    the training batch size; DDP ranks take every world-th unit and exchange the results."""
    rank, world = rank_and_world()
    lm = trainer.label_manager
    transforms = trainer.get_validation_transforms(None, is_cascaded=trainer.is_cascaded,
                                                   foreground_labels=lm.foreground_labels,
                                                   regions=lm.foreground_regions if lm.has_regions else None,
                                                   ignore_label=lm.ignore_label)
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, list(table.identifiers),
                                    folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)

    def predict(x):
        with autocast(trainer.device.type, enabled=True) if trainer.device.type == "cuda" else dummy_context():
            return trainer.network(x)

    trainer.network.eval()
    trainer.set_deep_supervision_enabled(False)
    try:
        units, dsc = score_units(np.asarray(units)[rank::world], table, dataset, transforms, predict,
                                 trainer.configuration_manager.patch_size, 2 * trainer.batch_size, trainer.device,
                                 lm.has_regions, lm.ignore_label)
    finally:
        trainer.set_deep_supervision_enabled(trainer.enable_deep_supervision)
        trainer.network.train()
    return gather_scores(units, dsc)
