"""Which (case, slice) each sample of a main-phase batch comes from: pure numpy, used inside the workers.

A sample is a :class:`SampleSpec`: the case, the range its patch centre may take along axis 0, and how the
in-plane position is chosen:

- ``SLAB``: nnU-Net's own choice inside the case's slab (random, or centred on a foreground voxel of the slab when
  the sample is oversampled); the ``"case"`` mode.
- ``SLICE``: exactly this slice, in-plane position random (nnU-Net's random crop); uniform draws from D^r and far
  negatives.
- ``SLICE_FG``: exactly this slice, centred on one of its foreground voxels when it has any; oversampled samples of
  ``"slice_oversample"`` and HESS replays.

Modes (``SamplingParameters.sampling``), for the samples that are not far negatives:

- ``"slice"`` (the paper): a unit drawn uniformly from D^r, ``SLICE``; nnU-Net's oversampling is off.
- ``"slice_oversample"``: as ``"slice"``, but samples nnU-Net would oversample are drawn uniformly from the selected
  slices that contain foreground, ``SLICE_FG``.
- ``"case"``: nnU-Net's case-uniform draw among cases with a non-empty slab, ``SLAB`` (oversampling inside the slab).

Far negatives: each sample that is not oversampled is, with probability ``far_share``, drawn uniformly from the
slices PNSS has dropped (none at r = 1), ``SLICE``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunetv2_ext.sampling.slice_table import SliceTable

SLAB, SLICE, SLICE_FG = "slab", "slice", "slice_fg"


@dataclass(frozen=True)
class SampleSpec:
    case: int
    z_start: int
    z_stop: int
    how: str
    force_fg: bool = False
    """SLAB only: nnU-Net's oversampling decision (a foreground voxel of the slab, if it has one)."""
    far: bool = False
    """Drawn from the slices PNSS has dropped (the far-negative share)."""
    flip: bool = False
    """Mirrored along the last (x) axis after nnU-Net's augmentation (hard-sample pre-training's flipped copies)."""


@dataclass
class UnitPool:
    """What one batch is drawn from. ``selected`` may list a unit twice (e.g. as is and flipped); ``flip`` says which
    entries are drawn mirrored along the last (x) axis. ``dropped``: units for the far-negative share. The slabs
    (``start``, ``stop``, ``cases``) serve the ``"case"`` mode only."""
    selected: np.ndarray
    flip: np.ndarray
    dropped: np.ndarray
    positive: np.ndarray
    """Indices into ``selected`` of the entries whose slice contains foreground."""
    start: Optional[np.ndarray] = None
    stop: Optional[np.ndarray] = None
    cases: Optional[np.ndarray] = None

    @classmethod
    def from_units(cls, table: SliceTable, units: np.ndarray, flip: Optional[np.ndarray] = None,
                   dropped: Optional[np.ndarray] = None) -> "UnitPool":
        units = np.asarray(units, np.int64)
        flip = np.zeros(len(units), bool) if flip is None else np.asarray(flip, bool)
        return cls(units, flip, np.zeros(0, np.int64) if dropped is None else np.asarray(dropped, np.int64),
                   np.flatnonzero(table.positive[units]))

    @classmethod
    def pnss(cls, table: SliceTable, r: float) -> "UnitPool":
        """D^r (Eq. 6-7) with its slabs; the far negatives are the units PNSS has dropped."""
        mask = table.selected_mask(r)
        pool = cls.from_units(table, np.flatnonzero(mask), dropped=np.flatnonzero(~mask))
        pool.start, pool.stop = table.slabs(r)
        pool.cases = np.flatnonzero(pool.stop > pool.start)
        return pool


class MainSampler:
    def __init__(self, table: SliceTable, mode: str, far_share: float = 0.0):
        self.table = table
        self.mode = mode
        self.far_share = float(far_share)
        self._pools: Dict[float, UnitPool] = {}

    def pools(self, r: float) -> UnitPool:
        if r not in self._pools:
            self._pools = {r: UnitPool.pnss(self.table, r)}
        return self._pools[r]

    def _unit_spec(self, unit: int, how: str, far: bool = False, flip: bool = False) -> SampleSpec:
        case, z = self.table.case_and_slice(np.array([unit]))
        return SampleSpec(int(case[0]), int(z[0]), int(z[0]) + 1, how, far=far, flip=flip)

    def draw(self, r: float, oversample: Sequence[bool], rng=np.random) -> List[SampleSpec]:
        """One batch from D^r: ``oversample[j]`` is nnU-Net's foreground-oversampling decision for sample j."""
        return self.draw_from(self.pools(r), oversample, rng)

    def draw_from(self, p: UnitPool, oversample: Sequence[bool], rng=np.random) -> List[SampleSpec]:
        specs = []
        for force_fg in oversample:
            if not (force_fg and self.mode != "slice") and len(p.dropped) and rng.uniform() < self.far_share:
                specs.append(self._unit_spec(int(p.dropped[rng.randint(len(p.dropped))]), SLICE, far=True))
            elif self.mode == "case":
                c = int(p.cases[rng.randint(len(p.cases))])
                specs.append(SampleSpec(c, int(p.start[c]), int(p.stop[c]), SLAB, bool(force_fg)))
            elif force_fg and self.mode == "slice_oversample" and len(p.positive):
                i = int(p.positive[rng.randint(len(p.positive))])
                specs.append(self._unit_spec(int(p.selected[i]), SLICE_FG, flip=bool(p.flip[i])))
            else:
                i = rng.randint(len(p.selected))
                specs.append(self._unit_spec(int(p.selected[i]), SLICE, flip=bool(p.flip[i])))
        return specs
