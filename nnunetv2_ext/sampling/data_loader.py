"""nnU-Net's training data loader with PNSS/HESS sampling.

Only *where* patches come from changes; loading, cropping, padding and augmentation are nnU-Net's own
(``nnUNetDataLoader.generate_train_batch`` runs unchanged). Per batch:

- main phase of epoch e: :class:`~nnunetv2_ext.sampling.sampler.MainSampler` draws each sample from D^{r(e)} (or,
  for the far-negative share, from the dropped slices), with r(e) from the precomputed epoch plan;
- mini phase of epoch e: the samples are the hard units (case, slice) of the published plan; the patch is centred on
  that slice, and on a foreground voxel of that slice when it has one.

In 2d the sample is the slice; in 3d it is the z position of the patch centre. Each batch carries ``batch_index``,
``epoch``, ``phase`` and ``units`` (global unit index of each sample), which the trainer uses to order batches and to
attribute the training DSC, ``far`` (which samples are far negatives) and ``flip`` (which were mirrored).

:class:`nnUNetDataLoaderUnits` is the common base: samples drawn from a fixed :class:`UnitPool` (hard-sample
pre-training), flipped copies mirrored along the last axis after nnU-Net's augmentation.
"""
from __future__ import annotations

from collections import deque
from typing import List, Optional, Sequence, Tuple

import numpy as np

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from nnunetv2_ext.sampling.hess import rank_slice
from nnunetv2_ext.sampling.sampler import SLAB, SLICE_FG, MainSampler, SampleSpec, UnitPool
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


class nnUNetDataLoaderUnits(nnUNetDataLoader):
    """nnU-Net's loader drawing each sample from a pool of units (:class:`UnitPool`) that stays fixed for the loader's
    life (hard-sample pre-training builds a new loader when the pool changes). Subclasses override :meth:`_specs`."""

    def __init__(self, data, batch_size: int, patch_size, final_patch_size, label_manager, slice_table: SliceTable,
                 sampler_mode: str, pool: Optional[UnitPool] = None, far_share: float = 0.0, **kwargs):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager, **kwargs)
        if list(self.indices) != list(slice_table.identifiers):
            raise ValueError("slice table and dataset list different training cases")
        self.slice_table = slice_table
        self.sampler = MainSampler(slice_table, sampler_mode, far_share)
        self.pool = pool
        self._pending = deque()
        self._units = []
        self._meta = {}

    def _specs(self) -> Tuple[List[SampleSpec], dict]:
        oversample = [bool(self.get_do_oversample(j)) for j in range(self.batch_size)]
        return self.sampler.draw_from(self.pool, oversample), {}

    def get_indices(self):
        specs, meta = self._specs()
        self._pending = deque(specs)
        self._units = []
        self._meta = dict(meta, far=np.array([s.far for s in specs]), flip=np.array([s.flip for s in specs]))
        return [self.slice_table.identifiers[s.case] for s in specs]

    def get_bbox(self, data_shape, force_fg, class_locations, overwrite_class=None, verbose=False):
        # nnU-Net's force_fg is ignored: the spec (drawn in get_indices, with the same oversampling rule) decides
        spec: SampleSpec = self._pending.popleft()
        locs = restrict_locations(class_locations, spec.z_start, spec.z_stop)
        has_fg = locs is not None and any(len(v) for k, v in locs.items() if k != self.annotated_classes_key)
        force_fg = has_fg and (spec.force_fg if spec.how == SLAB else spec.how == SLICE_FG)
        lbs, ubs = super().get_bbox(data_shape, force_fg, locs, overwrite_class, verbose)
        pz = self.patch_size[0]
        if spec.z_stop - spec.z_start == 1:
            centre = spec.z_start
        elif force_fg:
            centre = int(np.clip(lbs[0] + pz // 2, spec.z_start, spec.z_stop - 1))
        else:
            centre = np.random.randint(spec.z_start, spec.z_stop)
        lbs, ubs = list(lbs), list(ubs)
        lbs[0] = centre - pz // 2
        ubs[0] = lbs[0] + pz
        self._units.append(self.slice_table.unit(spec.case, min(max(centre, 0), data_shape[0] - 1)))
        return lbs, ubs

    def generate_train_batch(self):
        batch = super().generate_train_batch()
        flip = self._meta["flip"]
        if flip.any():  # mirrored after augmentation: the same for every deep-supervision scale
            batch["data"][flip] = batch["data"][flip].flip(-1)
            targets = batch["target"] if isinstance(batch["target"], list) else [batch["target"]]
            for t in targets:
                t[flip] = t[flip].flip(-1)
        batch.update(self._meta)
        batch["units"] = np.asarray(self._units, dtype=np.int64)
        return batch


class nnUNetDataLoaderPNSSHESS(nnUNetDataLoaderUnits):
    def __init__(self, data, batch_size: int, patch_size, final_patch_size, label_manager,
                 slice_table: SliceTable, ratios: Sequence[float], sampler_mode: str, far_share: float,
                 schedule: BatchSchedule, rank_batch_sizes: Sequence[int] = None, rank: int = 0, **kwargs):
        """``ratios[e]``: r of nnU-Net epoch e (:attr:`EpochPlan.r`)."""
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager, slice_table, sampler_mode,
                         far_share=far_share, **kwargs)
        self.ratios = np.asarray(ratios, dtype=float)
        self.schedule = schedule
        self.rank_columns = rank_slice(rank_batch_sizes or [batch_size], rank)

    def _specs(self):
        b = self.schedule.claim(self.thread_id, self.number_of_threads_in_multithreaded)
        epoch, phase, it = self.schedule.locate(b)
        if phase == MAIN:
            oversample = [bool(self.get_do_oversample(j)) for j in range(self.batch_size)]
            # workers prefetch past the last epoch; those batches are never trained
            specs = self.sampler.draw(float(self.ratios[min(epoch, len(self.ratios) - 1)]), oversample)
        else:
            units = self.schedule.mini_plan_row(epoch, it)[self.rank_columns]
            cases, z = self.slice_table.case_and_slice(units)
            specs = [SampleSpec(int(c), int(s), int(s) + 1, SLICE_FG) for c, s in zip(cases, z)]
        return specs, {"batch_index": b, "epoch": epoch, "phase": phase, "worker": self.thread_id}
