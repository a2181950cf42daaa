"""Hausdorff-distance loss based on distance transforms (Karimi & Salcudean, IEEE TMI 2019), Eq. 8 of Liu, Duan,
Zeng (2021)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from nnunetv2_ext.losses._common import (check_logits_and_target, check_sdm, labels_and_valid_mask, masked_mean,
                                         one_hot, upcast)


class HausdorffDTLoss(nn.Module):
    """L_HD = 1/|Ω| Σ_x mean_{c≥1} (s_c(x) - g_c(x))² (d_G,c(x)^a + d_S,c(x)^a) (Eq. 8).

    ``g_c`` is the one-hot reference, ``d_G,c = |φ_c|`` the unsigned distance (mm) to the reference boundary, taken
    from the signed distance maps computed in the augmentation workers, and ``d_S,c`` the same for the current
    prediction (argmax, no gradient). ``d_S`` depends on the network output, so it is the only distance transform
    done in the main process (one ``edt`` set per sample and iteration); ``use_prediction_distance=False`` gives
    Karimi's cheaper one-sided variant (``d_G`` only).

    Args:
        spacing: voxel spacing (mm) per spatial axis, needed for ``d_S`` (ignored when one-sided).
        exponent: ``a`` in the formula (Karimi & Salcudean use 2); > 0.
        use_prediction_distance: include ``d_S`` (two-sided, Eq. 8) or not (one-sided).
        ignore_label: voxels with this reference label do not contribute.

    Shapes (forward): logits (B, C, *spatial), target (B, 1, *spatial) label map, sdm (B, C-1, *spatial); scalar out.
    """

    def __init__(self, spacing: Optional[Sequence[float]] = None, exponent: float = 2.0,
                 use_prediction_distance: bool = True, ignore_label: Optional[int] = None):
        super().__init__()
        if not exponent > 0:
            raise ValueError(f"HausdorffDTLoss: exponent must be > 0, got {exponent}")
        if use_prediction_distance and (spacing is None or any(float(s) <= 0 for s in spacing)):
            raise ValueError(f"HausdorffDTLoss: the two-sided loss needs a positive voxel spacing, got {spacing}")
        self.spacing = None if spacing is None else [float(s) for s in spacing]
        self.exponent = float(exponent)
        self.use_prediction_distance = use_prediction_distance
        self.ignore_label = ignore_label

    @torch.no_grad()
    def prediction_distance(self, logits: torch.Tensor) -> torch.Tensor:
        """Unsigned distance (mm) to the boundary of the argmax prediction, (B, C-1, *spatial)."""
        from nnunetv2_ext.transforms.signed_distance import signed_distance_maps
        if len(self.spacing) != logits.ndim - 2:
            raise ValueError(f"HausdorffDTLoss: spacing {self.spacing} does not match {logits.ndim - 2} spatial axes")
        pred = logits.argmax(1).cpu().numpy()
        classes = list(range(1, logits.shape[1]))
        maps = np.stack([np.abs(signed_distance_maps(p, classes, self.spacing)) for p in pred])
        return torch.from_numpy(maps).to(logits.device)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, sdm: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        check_logits_and_target(logits, target, "HausdorffDTLoss")
        check_sdm(logits, sdm, "HausdorffDTLoss")
        labels, valid = labels_and_valid_mask(target, self.ignore_label)
        probs = torch.softmax(upcast(logits), 1)
        reference = one_hot(labels, logits.shape[1], probs.dtype)
        distance_weight = sdm.abs().to(probs.dtype) ** self.exponent
        if self.use_prediction_distance:
            distance_weight = distance_weight + self.prediction_distance(logits).to(probs.dtype) ** self.exponent
        return masked_mean((probs[:, 1:] - reference[:, 1:]) ** 2 * distance_weight, valid)
