"""Losses of the cascade tumour variant (Qiu et al. 2024, Eq. 10-17).

Tumour maps are logits ``(B, 1, *S)`` (2d or 3d); targets are binary tumour masks of the same shape (float).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_ext.two_stage.crop import crop_with_padding, resize_to

if TYPE_CHECKING:  # the loss needs only the tensors the network recorded
    from nnunetv2_ext.networks.cascade_tumour import CascadeAuxiliary


def _spatial_axes(x: torch.Tensor):
    return tuple(range(2, x.ndim))


def soft_iou_loss(probability: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  smooth: float = 1.0) -> torch.Tensor:
    """``1 - (sum w p t + smooth) / (sum w (p + t) - sum w p t + smooth)`` per sample and channel, (B, 1)."""
    w = torch.ones_like(target) if weight is None else weight
    axes = _spatial_axes(target)
    intersection = (w * probability * target).sum(axes)
    union = (w * (probability + target)).sum(axes)
    return 1 - (intersection + smooth) / (union - intersection + smooth)


def bce_iou_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss of the localisation output (Eq. 11): binary cross-entropy + IoU loss, mean over the batch."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(_spatial_axes(target))
    return (bce + soft_iou_loss(torch.sigmoid(logits), target)).mean()


def boundary_weight(target: torch.Tensor, window: int = 15, strength: float = 5.0) -> torch.Tensor:
    """``1 + strength * |avg_pool(t, window) - t|``: weight that grows near the tumour's boundary (Eq. 12, as in
    PraNet/PFNet's structure loss; the window is clipped to the map's size)."""
    window = max(1, min(window, *[s if s % 2 else s - 1 for s in target.shape[2:]]))
    pool = F.avg_pool3d if target.ndim == 5 else F.avg_pool2d
    local_mean = pool(target, kernel_size=window, stride=1, padding=window // 2)
    return 1 + strength * (local_mean - target).abs()


def weighted_bce_iou_loss(logits: torch.Tensor, target: torch.Tensor, window: int = 15) -> torch.Tensor:
    """Loss of a focusing output (Eq. 12): boundary-weighted BCE + boundary-weighted IoU, mean over the batch."""
    weight = boundary_weight(target, window)
    axes = _spatial_axes(target)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weighted_bce = (weight * bce).sum(axes) / weight.sum(axes)
    return (weighted_bce + soft_iou_loss(torch.sigmoid(logits), target, weight)).mean()


def focus_level_weights(num_levels: int) -> List[float]:
    """Weights of the focusing outputs from coarsest to finest (Eq. 13): doubling towards the finest level, as
    PFNet's 1, 2, 4."""
    return [2.0 ** i for i in range(num_levels)]


def stage2_loss(location_map: torch.Tensor, focus_maps: Sequence[torch.Tensor], tumour_target: torch.Tensor,
                window: int = 15, location_weight: float = 1.0,
                level_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """L_seg2 on one crop (Eq. 11-13): every map is resized (linear) to the crop, then
    ``(location_weight * L_loc + sum_l w_l * L_focus_l) / (location_weight + sum_l w_l)``."""
    size = tumour_target.shape[2:]
    weights = list(level_weights) if level_weights is not None else focus_level_weights(len(focus_maps))
    if len(weights) != len(focus_maps):
        raise ValueError(f"{len(weights)} level weights for {len(focus_maps)} focusing outputs")
    total = location_weight * bce_iou_loss(resize_to(location_map.float(), size), tumour_target)
    for w, m in zip(weights, focus_maps):
        total = total + w * weighted_bce_iou_loss(resize_to(m.float(), size), tumour_target, window)
    return total / (location_weight + sum(weights))


class CascadeTumorLoss(nn.Module):
    """Total loss (Eq. 17): ``L = L_seg1 + alpha * L_seg2 + beta * L_isb``.

    Args:
        stage1_loss: ``(organ_logits (B, 2, *S), organ_target (B, 1, *S) in {0, 1}) -> scalar`` (Eq. 10; nnU-Net's
            Dice (+ CE) loss in the trainer).
        alpha: weight of L_seg2 (0.9 in the paper).
        beta: weight of L_isb (0.4 in the paper); ignored when ``shared_boundary_loss`` is None.
        shared_boundary_loss: ``(logits (B, 3, *S), target (B, 1, *S) labels) -> scalar`` inter-class
            shared-boundary loss (Eq. 14-16), or None.
        window: boundary window of Eq. 12.
    forward(logits, auxiliary, target): logits (B, 3, *S) of :class:`CascadeTumorNet`, its
    :class:`CascadeAuxiliary`, target (B, 1, *S) labels 0 background, 1 organ, 2 tumour. L_seg2 is averaged over
    the samples that had a crop; the crop of the target uses the network's boxes. :attr:`last_terms` holds the
    three terms of the last call (floats) for logging.
    """

    def __init__(self, stage1_loss: Callable, alpha: float = 0.9, beta: float = 0.4,
                 shared_boundary_loss: Optional[Callable] = None, window: int = 15):
        super().__init__()
        self.stage1_loss = stage1_loss
        self.alpha = alpha
        self.beta = beta
        self.shared_boundary_loss = shared_boundary_loss
        self.window = window
        self.last_terms = {}

    def forward(self, logits: torch.Tensor, auxiliary: "CascadeAuxiliary", target: torch.Tensor) -> torch.Tensor:
        if auxiliary is None:
            raise RuntimeError("CascadeTumorLoss needs the network's auxiliary outputs; set record_auxiliary=True")
        organ_target = (target > 0).to(target.dtype)
        seg1 = self.stage1_loss(auxiliary.organ_logits, organ_target)
        per_sample = []
        for b, box in enumerate(auxiliary.boxes):
            if box is None:
                continue
            tumour = crop_with_padding((target[b:b + 1] == 2).float(), box, 0.0)
            per_sample.append(stage2_loss(auxiliary.location_maps[b], auxiliary.focus_maps[b], tumour, self.window))
        seg2 = torch.stack(per_sample).mean() if per_sample else logits.sum() * 0
        total = seg1 + self.alpha * seg2
        isb = None
        if self.shared_boundary_loss is not None and self.beta > 0:
            isb = self.shared_boundary_loss(logits, target)
            total = total + self.beta * isb
        self.last_terms = {"seg1": float(seg1.detach()), "seg2": float(seg2.detach()),
                           "isb": float(isb.detach()) if isb is not None else float("nan")}
        return total
