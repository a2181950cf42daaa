"""Multi-level structural loss (Liu, Duan, Zeng 2021, Eq. 11)."""
from __future__ import annotations

from torch import nn

from nnunetv2_ext.losses.boundary import BoundaryLoss
from nnunetv2_ext.losses.compound import RegionAndStructuralLoss, Schedule
from nnunetv2_ext.losses.schedules import StepUpWeight, SwitchWeight
from nnunetv2_ext.losses.uncertain_points import UncertainPointLoss

PAPER_BETA_SWITCH = 0.6
"""Liu, Duan, Zeng switch β (E_P) on at epoch 12 of about 20, and restart the learning rate there: 60 % of the run."""
PAPER_SELECTION_STRIDE = 4
"""They select E_P's uncertain points on the stride-4 logits."""


class MultiLevelStructuralLoss(RegionAndStructuralLoss):
    """L = L_R + α(epoch) · L_B + β(epoch) · E_P (Eq. 11).

    Region level ``L_R``: nnU-Net's Dice + CE (deep supervision as in nnU-Net). Boundary level ``L_B``:
    :class:`BoundaryLoss` (Eq. 7). Pixel level ``E_P``: :class:`UncertainPointLoss` (Eq. 10). Schedules (as fractions
    of the training length, see :mod:`nnunetv2_ext.losses.schedules`): α = 0, +0.2 every 5 % of the epochs, up to
    1; β = 0 for the first half, then 1 (this class's defaults; the trainers use the paper's 60 %,
    :data:`PAPER_BETA_SWITCH`).

    Target layout: see :class:`RegionAndStructuralLoss` (needs the signed distance maps).
    """

    def __init__(self, region_loss: nn.Module, boundary: BoundaryLoss, pixelwise: UncertainPointLoss,
                 alpha: Schedule = StepUpWeight(), beta: Schedule = SwitchWeight()):
        super().__init__(region_loss, {"boundary": (boundary, alpha), "pixelwise": (pixelwise, beta)}, uses_sdm=True)
