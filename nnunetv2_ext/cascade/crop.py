"""Crop to the organ box and paste back (stage 2 of the cascade, issue 6).

Conventions: tensors are ``(*leading, *spatial)`` with ``ndim`` spatial axes last (2 for 2d, 3 for 3d). A box is a
tuple of ``(start, stop)`` per spatial axis, ``stop`` exclusive, in voxels of the tensor it was computed on. Boxes made
by :func:`expand_box` may reach outside the tensor (negative start, stop beyond the size): :func:`crop_with_padding`
fills that outside part with ``pad_value`` and :func:`paste_crop` writes back only the inside part, so
``paste_crop(crop_with_padding(x, box), box, x.shape, fill)`` equals ``x`` inside the box and ``fill`` elsewhere,
exactly (tested).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Box = Tuple[Tuple[int, int], ...]


def bounding_box(mask: torch.Tensor) -> Optional[Box]:
    """Smallest box holding all non-zero voxels of ``mask`` (spatial axes only, no leading axes); None if empty."""
    if not bool(mask.any()):
        return None
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = torch.nonzero(mask.any(dim=other) if other else mask, as_tuple=False).flatten()
        box.append((int(nz[0]), int(nz[-1]) + 1))
    return tuple(box)


def expand_box(box: Box, margin: Union[int, Sequence[int]], multiple_of: Sequence[int],
               min_size: Sequence[int]) -> Box:
    """Box grown by ``margin`` voxels on each side, then symmetrically to at least ``min_size`` and to a multiple of
    ``multiple_of`` per axis (so that every pooling of stage 2 divides it). Not clipped to the image: the part
    outside is padded by :func:`crop_with_padding`."""
    margins = [margin] * len(box) if isinstance(margin, int) else list(margin)
    if len(margins) != len(box) or len(multiple_of) != len(box) or len(min_size) != len(box):
        raise ValueError(f"box {box}, margin {margin}, multiple_of {multiple_of} and min_size {min_size} must have "
                         f"one entry per spatial axis")
    out = []
    for (lo, hi), m, mult, mn in zip(box, margins, multiple_of, min_size):
        if m < 0:
            raise ValueError(f"crop margin must be >= 0, got {margin}")
        lo, hi = lo - m, hi + m
        size = max(hi - lo, mn)
        size = -(-size // mult) * mult
        extra = size - (hi - lo)
        lo -= extra // 2
        out.append((lo, lo + size))
    return tuple(out)


def whole_box(spatial_shape: Sequence[int]) -> Box:
    return tuple((0, int(s)) for s in spatial_shape)


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
