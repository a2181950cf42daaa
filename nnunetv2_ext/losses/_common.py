"""Small helpers shared by the loss modules (shape checks, ignore label)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def check_logits_and_target(logits: torch.Tensor, target: torch.Tensor, name: str) -> None:
    """logits (B, C, *spatial) and an integer label map target (B, 1, *spatial) with the same B and spatial shape."""
    if logits.ndim not in (4, 5):
        raise ValueError(f"{name}: logits must be (B, C, X, Y) or (B, C, X, Y, Z), got {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"{name}: needs softmax logits with >= 2 channels (background + foreground), got "
                         f"{logits.shape[1]}")
    if target.ndim != logits.ndim or target.shape[1] != 1 or target.shape[0] != logits.shape[0] \
            or target.shape[2:] != logits.shape[2:]:
        raise ValueError(f"{name}: target must be a label map (B, 1, *spatial) matching logits "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}")


def check_sdm(logits: torch.Tensor, sdm: Optional[torch.Tensor], name: str) -> None:
    """sdm (B, C-1, *spatial): one signed distance map per foreground class, matching logits."""
    expected = (logits.shape[0], logits.shape[1] - 1) + tuple(logits.shape[2:])
    if sdm is None:
        raise ValueError(f"{name} needs signed distance maps (append SignedDistanceMapTransform to the pipeline)")
    if tuple(sdm.shape) != expected:
        raise ValueError(f"{name}: signed distance maps must have shape {expected} (B, C-1, *spatial), got "
                         f"{tuple(sdm.shape)}")


def labels_and_valid_mask(target: torch.Tensor, ignore_label: Optional[int]
                          ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(labels as long with the ignore label set to 0, float valid mask (B, 1, *spatial) or None)."""
    labels = target.long()
    if ignore_label is None:
        return labels, None
    valid = labels != ignore_label
    return torch.where(valid, labels, torch.zeros_like(labels)), valid.to(torch.float32)


def one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """labels (B, 1, *spatial) long -> one-hot (B, num_classes, *spatial)."""
    out = torch.zeros((labels.shape[0], num_classes) + tuple(labels.shape[2:]), device=labels.device, dtype=dtype)
    return out.scatter_(1, labels, 1)


def masked_mean(values: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of values (B, K, *spatial) over all entries whose voxel is valid (valid: (B, 1, *spatial) or None).

    With no valid voxel at all the result is 0 (connected to the graph, so backward works)."""
    if valid is None:
        return values.mean()
    count = valid.sum() * values.shape[1]
    return (values * valid).sum() / count.clamp_min(1.0)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 (autocast) -> float32 for stable softmax and sums; float32/float64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
