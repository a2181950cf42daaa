"""Cross pseudo supervision (CPS) without nnU-Net: the loss, its ramp-up weight and the two-network module.

Chen et al., CVPR 2021 ("Semi-Supervised Semantic Segmentation with Cross Pseudo Supervision"):

    L_s   = sum over labelled x of  l_ce(p_a(x), y*) + l_ce(p_b(x), y*)                                    (Eq. 1)
    L_cps = sum over unlabelled x of  l(p_a(x), argmax p_b(x)) + l(p_b(x), argmax p_a(x))                 (Eq. 2)
    L     = L_s + lambda L_cps                                                                                (Eq. 3)

What we use (Pham et al., FLARE22, as the issue states it): two networks of *different* architecture; the
supervised loss of each network is nnU-Net's Dice + CE (with deep supervision); the unsupervised loss ``l`` is the
soft Dice (nnU-Net's ``MemoryEfficientSoftDiceLoss``, foreground classes, batch Dice as in the plans) instead of
CE; lambda follows a ramp-up (:class:`SigmoidRampUp`). Deviations from Chen et al., written on the trainer page:
L_cps is computed on the unlabelled patches only (Chen et al. add the same term on the labelled images), on the
full-resolution output only (the deep-supervision heads learn from the labels), and lambda is ramped up instead of
constant.

Shape conventions: logits (B, C, *spatial), C >= 2 softmax channels (label-based datasets; regions are refused by
the trainer). Pseudo-labels are the argmax (B, 1, *spatial) of the *other* network, detached (no gradient flows
through the target, Eq. 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

Output = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass(frozen=True)
class SigmoidRampUp:
    """lambda(epoch) = maximum * exp(-5 (1 - t)^2), t = min(1, epoch / (ramp_fraction * num_epochs)).

    The sigmoid-shaped ramp of Laine & Aila (ICLR 2017), common for consistency weights in semi-supervised
    segmentation: about 0.7 % of the maximum at epoch 0, the maximum from ``ramp_fraction`` of training on. A pure
    function of the epoch, so ``--c`` resumes with the right weight. ``ramp_fraction=0`` gives a constant weight
    (Chen et al.'s lambda)."""
    maximum: float = 1.0
    ramp_fraction: float = 0.2

    def __post_init__(self):
        if not (math.isfinite(self.maximum) and self.maximum >= 0):
            raise ValueError(f"SigmoidRampUp: maximum must be a finite number >= 0, got {self.maximum}")
        if not 0 <= self.ramp_fraction <= 1:
            raise ValueError(f"SigmoidRampUp: ramp_fraction must be in [0, 1], got {self.ramp_fraction}")

    def __call__(self, epoch: int, num_epochs: int) -> float:
        if num_epochs < 1 or epoch < 0:
            raise ValueError(f"need epoch >= 0 and num_epochs >= 1, got epoch={epoch}, num_epochs={num_epochs}")
        ramp = self.ramp_fraction * num_epochs
        if ramp <= 0:
            return float(self.maximum)
        t = min(1.0, epoch / ramp)
        return float(self.maximum * math.exp(-5.0 * (1.0 - t) ** 2))


class CrossPseudoSupervisionLoss(nn.Module):
    """Eq. 2 with a Dice loss: ``dice(logits_a, argmax logits_b) + dice(logits_b, argmax logits_a)``.

    ``dice`` is called as ``dice(logits, labels (B, 1, *spatial))`` like nnU-Net's soft Dice losses (which apply the
    softmax themselves and return -DSC, so this loss lies in [-2, 0])."""

    def __init__(self, dice: nn.Module):
        super().__init__()
        self.dice = dice

    def forward(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
        if logits_a.shape != logits_b.shape or logits_a.ndim not in (4, 5) or logits_a.shape[1] < 2:
            raise ValueError(f"CPS loss needs two softmax logits of the same shape (B, C >= 2, *spatial), got "
                             f"{tuple(logits_a.shape)} and {tuple(logits_b.shape)}")
        with torch.no_grad():
            pseudo_a = logits_a.argmax(1, keepdim=True)
            pseudo_b = logits_b.argmax(1, keepdim=True)
        return self.dice(logits_a, pseudo_b) + self.dice(logits_b, pseudo_a)


def log_mean_softmax(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """log((softmax a + softmax b) / 2): 'logits' whose softmax is the mean of both networks' softmax (so nnU-Net's
    predictor, which applies the softmax and the argmax, predicts from the summed probabilities)."""
    a = torch.log_softmax(logits_a.float(), 1)
    b = torch.log_softmax(logits_b.float(), 1)
    return torch.logaddexp(a, b) - math.log(2.0)


class CPSNetworkPair(nn.Module):
    """Two segmentation networks on the same input.

    ``forward(x)`` returns the ensemble (:func:`log_mean_softmax` per deep-supervision output), which is what
    nnU-Net's validation and ``nnUNetv2_predict`` see; ``forward(x, return_both=True)`` returns both networks'
    outputs for training. Everything goes through ``forward`` so that DDP and torch.compile wrap the pair."""

    def __init__(self, net_a: nn.Module, net_b: nn.Module):
        super().__init__()
        self.net_a = net_a
        self.net_b = net_b

    def forward(self, x: torch.Tensor, return_both: bool = False):
        out_a, out_b = self.net_a(x), self.net_b(x)
        if return_both:
            return out_a, out_b
        if isinstance(out_a, (list, tuple)):
            return [log_mean_softmax(a, b) for a, b in zip(out_a, out_b)]
        return log_mean_softmax(out_a, out_b)

    def set_deep_supervision(self, enabled: bool) -> None:
        for net in (self.net_a, self.net_b):
            net.decoder.deep_supervision = enabled


def split_batch(output: Output, num_labelled: int) -> Tuple[Output, Output]:
    """(labelled part, unlabelled part) of a network output over the concatenated batch [labelled; unlabelled]."""
    if isinstance(output, (list, tuple)):
        return [o[:num_labelled] for o in output], [o[num_labelled:] for o in output]
    return output[:num_labelled], output[num_labelled:]


def full_resolution(output: Output) -> torch.Tensor:
    return output[0] if isinstance(output, (list, tuple)) else output


def agreement(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """Share of voxels where both networks' argmax agree (a diagnostic for the log)."""
    with torch.no_grad():
        return float((logits_a.argmax(1) == logits_b.argmax(1)).float().mean())


__all__: List[str] = ["SigmoidRampUp", "CrossPseudoSupervisionLoss", "CPSNetworkPair", "log_mean_softmax",
                      "split_batch", "full_resolution", "agreement"]
