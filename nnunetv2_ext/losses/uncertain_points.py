"""Pixel-wise loss on uncertain points (PointRend, Kirillov et al. 2020), E_P of Eq. 10 of Liu, Duan, Zeng (2021)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from nnunetv2_ext.losses._common import check_logits_and_target, upcast


def point_sample(values: torch.Tensor, points: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Values at continuous points.

    Args:
        values: (B, C, *spatial), 2 or 3 spatial axes.
        points: (B, N, D) coordinates in [0, 1] along the spatial axes in array order (axis 0 first); 0 and 1 are the
            outer edges of the first and last voxel (``align_corners=False``), voxel centres lie at (i + 0.5) / size.
        mode: 'bilinear' (linear in every axis; trilinear in 3D) or 'nearest'.

    Returns:
        (B, C, N).
    """
    dims = values.ndim - 2
    grid = points.flip(-1) * 2 - 1  # grid_sample wants (x, y[, z]) = the LAST array axis first, in [-1, 1]
    grid = grid.view(points.shape[0], *([1] * (dims - 1)), points.shape[1], dims).to(values.dtype)
    # border padding: a point in the outer half voxel takes the edge voxel's value (zero padding would blend it with
    # 0 there, and uncertain-point selection would see a band of false ties along the patch border)
    sampled = F.grid_sample(values, grid, mode=mode, padding_mode="border", align_corners=False)
    return sampled.reshape(values.shape[0], values.shape[1], points.shape[1])


def uncertainty_from_logits(point_logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty (B, C, N) -> (B, N): minus the margin between the two largest class probabilities (larger = more
    uncertain; for two classes this is -|p1 - p0|)."""
    top2 = torch.softmax(point_logits, 1).topk(2, dim=1).values
    return top2[:, 1] - top2[:, 0]


class UncertainPointLoss(nn.Module):
    """E_P (Eq. 10): cross-entropy on N points per sample, most of them where the prediction is least certain.

    Selection (no gradient, PointRend training scheme): draw ``k·N`` points uniformly in the patch, keep the ``m·N``
    with the smallest margin between the two largest softmax probabilities, add ``(1-m)·N`` new uniform points.
    Logits at the points are interpolated (bilinear/trilinear, differentiable), reference labels taken from the
    nearest voxel. Points whose reference is the ignore label do not count.

    Args:
        num_points: N, points per sample.
        oversample_ratio: k >= 1 (paper: 3).
        importance_ratio: m in [0, 1] (paper: 0.75).
        ignore_label: reference label to skip.
        selection_stride: the uncertainty that picks the m·N points is read from the logits averaged over blocks of
            this many voxels per spatial axis (Liu, Duan, Zeng select on the stride-4 logits: 4); the CE is still
            taken from the full-resolution logits at the chosen points. 1 (default) selects on the full resolution.

    Shapes (forward): logits (B, C, *spatial) (C >= 2), target (B, 1, *spatial) label map; ``sdm`` is accepted and
    unused (uniform interface of the structural terms). Returns a scalar.
    """

    def __init__(self, num_points: int = 2048, oversample_ratio: float = 3.0, importance_ratio: float = 0.75,
                 ignore_label: Optional[int] = None, selection_stride: int = 1):
        super().__init__()
        if not (isinstance(selection_stride, int) and selection_stride >= 1):
            raise ValueError(f"UncertainPointLoss: selection_stride must be an int >= 1, got {selection_stride!r}")
        if int(num_points) < 1:
            raise ValueError(f"UncertainPointLoss: num_points must be >= 1, got {num_points}")
        if not oversample_ratio >= 1:
            raise ValueError(f"UncertainPointLoss: oversample_ratio (k) must be >= 1, got {oversample_ratio}")
        if not 0 <= importance_ratio <= 1:
            raise ValueError(f"UncertainPointLoss: importance_ratio (m) must be in [0, 1], got {importance_ratio}")
        self.num_points = int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_ratio = float(importance_ratio)
        self.ignore_label = ignore_label
        self.selection_stride = selection_stride

    def selection_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits the uncertainty is read from: block means over ``selection_stride`` voxels per axis (adaptive
        pooling to ceil(size / stride), so that coordinates in [0, 1] keep covering the same extent)."""
        if self.selection_stride == 1:
            return logits
        size = [max(1, -(-n // self.selection_stride)) for n in logits.shape[2:]]
        pool = F.adaptive_avg_pool2d if logits.ndim == 4 else F.adaptive_avg_pool3d
        return pool(logits, size)

    @torch.no_grad()
    def select_points(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, N, D) point coordinates in [0, 1] (see :func:`point_sample`)."""
        b, dims, device = logits.shape[0], logits.ndim - 2, logits.device
        num_uncertain = int(round(self.importance_ratio * self.num_points))
        num_candidates = max(num_uncertain, int(round(self.oversample_ratio * self.num_points)))
        candidates = torch.rand(b, num_candidates, dims, device=device)
        uncertainty = uncertainty_from_logits(point_sample(upcast(self.selection_logits(logits.detach())), candidates))
        keep = uncertainty.topk(num_uncertain, dim=1).indices
        uncertain_points = torch.gather(candidates, 1, keep[..., None].expand(-1, -1, dims))
        random_points = torch.rand(b, self.num_points - num_uncertain, dims, device=device)
        return torch.cat((uncertain_points, random_points), 1)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, sdm: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        check_logits_and_target(logits, target, "UncertainPointLoss")
        points = self.select_points(logits)
        point_logits = point_sample(upcast(logits), points)  # (B, C, N)
        point_labels = point_sample(target.float(), points, mode="nearest")[:, 0].round().long()  # (B, N)
        ignore_index = -100 if self.ignore_label is None else int(self.ignore_label)
        if not (point_labels != ignore_index).any():
            return point_logits.sum() * 0.0  # every point ignored: no signal, keep the graph
        return F.cross_entropy(point_logits, point_labels, ignore_index=ignore_index)
