"""All PNSS/HESS settings in one frozen, validated object (defaults written here and nowhere else).

A trainer carries one :class:`SamplingParameters` as its class attribute ``sampling``; a variant is a subclass with
another one::

    class nnUNetTrainerPNSSHESS_slow(nnUNetTrainerPNSSHESS):
        sampling = SamplingParameters(alpha=0.1, beta=9)
        # or, changing one field of the parent's settings:
        sampling = replace(nnUNetTrainerPNSSHESS.sampling, scoring="forward")

Construction validates every field and names it in the error, so a bad value fails when the class is defined or,
at the latest, when the trainer is created: before any data is read.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from nnunetv2_ext.sampling.pnss import PNSSSchedule

EPOCH_UNITS = ("pass", "nnunet_epoch")
SAMPLING_MODES = ("slice", "slice_oversample", "case")
SCORING_MODES = ("exact", "forward")
NEGATIVES_WITH_FP = ("outlier", "hard")
BUDGETS = ("neutral", "extra")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingParameters:
    # ---- PNSS (Eq. 6-7 and L(alpha, beta)) ----------------------------------------------------------------------
    pnss: bool = True
    """False: every slice stays selected (r = 1 throughout); HESS alone."""
    alpha: float = 0.2
    """L(alpha, beta): r drops by alpha ..."""
    beta: int = 5
    """... every beta epochs (paper's best: 0.2, 5)."""
    r_min: float = 0.0
    """Floor of r (paper: 0)."""
    epoch_unit: str = "pass"
    """What L(alpha, beta) counts. 'pass' (the paper): one epoch = one pass over the selected slices D^r, i.e.
    |D^r| samples; converted at nnU-Net epoch boundaries. 'nnunet_epoch': nnU-Net's 250-iteration epoch."""
    sampling: str = "slice_oversample"
    """How main-phase samples are drawn from D^r. 'slice' (the paper): uniformly over the selected slices.
    'slice_oversample': the same plus nnU-Net's foreground oversampling (the last 33 % of each batch is a selected
    slice with foreground, centred on a foreground voxel). 'case': nnU-Net's case-uniform draw with oversampling,
    the patch centre restricted to the case's slab."""
    far_negative_share: float = 0.5
    """Probability that a main-phase draw that is not a foreground oversample comes uniformly from the slices PNSS
    has dropped (the far negatives), so that the model keeps seeing them and does not paint far false positives at
    test time. 0 = the paper. 0.5 since 2026-12-07 (was 0.1): the smallest share tried whose raw predictions had at
    most plain nnU-Net's + 1 connected components per case on two phantoms, 3 seeds each (issue 22,
    docs/evidence.md section 0b)."""
    final_full_fraction: float = 0.0
    """The last fraction of nnU-Net epochs is trained at r = 1 (all slices). 0 = the paper."""
    # ---- HESS (Eq. 1, Eq. 8) ------------------------------------------------------------------------------------
    hess: bool = True
    """False: no hard-slice replay (PNSS alone)."""
    outlier_threshold: float = 0.5
    """Eq. 8: units with DSC <= this are outliers, not replayed; hard = threshold < DSC < mean."""
    negatives_with_fp: str = "outlier"
    """A negative slice (no reference foreground) on which the model predicts foreground has DSC 0 (Eq. 1).
    'outlier' (the paper, Eq. 8): it is an outlier and never replayed. 'hard' (an extension): the exact pass also
    scores the slices PNSS has dropped, and every negative slice with predicted foreground, dropped or not, joins
    the hard set of the mini epoch, so false positives are trained away wherever they appear. Needs
    scoring='exact'."""
    max_epoch_cost: float = 1.5
    """A mini epoch has at most (max_epoch_cost - 1) x nnU-Net's iterations per epoch."""
    budget: str = "neutral"
    """'neutral': a mini epoch's iterations are taken from the next epoch, so a run trains exactly as many
    iterations as plain nnU-Net (the mini epoch after the last epoch is skipped). 'extra' (the paper): mini epochs
    come on top."""
    scoring: str = "exact"
    """Where the hard set's DSC come from. 'exact' (the paper): after each epoch, every slice of D^r is scored
    without augmentation. 'forward': the DSC of the training forward pass (augmented, only sampled slices)."""
    score_max_age: int = 1
    """Forward scoring: a score counts only within this many HESS rounds (1 = scored since the previous round)."""
    compare_scoring: bool = False
    """Diagnostic: run both scorers and log their agreement (rank correlation, hard-set overlap) every round."""
    seed: int = 12345
    """Seed of the mini-epoch order (identical on every DDP rank)."""

    def __post_init__(self):
        def bad(name, requirement):
            raise ValueError(f"SamplingParameters.{name} must be {requirement}, got {getattr(self, name)!r}")

        for name in ("pnss", "hess", "compare_scoring"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "True or False")
        if not (self.pnss or self.hess):
            raise ValueError("SamplingParameters: pnss and hess are both False; that is plain nnU-Net, use "
                             "nnUNetTrainer instead")
        PNSSSchedule(self.alpha, self.beta, self.r_min)  # validates alpha, beta, r_min with their names
        if self.epoch_unit not in EPOCH_UNITS:
            bad("epoch_unit", f"one of {EPOCH_UNITS}")
        if self.sampling not in SAMPLING_MODES:
            bad("sampling", f"one of {SAMPLING_MODES}")
        if not (_is_number(self.far_negative_share) and 0 <= self.far_negative_share < 1):
            bad("far_negative_share", "in [0, 1)")
        if not (_is_number(self.final_full_fraction) and 0 <= self.final_full_fraction < 1):
            bad("final_full_fraction", "in [0, 1)")
        if not (_is_number(self.outlier_threshold) and 0 <= self.outlier_threshold < 1):
            bad("outlier_threshold", "in [0, 1)")
        if self.negatives_with_fp not in NEGATIVES_WITH_FP:
            bad("negatives_with_fp", f"one of {NEGATIVES_WITH_FP}")
        if self.negatives_with_fp == "hard" and (self.scoring != "exact" or not self.hess):
            bad("negatives_with_fp", "'outlier' unless hess=True and scoring='exact' (dropped slices are scored by "
                                     "the exact pass only)")
        if self.budget not in BUDGETS:
            bad("budget", f"one of {BUDGETS}")
        upper = 2 if self.budget == "neutral" else float("inf")
        if not (_is_number(self.max_epoch_cost) and 1 < self.max_epoch_cost <= upper):
            bad("max_epoch_cost", "> 1 (1.5 = a mini epoch of at most half an epoch)" +
                (" and <= 2 with budget='neutral' (the next epoch pays for the mini epoch)"
                 if self.budget == "neutral" else ""))
        if self.scoring not in SCORING_MODES:
            bad("scoring", f"one of {SCORING_MODES}")
        if not (isinstance(self.score_max_age, int) and not isinstance(self.score_max_age, bool)
                and self.score_max_age >= 1):
            bad("score_max_age", "an integer >= 1 (HESS rounds)")
        if not isinstance(self.seed, int):
            bad("seed", "an integer")

    @property
    def pnss_schedule(self) -> Optional[PNSSSchedule]:
        """L(alpha, beta) with its floor, or None when PNSS is off (then r = 1 throughout)."""
        return PNSSSchedule(self.alpha, self.beta, self.r_min) if self.pnss else None

    @property
    def far_share(self) -> float:
        """The far-negative share that applies: none without PNSS (nothing is dropped)."""
        return self.far_negative_share if self.pnss else 0.0

    def as_dict(self) -> dict:
        return asdict(self)
