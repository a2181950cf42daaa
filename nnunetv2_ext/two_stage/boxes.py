"""Box geometry of two-stage methods: the organ box of a mask on the whole slice / volume, margin K, the box fitted to
the second stage's input (so a small organ is magnified, "small target, large crop"), its size in mm.

Conventions: a box is a tuple of ``(start, stop)`` per spatial axis, ``stop`` exclusive, in voxels of the array it was
computed on; boxes may reach outside the array (negative start, stop beyond the size), the crop functions of
:mod:`nnunetv2_ext.two_stage.crop` pad that part. ``crop_ndim`` is the number of axes a box covers: 2 for nnU-Net's
2d configuration (one box per slice of a (Z, Y, X) case, on axes Y, X), 3 for 3d configurations (one box per case).
Spacings are in mm, in the same axis order as the array.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

Box = Tuple[Tuple[int, int], ...]
Margin = Union[int, Sequence[int]]


def bounding_box(mask) -> Optional[Box]:
    """Smallest box holding all non-zero voxels of ``mask`` (torch tensor or numpy array; spatial axes only, no
    leading axes); None if empty."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not bool(mask.any()):
        return None
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = torch.nonzero(mask.any(dim=other) if other else mask, as_tuple=False).flatten()
        box.append((int(nz[0]), int(nz[-1]) + 1))
    return tuple(box)


def largest_component(mask):
    """The largest connected component (face connectivity) of a binary mask (torch tensor or numpy array, any
    dimension), same type and device; an empty mask is returned unchanged. Removes stage-1 false positives far
    from the organ before its box is taken."""
    from scipy import ndimage
    is_torch = isinstance(mask, torch.Tensor)
    array = mask.detach().cpu().numpy().astype(bool) if is_torch else np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(array)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        array = labels == (int(np.argmax(sizes)) + 1)
    return torch.from_numpy(array).to(mask.device) if is_torch else array


def jitter_margin(margin: Margin, ndim: int, jitter: float, rng=None) -> Tuple[Tuple[int, int], ...]:
    """Per axis (before, after) margins drawn uniformly from ``K * (1 +- jitter)`` (training augmentation of the box:
    the second stage sees boxes of varying tightness, as stage 1's predicted boxes will be). ``rng``: a numpy
    Generator / RandomState; default numpy's global state (seeded runs stay repeatable)."""
    k = normalise_margin(margin, ndim)
    if not 0 <= jitter <= 1:
        raise ValueError(f"box jitter must lie in [0, 1], got {jitter}")
    rng = rng if rng is not None else np.random
    return tuple(tuple(int(round(m * (1 + jitter * rng.uniform(-1, 1)))) for _ in range(2)) for m in k)


def whole_box(spatial_shape: Sequence[int]) -> Box:
    return tuple((0, int(s)) for s in spatial_shape)


def box_size(box: Box) -> Tuple[int, ...]:
    return tuple(hi - lo for lo, hi in box)


def normalise_margin(margin: Margin, ndim: int) -> Tuple[int, ...]:
    """Margin K as one non-negative int per axis; raises ValueError naming the problem."""
    if isinstance(margin, (int, np.integer, float)):
        values = [margin] * ndim
    else:
        try:
            values = list(margin)
        except TypeError:
            raise ValueError(f"crop margin K={margin!r} must be one int or {ndim} ints (one per cropped axis)")
    if len(values) != ndim:
        raise ValueError(f"crop margin K={margin!r} must be one int or {ndim} ints (one per cropped axis)")
    for v in values:
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"crop margin K={margin!r} must be non-negative integers (voxels)")
    return tuple(int(v) for v in values)


def grow_box(box: Box, margin) -> Box:
    """Box grown by K voxels on each side (not clipped: the part outside the image is padded when cropping);
    ``margin`` may also give (before, after) per axis (see :func:`jitter_margin`)."""
    if not isinstance(margin, (int, np.integer)) and len(margin) == len(box) and all(
            isinstance(m, (tuple, list)) for m in margin):
        return tuple((lo - int(a), hi + int(b)) for (lo, hi), (a, b) in zip(box, margin))
    k = normalise_margin(margin, len(box))
    return tuple((lo - m, hi + m) for (lo, hi), m in zip(box, k))


def expand_box(box: Box, margin: Margin, multiple_of: Sequence[int], min_size: Sequence[int]) -> Box:
    """Box grown by ``margin`` voxels on each side, then symmetrically to at least ``min_size`` and to a multiple of
    ``multiple_of`` per axis. Not clipped to the image."""
    if len(multiple_of) != len(box) or len(min_size) != len(box):
        raise ValueError(f"box {box}, multiple_of {multiple_of} and min_size {min_size} must have one entry per "
                         f"spatial axis")
    out = []
    for (lo, hi), mult, mn in zip(grow_box(box, margin), multiple_of, min_size):
        size = max(hi - lo, mn)
        size = -(-size // mult) * mult
        lo -= (size - (hi - lo)) // 2
        out.append((lo, lo + size))
    return tuple(out)


def fit_box_to_patch(box: Box, patch_size: Sequence[int], max_zoom: float = 4.0, min_zoom: float = 1.0
                     ) -> Tuple[Box, Tuple[int, ...], float]:
    """Box grown symmetrically to the aspect ratio of ``patch_size`` and the zoom that maps it onto the patch.

    ``zoom = clip(min_i patch_i / size_i, min_zoom, max_zoom)``: a small box is magnified (at most ``max_zoom``), a
    box larger than the patch is shrunk down to ``min_zoom`` (default 1: not shrunk; the second stage then has to
    cover it in tiles). The box is grown to ``size_i' = max(size_i, round(patch_i / zoom))``; the crop is resampled to
    ``out_size`` voxels, which is exactly ``patch_size`` unless ``min_zoom`` kept a box larger than the patch (then
    ``round(size_i' * zoom)`` on those axes). Returns (grown box, out size, zoom).
    """
    if len(patch_size) != len(box):
        raise ValueError(f"box {box} and patch size {tuple(patch_size)} differ in dimension")
    if not 0 < min_zoom <= 1 <= max_zoom:
        raise ValueError(f"need 0 < min_zoom <= 1 <= max_zoom, got {min_zoom}, {max_zoom}")
    sizes = box_size(box)
    if min(sizes) < 1:
        raise ValueError(f"empty box {box}")
    fit = min(p / s for p, s in zip(patch_size, sizes))
    zoom = max(float(min_zoom), min(float(max_zoom), fit))
    grown, out = [], []
    for (lo, hi), size, p in zip(box, sizes, patch_size):
        new_size = max(size, int(round(p / zoom)))
        lo -= (new_size - size) // 2
        grown.append((lo, lo + new_size))
        out.append(int(p) if zoom <= fit else max(int(p), int(round(new_size * zoom))))
    return tuple(grown), tuple(out), zoom


def box_in_mm(box: Box, spacing: Sequence[float]) -> Tuple[float, ...]:
    """Extent of the box in mm per axis (``spacing``: mm per voxel, same axes as the box)."""
    if len(spacing) != len(box):
        raise ValueError(f"spacing {tuple(spacing)} and box {box} differ in dimension")
    return tuple(float(s) * (hi - lo) for (lo, hi), s in zip(box, spacing))


def margin_in_mm(margin: Margin, spacing: Sequence[float]) -> Tuple[float, ...]:
    return tuple(float(k) * float(s) for k, s in zip(normalise_margin(margin, len(spacing)), spacing))


def check_margin_leaves_room(margin: Margin, patch_size: Sequence[int], min_room: Sequence[int]) -> Tuple[int, ...]:
    """K must leave at least ``min_room`` voxels of organ in the second stage's patch on every axis:
    ``2 K_i + min_room_i <= patch_i`` (``min_room``: e.g. stage 2's total stride, the smallest input it can see).
    Returns K per axis; raises ValueError with the largest K that fits."""
    k = normalise_margin(margin, len(patch_size))
    bad = [i for i, (m, p, r) in enumerate(zip(k, patch_size, min_room)) if 2 * m + r > p]
    if bad:
        largest = [max(0, (p - r) // 2) for p, r in zip(patch_size, min_room)]
        raise ValueError(f"crop margin K={tuple(k)} leaves no room for the organ in the tumour stage's patch "
                         f"{tuple(int(p) for p in patch_size)} on axis {bad}: 2K + {tuple(min_room)} (smallest input "
                         f"of the stage) must be <= the patch; largest K per axis: {tuple(largest)}")
    return k


@dataclass
class CaseBoxes:
    """Boxes of one case: ``boxes[z]`` per slice (crop_ndim 2; key = slice index) or ``boxes[None]`` (crop_ndim 3);
    only non-empty entries. ``union`` is the box over all of them in the case's (Z, Y, X) voxels (slices included in
    2d), ``union_mm`` its extent in mm (None without spacing)."""
    crop_ndim: int
    boxes: Dict[Optional[int], Box] = field(default_factory=dict)
    union: Optional[Box] = None
    union_mm: Optional[Tuple[float, ...]] = None

    @property
    def found(self) -> bool:
        return bool(self.boxes)


def case_boxes(mask, crop_ndim: int, spacing: Optional[Sequence[float]] = None) -> CaseBoxes:
    """Organ boxes of a whole case from its mask (Z, Y, X) (or (Y, X) / any 3 spatial axes): one box per slice for
    ``crop_ndim`` 2, one box for the volume for ``crop_ndim`` 3 (no margin yet; see :func:`grow_box`)."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    mask = mask.bool()
    if crop_ndim not in (2, 3) or mask.ndim < crop_ndim:
        raise ValueError(f"crop_ndim must be 2 or 3 and at most the mask's dimension {mask.ndim}, got {crop_ndim}")
    out = CaseBoxes(crop_ndim)
    if crop_ndim == mask.ndim:
        box = bounding_box(mask)
        if box is not None:
            out.boxes[None] = box
    else:
        if mask.ndim != 3:
            raise ValueError(f"per-slice boxes need a (Z, Y, X) mask, got shape {tuple(mask.shape)}")
        for z in torch.nonzero(mask.flatten(1).any(1), as_tuple=False).flatten().tolist():
            out.boxes[int(z)] = bounding_box(mask[z])
    out.union = bounding_box(mask)
    if out.union is not None and spacing is not None:
        out.union_mm = box_in_mm(out.union, spacing)
    return out


def format_box(box: Optional[Box], spacing: Optional[Sequence[float]] = None) -> str:
    """``[lo, hi) x ... voxels (a x b x c mm)`` for logs."""
    if box is None:
        return "none"
    text = " x ".join(f"[{lo}, {hi})" for lo, hi in box) + " voxels"
    if spacing is not None:
        text += " (" + " x ".join(f"{v:.1f}" for v in box_in_mm(box, spacing)) + " mm)"
    return text


def boxes_exceeding_patch(sizes: List[Sequence[int]], margin: Margin, patch_size: Sequence[int]) -> List[int]:
    """Indices of the box sizes that, grown by K on each side, exceed ``patch_size`` on some axis."""
    k = normalise_margin(margin, len(patch_size))
    return [i for i, s in enumerate(sizes) if any(a + 2 * m > p for a, m, p in zip(s, k, patch_size))]

