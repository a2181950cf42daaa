"""nnU-Net's training data loader with PNSS/HESS sampling.

Only *where* patches come from changes; loading, cropping, padding and augmentation are nnU-Net's own
(``nnUNetDataLoader.generate_train_batch`` runs unchanged). Per batch:

- main phase of epoch e: cases are drawn like nnU-Net draws them, but only among cases whose PNSS slab at r(e) is
  non-empty, and the patch centre along axis 0 is restricted to that slab (2d: the slice is in the slab; 3d: the
  patch's centre slice is). Foreground oversampling picks foreground voxels inside the slab.
- mini phase of epoch e: the samples are the hard units (case, slice) of the published plan; the patch is centred on
  that slice, and on a foreground voxel of that slice when it has one.

Each batch carries ``batch_index``, ``epoch``, ``phase`` and ``units`` (global unit index of each sample), which the
trainer uses to order batches and to attribute the training DSC.
"""
from __future__ import annotations

from collections import deque
from typing import Optional, Sequence

import numpy as np

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from nnunetv2_ext.sampling.hess import rank_slice
from nnunetv2_ext.sampling.pnss import PNSSSchedule
from nnunetv2_ext.sampling.shared_state import MAIN, BatchSchedule
from nnunetv2_ext.sampling.slice_table import SliceTable


def restrict_locations(class_locations: Optional[dict], z_start: int, z_stop: int) -> Optional[dict]:
    """nnU-Net's class_locations ((N, 4) arrays: channel, z, y, x) keeping only voxels with z in [z_start, z_stop)."""
    if class_locations is None:
        return None
    out = {}
    for key, locs in class_locations.items():
        locs = np.asarray(locs)
        out[key] = locs[(locs[:, 1] >= z_start) & (locs[:, 1] < z_stop)] if len(locs) else locs
    return out


class nnUNetDataLoaderPNSSHESS(nnUNetDataLoader):
    def __init__(self, data, batch_size: int, patch_size, final_patch_size, label_manager,
                 slice_table: SliceTable, pnss: Optional[PNSSSchedule], schedule: BatchSchedule,
                 rank_batch_sizes: Sequence[int] = None, rank: int = 0, **kwargs):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager, **kwargs)
        if list(self.indices) != list(slice_table.identifiers):
            raise ValueError("slice table and dataset list different training cases")
        self.slice_table = slice_table
        self.pnss = pnss
        self.schedule = schedule
        self.rank_columns = rank_slice(rank_batch_sizes or [batch_size], rank)
        self._slab_cache = {}
        self._pending = deque()
        self._units = []

    def slabs_for_epoch(self, epoch: int):
        """(start, stop) per case at r(epoch); all slices when PNSS is off."""
        if epoch not in self._slab_cache:
            r = 1.0 if self.pnss is None else self.pnss.ratio(epoch)
            self._slab_cache = {epoch: self.slice_table.slabs(r)}
        return self._slab_cache[epoch]

    def get_indices(self):
        b = self.schedule.claim()
        epoch, phase, it = self.schedule.locate(b)
        if phase == MAIN:
            start, stop = self.slabs_for_epoch(epoch)
            cases = np.random.choice(np.flatnonzero(stop > start), self.batch_size, replace=True)
            specs = [(int(c), int(start[c]), int(stop[c]), False) for c in cases]
        else:
            units = self.schedule.mini_plan_row(epoch, it)[self.rank_columns]
            cases, z = self.slice_table.case_and_slice(units)
            specs = [(int(c), int(s), int(s) + 1, True) for c, s in zip(cases, z)]
        self._pending = deque(specs)
        self._units = []
        self._meta = {"batch_index": b, "epoch": epoch, "phase": phase}
        return [self.slice_table.identifiers[c] for c, *_ in specs]

    def get_bbox(self, data_shape, force_fg, class_locations, overwrite_class=None, verbose=False):
        case, z_start, z_stop, is_replay = self._pending.popleft()
        locs = restrict_locations(class_locations, z_start, z_stop)
        if is_replay or (force_fg and locs is not None):
            # replay: aim at the slice's own foreground if it has any; main: oversampling only within the slab
            force_fg = locs is not None and any(len(v) for k, v in locs.items() if k != self.annotated_classes_key)
        lbs, ubs = super().get_bbox(data_shape, force_fg, locs, overwrite_class, verbose)
        pz = self.patch_size[0]
        if force_fg:
            centre = int(np.clip(lbs[0] + pz // 2, z_start, z_stop - 1))
        else:
            centre = np.random.randint(z_start, z_stop)
        lbs = list(lbs)
        ubs = list(ubs)
        lbs[0] = centre - pz // 2
        ubs[0] = lbs[0] + pz
        self._units.append(self.slice_table.unit(case, min(max(centre, 0), data_shape[0] - 1)))
        return lbs, ubs

    def generate_train_batch(self):
        batch = super().generate_train_batch()
        batch.update(self._meta)
        batch["units"] = np.asarray(self._units, dtype=np.int64)
        return batch
