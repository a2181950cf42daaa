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
from typing import Dict, List, Sequence

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


@dataclass
class _Pools:
    start: np.ndarray
    stop: np.ndarray
    cases: np.ndarray       # cases with a non-empty slab
    selected: np.ndarray    # unit indices of D^r
    dropped: np.ndarray     # unit indices outside D^r (far negatives)
    positive: np.ndarray    # unit indices of D^r that contain foreground


class MainSampler:
    def __init__(self, table: SliceTable, mode: str, far_share: float):
        self.table = table
        self.mode = mode
        self.far_share = float(far_share)
        self._pools: Dict[float, _Pools] = {}

    def pools(self, r: float) -> _Pools:
        if r not in self._pools:
            start, stop = self.table.slabs(r)
            mask = self.table.selected_mask(r)
            self._pools = {r: _Pools(start, stop, np.flatnonzero(stop > start), np.flatnonzero(mask),
                                     np.flatnonzero(~mask), np.flatnonzero(mask & self.table.positive))}
        return self._pools[r]

    def _unit_spec(self, unit: int, how: str, far: bool = False) -> SampleSpec:
        case, z = self.table.case_and_slice(np.array([unit]))
        return SampleSpec(int(case[0]), int(z[0]), int(z[0]) + 1, how, far=far)

    def draw(self, r: float, oversample: Sequence[bool], rng=np.random) -> List[SampleSpec]:
        """One batch: ``oversample[j]`` is nnU-Net's foreground-oversampling decision for sample j."""
        p = self.pools(r)
        specs = []
        for force_fg in oversample:
            if not (force_fg and self.mode != "slice") and len(p.dropped) and rng.uniform() < self.far_share:
                specs.append(self._unit_spec(int(p.dropped[rng.randint(len(p.dropped))]), SLICE, far=True))
            elif self.mode == "case":
                c = int(p.cases[rng.randint(len(p.cases))])
                specs.append(SampleSpec(c, int(p.start[c]), int(p.stop[c]), SLAB, bool(force_fg)))
            elif force_fg and self.mode == "slice_oversample" and len(p.positive):
                specs.append(self._unit_spec(int(p.positive[rng.randint(len(p.positive))]), SLICE_FG))
            else:
                specs.append(self._unit_spec(int(p.selected[rng.randint(len(p.selected))]), SLICE))
        return specs
