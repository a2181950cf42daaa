"""Boundary loss (Kervadec et al., MIDL 2019 / MedIA 2021), Eq. 6-7 of Liu, Duan, Zeng (2021)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from nnunetv2_ext.losses._common import (check_logits_and_target, check_sdm, labels_and_valid_mask, masked_mean,
                                         upcast)


class BoundaryLoss(nn.Module):
    """L_B = 1/|Ω| Σ_x Σ_{c≥1} s_c(x) φ_c(x), averaged over foreground classes (Eq. 7).

    ``s_c`` is the softmax probability of class c and ``φ_c`` the signed distance map of the reference (Eq. 6;
    negative inside, positive outside, in mm; see :mod:`nnunetv2_ext.transforms.signed_distance`). The loss is
    minimal (negative) when the probability mass sits exactly on the reference region. Background is not included.

    Args:
        ignore_label: voxels with this reference label do not contribute (averages run over the other voxels).

    Shapes (forward):
        logits: (B, C, *spatial) raw network output (softmax over C, C >= 2).
        target: (B, 1, *spatial) integer label map (may contain ``ignore_label``).
        sdm: (B, C-1, *spatial) signed distance maps of foreground classes 1..C-1.
        returns: scalar.
    """

    def __init__(self, ignore_label: Optional[int] = None):
        super().__init__()
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor, sdm: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        check_logits_and_target(logits, target, "BoundaryLoss")
        check_sdm(logits, sdm, "BoundaryLoss")
        _, valid = labels_and_valid_mask(target, self.ignore_label)
        probs_fg = torch.softmax(upcast(logits), 1)[:, 1:]
        return masked_mean(probs_fg * sdm.to(probs_fg.dtype), valid)
