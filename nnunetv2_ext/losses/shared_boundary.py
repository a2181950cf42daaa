"""Inter-class shared-boundary loss (Qiu et al., Front. Oncol. 2024, Eq. 14-16), made differentiable."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from nnunetv2_ext.losses._common import check_logits_and_target, labels_and_valid_mask, one_hot, upcast


def _max_pool_along(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Max over {x-1, x, x+1} along one spatial axis; outside the image does not count (max_pool pads with -inf)."""
    dims = x.ndim - 2
    kernel = [1] * dims
    kernel[axis] = 3
    padding = [k // 2 for k in kernel]
    pool = F.max_pool2d if dims == 2 else F.max_pool3d
    return pool(x, kernel_size=kernel, stride=1, padding=padding)


def dilate(x: torch.Tensor) -> torch.Tensor:
    """Grey dilation of (B, K, *spatial) with the cross (4-/6-neighbourhood plus centre)."""
    return torch.stack([_max_pool_along(x, a) for a in range(x.ndim - 2)]).amax(0)


def erode(x: torch.Tensor) -> torch.Tensor:
    """Grey erosion of (B, K, *spatial) with the cross; neighbours outside the image are not considered."""
    return -dilate(-x)


def shared_boundary_matrix(probs: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Soft inter-class shared-boundary matrix m_isb (Eq. 14-15), (B, C, C).

    Boundary of class i: ``b_i = P_i - erode(P_i)`` (inner morphological gradient; on one-hot input it is 1 exactly
    on the voxels of class i with a 4/6-neighbour of another class). Shared boundary with class j:
    ``b_i · dilate(P_j)`` (on one-hot input: boundary voxels of i with a neighbour in j). Then
    ``l_i = Σ b_i``, ``l_ij = Σ b_i dilate(P_j)`` and ``m(i, j) = l_ij / max(l_i, 1)``: on one-hot input l_i is a
    voxel count, so this is exactly l_ij / l_i (0 for an absent class), and the clamp bounds the gradient when the
    soft boundary is faint. m is defined for i ≠ j; the diagonal is set to 0.

    Args:
        probs: (B, C, *spatial) class probabilities (or one-hot).
        valid: optional (B, 1, *spatial) 0/1 mask of voxels that may count.
    """
    boundary = probs - erode(probs)  # (B, C, *S)
    if valid is not None:
        boundary = boundary * valid
    grown = dilate(probs)
    spatial = tuple(range(2, probs.ndim))
    # l_ij for all pairs at once: Σ_x b_i(x) dilate(P_j)(x)
    shared = torch.einsum("bi...,bj...->bij", boundary, grown)
    length = boundary.sum(spatial)  # (B, C)
    matrix = shared / length.clamp_min(1.0)[..., None]
    return matrix * (1 - torch.eye(probs.shape[1], dtype=matrix.dtype, device=matrix.device))


class InterClassSharedBoundaryLoss(nn.Module):
    """L_isb (Eq. 16): mean squared error between the shared-boundary matrices of prediction and reference.

    The paper builds the prediction matrix from the argmax, which has no gradient; here it is built from the softmax
    probabilities with soft boundaries (see :func:`shared_boundary_matrix`), which equals the discrete definition on
    one-hot input (tested). The C·(C-1) off-diagonal entries (i ≠ j, background included) enter the mean.
    With an ignore label, voxels that are ignored or have an ignored neighbour do not count, and ignored voxels count
    as background in the reference one-hot.

    Args:
        ignore_label: reference label to skip.

    Shapes (forward): logits (B, C, *spatial) (C >= 2), target (B, 1, *spatial) label map; ``sdm`` unused. Scalar.
    """

    def __init__(self, ignore_label: Optional[int] = None):
        super().__init__()
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor, sdm: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        check_logits_and_target(logits, target, "InterClassSharedBoundaryLoss")
        labels, valid = labels_and_valid_mask(target, self.ignore_label)
        if valid is not None:
            valid = erode(valid)
        probs = torch.softmax(upcast(logits), 1)
        reference = one_hot(labels, logits.shape[1], probs.dtype)
        diff = shared_boundary_matrix(probs, valid) - shared_boundary_matrix(reference, valid)
        off_diagonal = ~torch.eye(logits.shape[1], dtype=torch.bool, device=logits.device)
        return (diff[:, off_diagonal] ** 2).mean()
