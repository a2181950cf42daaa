"""The coarse-to-fine loss of Liu et al. (Eq. 13's outer form) and the coarse-stage check of the trainer's log.

:class:`CoarseToFineLoss`: ``ω1 E_R(coarse) + ω2 (E_R(fine) + α E_R(region) + β E_B + γ E_P)`` on the outputs of
:class:`~nnunetv2_ext.coarse_to_fine.network.CoarseToFineNet` (its :class:`CoarseToFineAuxiliary`); the MLN branch
weights follow :class:`MLNLossWeights`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_ext.coarse_to_fine.mln import MLNBoundaryTerm, split_points
from nnunetv2_ext.coarse_to_fine.network import CoarseToFineAuxiliary
from nnunetv2_ext.losses.compound import Schedule
from nnunetv2_ext.losses.schedules import ConstantWeight, SwitchWeight
from nnunetv2_ext.two_stage.crop import crop_with_padding


PAPER_SWITCH_FRACTION = 0.6
"""Liu et al. train the pixel branch and the fusion from epoch 12 of about 20: 60 % of the run."""


@dataclass(frozen=True)
class MLNLossWeights:
    """The MLN schedule of Eq. 13 as pure functions of the epoch (the paper's): α (region branch) and β (boundary
    branch) 1 from the start; γ (pixel branch) and the fusion (E_R on the fused output the stages return) 0 for the
    first 60 % of the run, then 1."""
    region: Schedule = field(default_factory=lambda: ConstantWeight(1.0))
    boundary: Schedule = field(default_factory=lambda: ConstantWeight(1.0))
    pixel: Schedule = field(default_factory=lambda: SwitchWeight(PAPER_SWITCH_FRACTION))
    fusion: Schedule = field(default_factory=lambda: SwitchWeight(PAPER_SWITCH_FRACTION))

    def at(self, epoch: int, num_epochs: int) -> Dict[str, float]:
        return {"region": self.region(epoch, num_epochs), "boundary": self.boundary(epoch, num_epochs),
                "pixel": self.pixel(epoch, num_epochs), "fusion": self.fusion(epoch, num_epochs)}


class CoarseToFineLoss(nn.Module):
    """``ω1 E_R(coarse) + ω2 (φ E_R(fine) + α E_R(region) + β E_B + γ E_P)`` (Eq. 13's outer form; φ, the fusion's
    weight, is 1 without the MLN head).

    Without the MLN head, ``fine_terms`` ({name: (term, schedule)}) adds ``w(epoch) · term(output, target, sdm)`` on
    the fine output: the MLL model of Eq. 11 is ``ω1 E_R(coarse) + ω2 (E_R(fine) + α L_B(fine) + β E_P(fine))``.

    ``E_R`` is nnU-Net's Dice + CE (``region_loss``, called as ``region_loss(logits, target)``); the coarse term acts
    on the coarse logits of the whole input, E_R(fine) on the pasted full-size output. With the MLN head
    (``mln_weights`` given), the branch terms act on each sample's crop (reference and signed distance maps cropped
    with the same box), averaged over the samples that have a box: E_R(region) on the region branch (computed by
    ``branch_region_loss``, default ``region_loss``: it is called once per sample with a box, a number that differs
    between DDP ranks, so it must not synchronise across ranks as nnU-Net's DDP batch Dice does), E_B
    (:class:`~nnunetv2_ext.coarse_to_fine.mln.MLNBoundaryTerm`) on the boundary branch, E_P = CE at the pixel branch's
    points; φ weighs E_R(fine), the loss of the fused output. A branch weight that is 0 in the current epoch skips its
    term (E_R(fine) is always computed, for the log). :attr:`last_terms` holds the unweighted terms of
    the last call (nan where not computed).

    Shapes: output (B, 2, *S) log-probabilities, target (B, 1, *S) label map, sdm (B, 1, *S) mm or None.
    """

    def __init__(self, region_loss: nn.Module, coarse_weight: float = 0.3, fine_weight: float = 2 / 3,
                 mln_weights: Optional[MLNLossWeights] = None, boundary_term: Optional[MLNBoundaryTerm] = None,
                 ignore_label: Optional[int] = None, branch_region_loss: Optional[nn.Module] = None,
                 fine_terms: Optional[Dict[str, Tuple[nn.Module, Schedule]]] = None):
        super().__init__()
        if mln_weights is not None and fine_terms:
            raise ValueError("CoarseToFineLoss: the MLN branches and structural terms on the fine output exclude "
                             "each other (the MLN head supervises its own branches)")
        for name, (_, schedule) in (fine_terms or {}).items():
            if name in ("coarse", "fine") or not callable(schedule):
                raise ValueError(f"CoarseToFineLoss: fine term {name!r} needs another name and a schedule "
                                 f"w(epoch, num_epochs)")
            schedule(0, 1)  # validates
        self.fine_terms = nn.ModuleDict({name: term for name, (term, _) in (fine_terms or {}).items()})
        self.fine_schedules = {name: schedule for name, (_, schedule) in (fine_terms or {}).items()}
        for name, w in (("coarse_weight (omega_1)", coarse_weight), ("fine_weight (omega_2)", fine_weight)):
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"CoarseToFineLoss: {name} must be a finite number >= 0, got {w!r}")
        if mln_weights is not None and boundary_term is None:
            raise ValueError("CoarseToFineLoss: the MLN terms need a boundary term (MLNBoundaryTerm)")
        self.region_loss = region_loss
        self.branch_region_loss = branch_region_loss if branch_region_loss is not None else region_loss
        self.coarse_weight, self.fine_weight = float(coarse_weight), float(fine_weight)
        self.mln_weights = mln_weights
        self.boundary_term = boundary_term
        self.ignore_index = -100 if ignore_label is None else int(ignore_label)
        self.epoch, self.num_epochs = 0, 1
        self.last_terms: Dict[str, float] = {}

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        if self.mln_weights is not None:
            self.mln_weights.at(epoch, num_epochs)  # validates
        self.epoch, self.num_epochs = int(epoch), int(num_epochs)

    def current_weights(self) -> Dict[str, float]:
        weights = {"coarse": self.coarse_weight, "fine": self.fine_weight}
        if self.mln_weights is not None:
            weights.update(self.mln_weights.at(self.epoch, self.num_epochs))
        weights.update({name: schedule(self.epoch, self.num_epochs) for name, schedule in self.fine_schedules.items()})
        return weights

    def forward(self, output: torch.Tensor, auxiliary: CoarseToFineAuxiliary, target: torch.Tensor,
                sdm: Optional[torch.Tensor] = None) -> torch.Tensor:
        if auxiliary is None:
            raise ValueError("CoarseToFineLoss needs the network's auxiliary outputs (record_auxiliary=True)")
        weights = self.current_weights()
        coarse = self.region_loss(auxiliary.coarse_logits, target)
        fine = self.region_loss(output, target)
        terms = {"coarse": float(coarse.detach()), "fine": float(fine.detach())}
        fine_total = fine
        if self.mln_weights is not None:
            fine_total = weights["fusion"] * fine
            branch = self._branch_terms(auxiliary, target, sdm, weights)
            for name in ("region", "boundary", "pixel"):
                value = branch.get(name)
                terms[name] = float("nan") if value is None else float(value.detach())
                if value is not None:
                    fine_total = fine_total + weights[name] * value
        for name, term in self.fine_terms.items():  # Eq. 11 on the fine stage (the MLL model)
            if weights[name] == 0:
                terms[name] = float("nan")
                continue
            value = term(output, target, sdm)
            terms[name] = float(value.detach())
            fine_total = fine_total + weights[name] * value
        self.last_terms = terms
        return self.coarse_weight * coarse + self.fine_weight * fine_total

    def _branch_terms(self, auxiliary: CoarseToFineAuxiliary, target: torch.Tensor, sdm: Optional[torch.Tensor],
                      weights: Dict[str, float]) -> Dict[str, Optional[torch.Tensor]]:
        sums: Dict[str, List[torch.Tensor]] = {"region": [], "boundary": [], "pixel": []}
        if weights["boundary"] != 0 and sdm is None:
            raise ValueError("the boundary branch's term E_B needs the signed distance maps of the target")
        for b, (box, fine) in enumerate(zip(auxiliary.boxes, auxiliary.fine)):
            if box is None or fine is None or fine.region is None:
                continue
            seg = crop_with_padding(target[b:b + 1].float(), box, 0.0).round().long()
            if weights["region"] != 0:
                sums["region"].append(self.branch_region_loss(fine.region, seg))
            if weights["boundary"] != 0:
                reference = crop_with_padding(sdm[b:b + 1].float(), box, float(sdm[b].max().clamp_min(0)))
                sums["boundary"].append(self.boundary_term(fine.sdm, seg, reference))
            if weights["pixel"] != 0:
                logits, labels = split_points(fine, seg)
                if (labels != self.ignore_index).any():
                    sums["pixel"].append(F.cross_entropy(logits.float(), labels, ignore_index=self.ignore_index))
        return {k: (torch.stack(v).mean() if v else None) for k, v in sums.items()}


COARSE_FALLBACK_WARNING = 0.25
"""Share of a step's training samples with an empty coarse mask above which :func:`coarse_fallback_warning` warns."""


def coarse_fallback_warning(fallbacks: int, samples: int, reference_boxes: bool, coarse_weight: float) -> Optional[str]:
    """The log warning for an epoch in which the coarse stage found no organ in more than ``COARSE_FALLBACK_WARNING``
    of the ``samples`` (their boxes came from the reference, RSTN's fallback); None when there is nothing to say.
    Only steps that crop from the coarse prediction (step J, ``reference_boxes`` False) count: training's pseudo-Dice
    hides this failure, and inference has no reference to fall back on."""
    if reference_boxes or fallbacks <= COARSE_FALLBACK_WARNING * samples:
        return None
    return (f"WARNING: the coarse stage found no organ in {fallbacks} of {samples} training samples this epoch (their "
            f"boxes came from the reference). At inference there is no reference: slices where the coarse stage finds "
            f"nothing are predicted empty. If this persists to the end of training, train longer or raise "
            f"coarse_weight (omega1, now {coarse_weight:g}).")


