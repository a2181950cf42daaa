"""Losses of the cascade tumour variant (Qiu et al., Front. Oncol. 2024, Eq. 10-17), one loss per class.

Shape conventions: tumour maps are logits ``(B, 1, *S)`` (2d or 3d); tumour targets are binary masks of the same
shape (float); 3-class logits ``(B, 3, *S)`` and label maps ``(B, 1, *S)`` (0 background, 1 organ, 2 tumour) for the
total loss. Every loss returns a scalar, the mean over the batch.

- :class:`BCEIoULoss` (Eq. 11): localisation map.
- :class:`WeightedBCEIoULoss` (Eq. 12): focusing maps, boundary-weighted (PraNet / PFNet "structure loss").
- :class:`TumourStageLoss` (Eq. 13): ``L_seg2 = L_loc + sum_l w_l L_focus_l`` with ``w = (1, 1, 2, 4)`` from the
  coarsest to the finest of the 4 focusing levels, not normalised (the authors' ``train.py``:
  ``1*loss_4 + 1*loss_3 + 1*loss_2 + 2*loss_1 + 4*loss_0``).
- :class:`PaperNormalisedSharedBoundaryLoss` (Eq. 16): inter-class shared-boundary loss with the paper's
  ``1 / n_c^2`` normalisation.
- :func:`stage1_loss` (Eq. 10): nnU-Net's soft Dice on the organ, with or without CE.
- :class:`CascadeTumorLoss` (Eq. 17): ``L = L_seg1 + alpha * L_seg2 + beta * L_isb``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_ext.losses.shared_boundary import InterClassSharedBoundaryLoss
from nnunetv2_ext.two_stage.crop import crop_and_resize, resize_to

if TYPE_CHECKING:  # the loss needs only the tensors the network recorded
    from nnunetv2_ext.cascade.network import CascadeAuxiliary

PAPER_FOCUS_WEIGHTS = (1.0, 1.0, 2.0, 4.0)
STAGE1_LOSSES = ("dice", "dice_ce")


def _spatial_axes(x: torch.Tensor):
    return tuple(range(2, x.ndim))


def soft_iou_loss(probability: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  smooth: float = 1.0, batch: bool = False) -> torch.Tensor:
    """``1 - (sum w p t + smooth) / (sum w (p + t) - sum w p t + smooth)`` per sample and channel, (B, 1); with
    ``batch`` the sums also run over the batch (one value, (1, 1)), as nnU-Net's batch Dice."""
    w = torch.ones_like(target) if weight is None else weight
    axes = (0, *_spatial_axes(target)) if batch else _spatial_axes(target)
    intersection = (w * probability * target).sum(axes)
    union = (w * (probability + target)).sum(axes)
    return 1 - (intersection + smooth) / (union - intersection + smooth)


def boundary_weight(target: torch.Tensor, window: int = 15, strength: float = 5.0) -> torch.Tensor:
    """``1 + strength * |avg_pool(t, window) - t|``: weight that grows near the tumour's boundary (Eq. 12, as in
    PraNet/PFNet's structure loss; the window is clipped to the map's size)."""
    window = max(1, min(window, *[s if s % 2 else s - 1 for s in target.shape[2:]]))
    pool = F.avg_pool3d if target.ndim == 5 else F.avg_pool2d
    local_mean = pool(target, kernel_size=window, stride=1, padding=window // 2, count_include_pad=True)
    return 1 + strength * (local_mean - target).abs()


class BCEIoULoss(nn.Module):
    """Eq. 11: binary cross-entropy + soft IoU loss (smooth 1) of a logit map, mean over the batch.
    ``batch_iou``: the IoU's sums run over the whole batch (nnU-Net's batch Dice convention) instead of per sample.
    forward(logits (B, 1, *S), target (B, 1, *S) in [0, 1]) -> scalar."""

    def __init__(self, batch_iou: bool = False):
        super().__init__()
        self.batch_iou = batch_iou

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(_spatial_axes(target))
        return bce.mean() + soft_iou_loss(torch.sigmoid(logits), target, batch=self.batch_iou).mean()


class WeightedBCEIoULoss(nn.Module):
    """Eq. 12: boundary-weighted BCE (weighted mean) + boundary-weighted soft IoU, weight :func:`boundary_weight`,
    mean over the batch (``batch_iou`` as :class:`BCEIoULoss`). forward(logits (B, 1, *S), target (B, 1, *S)) ->
    scalar."""

    def __init__(self, window: int = 15, strength: float = 5.0, batch_iou: bool = False):
        super().__init__()
        self.window, self.strength, self.batch_iou = window, strength, batch_iou

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = boundary_weight(target, self.window, self.strength)
        axes = _spatial_axes(target)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        weighted_bce = (weight * bce).sum(axes) / weight.sum(axes)
        iou = soft_iou_loss(torch.sigmoid(logits), target, weight, batch=self.batch_iou)
        return weighted_bce.mean() + iou.mean()


def focus_level_weights(num_levels: int, paper_weights: Sequence[float] = PAPER_FOCUS_WEIGHTS) -> List[float]:
    """Weights of the focusing outputs from the coarsest to the finest (Eq. 13). With the paper's 4 levels:
    (1, 1, 2, 4). Fewer levels take the finest weights ((1, 2, 4) for 3); more levels (a stage 2 deeper than the
    paper's) give the extra coarser levels weight 1, like the paper's coarsest."""
    if num_levels < 1:
        raise ValueError(f"need at least one focusing level, got {num_levels}")
    paper = [float(w) for w in paper_weights]
    if num_levels <= len(paper):
        return paper[len(paper) - num_levels:]
    return [1.0] * (num_levels - len(paper)) + paper


class TumourStageLoss(nn.Module):
    """L_seg2 (Eq. 11-13) on a batch of crops: every map is resized (linear) to the target's size, then
    ``location_weight * L_loc + sum_l w_l * L_focus_l`` - a plain weighted sum, as the paper and the authors'
    ``train.py`` write it.

    Args:
        level_weights: w_l from the coarsest to the finest focusing map; None: :func:`focus_level_weights` of the
            number of maps given.
        location_weight: weight of the localisation map (1).
        window: boundary window of Eq. 12.
        batch_iou: IoU terms over the whole batch of crops (see :class:`BCEIoULoss`; default True: crops without
            tumour then do not each demand an empty prediction at full weight, which collapsed the tumour maps under
            nnU-Net's optimiser - measured, see the trainer page).
    forward(location_map (B, 1, *S_deep), focus_maps [(B, 1, *S_l)] coarsest first, target (B, 1, *S)) -> scalar.
    """

    def __init__(self, level_weights: Optional[Sequence[float]] = None, location_weight: float = 1.0,
                 window: int = 15, batch_iou: bool = True):
        super().__init__()
        self.level_weights = None if level_weights is None else [float(w) for w in level_weights]
        self.location_weight = float(location_weight)
        self.localisation = BCEIoULoss(batch_iou)
        self.focus = WeightedBCEIoULoss(window, batch_iou=batch_iou)
        self.last_terms: dict = {}

    def forward(self, location_map: torch.Tensor, focus_maps: Sequence[torch.Tensor], target: torch.Tensor
                ) -> torch.Tensor:
        weights = self.level_weights if self.level_weights is not None else focus_level_weights(len(focus_maps))
        if len(weights) != len(focus_maps):
            raise ValueError(f"{len(weights)} level weights for {len(focus_maps)} focusing outputs")
        size = target.shape[2:]
        location = self.localisation(resize_to(location_map.float(), size), target)
        terms = [self.focus(resize_to(m.float(), size), target) for m in focus_maps]
        self.last_terms = {"loc": float(location.detach()), **{f"focus{i}": float(t.detach())
                                                               for i, t in enumerate(terms)}}
        total = self.location_weight * location
        for w, t in zip(weights, terms):
            total = total + w * t
        return total


class PaperNormalisedSharedBoundaryLoss(InterClassSharedBoundaryLoss):
    """L_isb with the paper's normalisation (Eq. 16): ``(1 / n_c^2) sum_{i, j} (m_pred(i, j) - m_ref(i, j))^2`` per
    image, mean over the batch. The parent class averages over the ``n_c (n_c - 1)`` off-diagonal entries (the
    diagonal is 0 in both matrices), so this is the parent's value times ``(n_c - 1) / n_c`` (2/3 for 3 classes).
    Same arguments and shapes as :class:`~nnunetv2_ext.losses.shared_boundary.InterClassSharedBoundaryLoss`."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, sdm: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        c = logits.shape[1]
        return super().forward(logits, target, sdm) * (c - 1) / c


def stage1_loss(kind: str, batch_dice: bool, ddp: bool = False) -> nn.Module:
    """L_seg1 on the organ (Eq. 10): ``'dice'`` = nnU-Net's soft Dice on the foreground only (the paper),
    ``'dice_ce'`` = nnU-Net's Dice + CE (weights 1, 1). forward(organ logits (B, 2, *S), organ mask (B, 1, *S))."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    if kind not in STAGE1_LOSSES:
        raise ValueError(f"stage1_loss must be one of {STAGE1_LOSSES}, got {kind!r}")
    return DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": ddp}, {},
                          weight_ce=1.0 if kind == "dice_ce" else 0.0, weight_dice=1.0,
                          dice_class=MemoryEfficientSoftDiceLoss)


class CascadeTumorLoss(nn.Module):
    """Total loss (Eq. 17): ``L = L_seg1 + alpha * L_seg2 + beta * L_isb``.

    Args:
        stage1_loss: ``(organ_logits (B, 2, *S), organ_target (B, 1, *S) in {0, 1}) -> scalar`` (Eq. 10, see
            :func:`stage1_loss`).
        alpha: weight of L_seg2 (0.9 in the paper).
        beta: weight of L_isb (0.4 in the paper); ignored when ``shared_boundary_loss`` is None.
        shared_boundary_loss: ``(logits (B, 3, *S), target (B, 1, *S) labels) -> scalar`` (Eq. 14-16), or None.
        tumour_loss: :class:`TumourStageLoss` (default: the paper's weights).
    forward(logits, auxiliary, target): logits (B, 3, *S) of the cascade network, its recorded ``CascadeAuxiliary``,
    target (B, 1, *S) labels. The tumour target of each crop is cut out of ``target`` with the network's box and
    resampled to stage 2's size exactly as the image was (linear, then > 0.5). L_seg2 is the mean over the samples
    that had a crop (0 when none had). While stage 2 is off (``auxiliary.stage2_enabled`` False, the stage-1
    pre-training step P of the transfer step T) the loss is L_seg1 alone. :attr:`last_terms` holds the three terms
    of the last call (floats; NaN for a term not computed).
    """

    def __init__(self, stage1_loss: Callable, alpha: float = 0.9, beta: float = 0.4,
                 shared_boundary_loss: Optional[Callable] = None, tumour_loss: Optional[TumourStageLoss] = None):
        super().__init__()
        self.stage1_loss = stage1_loss
        self.alpha = alpha
        self.beta = beta
        self.shared_boundary_loss = shared_boundary_loss
        self.tumour_loss = tumour_loss if tumour_loss is not None else TumourStageLoss()
        self.last_terms = {}

    @staticmethod
    def tumour_targets(auxiliary: "CascadeAuxiliary", target: torch.Tensor) -> torch.Tensor:
        """(n, 1, *stage2_size) binary tumour targets of the cropped samples."""
        crops = [crop_and_resize((target[i:i + 1] == 2).float(), auxiliary.boxes[i], auxiliary.stage2_size)
                 for i in auxiliary.cropped]
        return (torch.cat(crops) > 0.5).float()

    def forward(self, logits: torch.Tensor, auxiliary: "CascadeAuxiliary", target: torch.Tensor) -> torch.Tensor:
        if auxiliary is None:
            raise RuntimeError("CascadeTumorLoss needs the network's auxiliary outputs; set record_auxiliary=True")
        organ_target = (target > 0).to(target.dtype)
        seg1 = self.stage1_loss(auxiliary.organ_logits, organ_target)
        if not auxiliary.stage2_enabled:  # stage-1 pre-training (step P): the organ loss alone
            self.last_terms = {"seg1": float(seg1.detach()), "seg2": float("nan"), "isb": float("nan")}
            return seg1 + logits.sum() * 0
        if auxiliary.cropped:
            seg2 = self.tumour_loss(auxiliary.location_map, auxiliary.focus_maps,
                                    self.tumour_targets(auxiliary, target))
        else:
            seg2 = logits.sum() * 0
        total = seg1 + self.alpha * seg2
        isb = None
        if self.shared_boundary_loss is not None and self.beta > 0:
            isb = self.shared_boundary_loss(logits, target)
            total = total + self.beta * isb
        self.last_terms = {"seg1": float(seg1.detach()), "seg2": float(seg2.detach()),
                           "isb": float(isb.detach()) if isb is not None else float("nan")}
        return total
