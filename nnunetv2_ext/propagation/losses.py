"""Losses of the propagation network (Pham et al. §2.2: "OhemCE + Lovász"), binary (one label per network).

- :class:`OhemBCELoss`: online hard example mining on the per-pixel binary cross-entropy: the mean over the
  ``top_p`` share of pixels with the largest loss (STCN's bootstrapped CE, ``model/losses.py``, top 15 %).
- :class:`LovaszHingeLoss`: the Lovász hinge (Berman et al., "The Lovász-Softmax loss", CVPR 2018, Eq. 9-10 and
  Alg. 1): the Lovász extension of the Jaccard loss applied to the hinge errors ``max(0, 1 - m_i s_i)`` (signs
  ``s = 2y - 1``, margins ``m`` = logits), per image, then averaged. Written after the authors' reference code
  (``bermanmaxim/LovaszSoftmax``, ``lovasz_losses.py: lovasz_hinge_flat / lovasz_grad``, MIT): no maintained package
  among our dependencies provides it (MONAI, nnU-Net and dynamic-network-architectures do not).

Shapes: logits and targets (B, 1, H, W) (targets in {0, 1}); both return a scalar.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lovasz_grad(sorted_truth: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. the sorted errors (Berman et al. Eq. 8 / Alg. 1):
    ``J_i = 1 - intersection_i / union_i`` over the first i sorted pixels, then its discrete derivative."""
    p = len(sorted_truth)
    gts = sorted_truth.sum()
    intersection = gts - sorted_truth.cumsum(0)
    union = gts + (1 - sorted_truth).cumsum(0)
    jaccard = 1.0 - intersection / union
    if p > 1:
        jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
    return jaccard


def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovász hinge of one image: logits (P,), labels (P,) in {0, 1}."""
    if logits.numel() == 0:
        return logits.sum() * 0.0
    signs = 2.0 * labels.float() - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, order = torch.sort(errors, descending=True)
    grad = lovasz_grad(labels.float()[order])
    return torch.dot(F.relu(errors_sorted), grad)


class LovaszHingeLoss(nn.Module):
    """Mean over the batch of :func:`lovasz_hinge_flat` per image (module docstring)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
        losses = [lovasz_hinge_flat(l.flatten().float(), t.flatten()) for l, t in zip(logits, target)]
        return torch.stack(losses).mean()


class OhemBCELoss(nn.Module):
    """Mean binary cross-entropy of the ``top_p`` share of pixels with the largest loss (at least one pixel)."""

    def __init__(self, top_p: float = 0.15):
        super().__init__()
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.top_p = float(top_p)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raw = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten()
        k = max(1, int(raw.numel() * self.top_p))
        return torch.topk(raw, k, sorted=False)[0].mean()


class PropagationLoss(nn.Module):
    """OhemCE + Lovász (Pham et al. §2.2), weights 1 and 1."""

    def __init__(self, top_p: float = 0.15):
        super().__init__()
        self.ohem = OhemBCELoss(top_p)
        self.lovasz = LovaszHingeLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ohem(logits, target) + self.lovasz(logits, target)
