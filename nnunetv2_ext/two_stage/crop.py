"""Crop a box out of a tensor (padding outside), resample it to the second stage's input size, and paste back.

Conventions: tensors are ``(*leading, *spatial)`` with ``ndim`` spatial axes last (2 for 2d, 3 for 3d). A box is a
tuple of ``(start, stop)`` per spatial axis, ``stop`` exclusive, in voxels of the tensor it was computed on. Boxes made
by :func:`expand_box` may reach outside the tensor (negative start, stop beyond the size): :func:`crop_with_padding`
fills that outside part with ``pad_value`` and :func:`paste_crop` writes back only the inside part, so
``paste_crop(crop_with_padding(x, box), box, x.shape, fill)`` equals ``x`` inside the box and ``fill`` elsewhere,
exactly (tested).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from nnunetv2_ext.two_stage.boxes import Box, bounding_box, expand_box, whole_box  # noqa: F401 (re-exported)


def _inside(box: Box, spatial_shape: Sequence[int]):
    """Slices of the tensor inside the box, the matching slices of the crop, and the (before, after) padding."""
    src, dst, pads = [], [], []
    for (lo, hi), size in zip(box, spatial_shape):
        a, b = max(lo, 0), min(hi, size)
        if b <= a:
            raise ValueError(f"box {box} lies completely outside the image of shape {tuple(spatial_shape)}")
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
        pads.append((a - lo, hi - b))
    return src, dst, pads


def crop_with_padding(x: torch.Tensor, box: Box, pad_value: float = 0.0) -> torch.Tensor:
    """``x[..., box]``; the part of the box outside ``x`` is filled with ``pad_value`` (differentiable)."""
    nd = len(box)
    src, _, pads = _inside(box, x.shape[-nd:])
    crop = x[(Ellipsis, *src)]
    flat_pad = [p for before_after in reversed(pads) for p in before_after]  # F.pad wants the last axis first
    if any(flat_pad):
        crop = F.pad(crop, flat_pad, mode="constant", value=pad_value)
    return crop


def paste_crop(crop: torch.Tensor, box: Box, spatial_shape: Sequence[int], fill: float) -> torch.Tensor:
    """Tensor of ``(*crop.shape[:-nd], *spatial_shape)`` that holds ``crop`` inside the box and ``fill`` elsewhere
    (differentiable with respect to ``crop``)."""
    nd = len(box)
    src, dst, _ = _inside(box, spatial_shape)
    out = crop.new_full((*crop.shape[:-nd], *spatial_shape), fill)
    out[(Ellipsis, *src)] = crop[(Ellipsis, *dst)]
    return out


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(Bi/tri)linear resize of ``(B, C, *spatial)`` to ``size`` (align_corners=False); no-op if it already matches."""
    if tuple(x.shape[2:]) == tuple(int(s) for s in size):
        return x
    mode = "trilinear" if x.ndim == 5 else "bilinear"
    return F.interpolate(x, size=tuple(int(s) for s in size), mode=mode, align_corners=False)


def crop_and_resize(x: torch.Tensor, box: Box, out_size: Sequence[int], pad_value: float = 0.0) -> torch.Tensor:
    """``x[..., box]`` (padded outside ``x``) resampled linearly to ``out_size``; ``x`` is (B, C, *S)."""
    return resize_to(crop_with_padding(x, box, pad_value), out_size)


def resize_and_paste(crop: torch.Tensor, box: Box, spatial_shape: Sequence[int], fill: float) -> torch.Tensor:
    """Inverse of :func:`crop_and_resize`: ``crop`` (B, C, *out) resampled to the box's size and pasted into a
    (B, C, *spatial_shape) tensor filled with ``fill`` elsewhere."""
    return paste_crop(resize_to(crop, [hi - lo for lo, hi in box]), box, spatial_shape, fill)
