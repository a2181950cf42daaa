"""nnU-Net data loader whose foreground patches hold the whole organ box of the case (two-stage training).

A two-stage method finds the organ box on the whole slice / volume. It trains on nnU-Net's patches, so the patch has
to contain the organ's whole box (plus the margin K) for the box found in the patch to be the whole-image box. nnU-Net
centres a foreground patch on a random foreground voxel, which cuts a larger organ more often than not.
:class:`OrganCentredDataLoader` changes only that placement, and only for the patches nnU-Net forces to hold
foreground:

1. pick a random voxel of the organ labels (as nnU-Net picks a voxel of a random class) - in 2d this picks the slice;
2. take the organ box of the whole case (2d: of that slice) from the foreground locations nnU-Net's preprocessing
   stored per case (``class_locations``, up to 10,000 sampled voxels per label; no image data is read);
3. place the final patch uniformly at random among the positions that hold that box grown by K on every axis where
   it fits (where it does not fit: centred on the chosen voxel, as nnU-Net does).

Everything happens in the worker processes from the case's stored properties; there is no state that changes during
training. The network still computes its crop box from the (augmented) target it receives; the trainer counts the
patches whose organ touches the patch border, so a user can see how often the box was cut.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


class OrganCentredDataLoader(nnUNetDataLoader):
    """nnUNetDataLoader with organ-box placement of the foreground patches (see the module docstring).

    Extra args: ``organ_labels`` (labels whose union is the organ, e.g. (1, 2) = organ + tumour), ``margin`` (K
    voxels per axis of the final patch: 2 values for 2d, 3 for 3d)."""

    def __init__(self, *args, organ_labels: Sequence[int] = (1, 2), margin: Sequence[int] = (0, 0, 0), **kwargs):
        super().__init__(*args, **kwargs)
        self.organ_labels = tuple(int(label) for label in organ_labels)
        margin = [int(m) for m in margin]
        self.margin = np.array([0, *margin] if self.patch_size_was_2d else margin, dtype=int)
        if len(self.margin) != len(self.patch_size):
            raise ValueError(f"margin {margin} does not fit the patch {tuple(self.final_patch_size)}")

    def get_bbox(self, data_shape, force_fg: bool, class_locations, overwrite_class=None, verbose: bool = False):
        if not force_fg or not class_locations:
            return super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)
        locations = [np.asarray(class_locations[label]) for label in self.organ_labels
                     if label in class_locations and len(class_locations[label])]
        if not locations:
            return super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)
        voxels = np.concatenate(locations)[:, 1:]  # drop the channel column
        chosen = voxels[np.random.randint(len(voxels))]
        if self.patch_size_was_2d:
            voxels = voxels[voxels[:, 0] == chosen[0]]
        box_lo, box_hi = voxels.min(0) - self.margin, voxels.max(0) + 1 + self.margin

        dim = len(data_shape)
        need_to_pad = self.need_to_pad.copy()
        for d in range(dim):
            if need_to_pad[d] + data_shape[d] < self.patch_size[d]:
                need_to_pad[d] = self.patch_size[d] - data_shape[d]
        lbs = [-need_to_pad[d] // 2 for d in range(dim)]
        ubs = [data_shape[d] + need_to_pad[d] // 2 + need_to_pad[d] % 2 - self.patch_size[d] for d in range(dim)]

        bbox_lbs = []
        for d in range(dim):
            final, initial = int(self.final_patch_size[d]), int(self.patch_size[d])
            offset = (initial - final) // 2  # the final patch is the centre of the (larger) initial one
            if box_hi[d] - box_lo[d] <= final:
                final_lb = np.random.randint(box_hi[d] - final, box_lo[d] + 1)
            else:
                final_lb = chosen[d] - final // 2
            bbox_lbs.append(int(np.clip(final_lb - offset, lbs[d], max(lbs[d], ubs[d]))))
        return bbox_lbs, [lb + int(p) for lb, p in zip(bbox_lbs, self.patch_size)]
