"""The paper's epochs on nnU-Net's clock: r and the HESS rounds for every nnU-Net epoch, computed before training.

Huang et al. count L(alpha, beta) in *their* epochs: one epoch is one pass over the currently selected slices D^r.
nnU-Net's epoch is a fixed number of iterations (250) whatever the dataset size. We convert at nnU-Net epoch
boundaries (``epoch_unit = "pass"``):

- every nnU-Net epoch draws ``S = iterations x global batch size`` samples from D^{r(e)}, so it advances the pass
  counter by ``S / |D^{r(e)}|``; the counter before epoch e is ``P_e = sum_{t < e} S / |D^{r(t)}|``;
- the paper's epoch during nnU-Net epoch e is ``p(e) = floor(P_e)``, and ``r(e) = L(alpha, beta)(p(e))``;
- a HESS round (scoring + mini epoch, the paper's step after each of its epochs) runs at the end of nnU-Net epoch e
  when a pass was completed during it: ``floor(P_{e+1}) > floor(P_e)``.

S counts the epoch's iteration budget. With ``budget = "neutral"`` a mini epoch takes its iterations from the next
epoch, so every nnU-Net epoch trains exactly S samples, all from D^r (hard slices are slices of D^r): the counter is
exact. With ``budget = "extra"`` the mini epochs' samples come on top and are not counted, as the paper's mini
epochs are not part of its epochs. Either way S is a constant, so the whole plan is a pure function of the
parameters, the slice table and the batch sizes: workers and DDP ranks compute the same plan, ``--c`` needs no state
for it, and a user can print it before training (``nnUNetv2_ext_pnss_schedule``).

``epoch_unit = "nnunet_epoch"`` keeps the previous mapping (p(e) = e, a HESS round after every nnU-Net epoch).
``final_full_fraction`` sets r = 1 for the last epochs; with ``budget = "neutral"`` the last epoch has no HESS round
(no later epoch could pay for its mini epoch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from nnunetv2_ext.sampling.parameters import SamplingParameters

_EPS = 1e-9


@dataclass(frozen=True)
class EpochPlan:
    r: np.ndarray
    """r per nnU-Net epoch."""
    paper_epoch: np.ndarray
    """p(e): the paper's epoch index during nnU-Net epoch e (= e with epoch_unit 'nnunet_epoch')."""
    passes_before: np.ndarray
    """P_e: passes over D^r completed before nnU-Net epoch e (float); P_{num_epochs} is the last entry."""
    n_selected: np.ndarray
    """|D^{r(e)}|: slices selected during nnU-Net epoch e."""
    hess_round: np.ndarray
    """True where a HESS round (scoring + mini epoch) runs at the end of nnU-Net epoch e."""
    samples_per_epoch: int

    @property
    def num_epochs(self) -> int:
        return len(self.r)

    def first_epoch_at(self, r: float) -> int:
        """First nnU-Net epoch with r(e) <= r, or -1 if none."""
        idx = np.flatnonzero(self.r <= r + _EPS)
        return int(idx[0]) if len(idx) else -1

    def summary(self) -> str:
        """One line per value of r: the nnU-Net epochs it lasts, |D^r| and the passes."""
        lines = [f"{'r':>5} {'nnU-Net epochs':>16} {'paper epochs':>13} {'|D^r|':>8} {'HESS rounds':>12}"]
        e = 0
        while e < self.num_epochs:
            stop = e
            while stop < self.num_epochs and self.r[stop] == self.r[e]:
                stop += 1
            lines.append(f"{self.r[e]:5.2f} {f'{e}-{stop - 1}':>16} "
                         f"{f'{self.passes_before[e]:.1f}-{self.passes_before[stop]:.1f}':>13} "
                         f"{int(self.n_selected[e]):8d} {int(self.hess_round[e:stop].sum()):12d}")
            e = stop
        return "\n".join(lines)


def build_epoch_plan(params: SamplingParameters, num_epochs: int, samples_per_epoch: int,
                     selected_count: Callable[[float], int]) -> EpochPlan:
    """The plan for ``num_epochs`` nnU-Net epochs of ``samples_per_epoch`` samples (iterations x global batch size).

    ``selected_count(r)`` is |D^r| (e.g. ``lambda r: int(slice_table.selected_mask(r).sum())``); it must be > 0 for
    every r the plan reaches, else a ValueError says which r empties the selection.
    """
    if num_epochs < 1 or samples_per_epoch < 1:
        raise ValueError(f"need num_epochs >= 1 and samples_per_epoch >= 1, got {num_epochs}, {samples_per_epoch}")
    schedule = params.pnss_schedule
    n_final = int(round(params.final_full_fraction * num_epochs))
    counts = {}
    r = np.ones(num_epochs)
    paper_epoch = np.zeros(num_epochs, np.int64)
    passes = np.zeros(num_epochs + 1)
    n_sel = np.zeros(num_epochs, np.int64)
    hess_round = np.zeros(num_epochs, bool)
    for e in range(num_epochs):
        p = e if params.epoch_unit == "nnunet_epoch" else int(math.floor(passes[e] + _EPS))
        paper_epoch[e] = p
        r[e] = 1.0 if schedule is None or e >= num_epochs - n_final else schedule.ratio(p)
        if r[e] not in counts:
            counts[r[e]] = int(selected_count(float(r[e])))
            if counts[r[e]] <= 0:
                raise ValueError(f"PNSS would select no slice at r={r[e]:g} (nnU-Net epoch {e}): the training cases "
                                 f"have no foreground slice; check the labels or raise r_min")
        n_sel[e] = counts[r[e]]
        passes[e + 1] = passes[e] + samples_per_epoch / n_sel[e]
        hess_round[e] = params.hess and (params.epoch_unit == "nnunet_epoch" or
                                         math.floor(passes[e + 1] + _EPS) > math.floor(passes[e] + _EPS))
    if params.budget == "neutral":
        hess_round[-1] = False
    return EpochPlan(r, paper_epoch, passes, n_sel, hess_round, int(samples_per_epoch))
