"""The reference module's choices and the propagation plan (Pham et al. §2.2, Fig. 2-3).

- :func:`uniform_slices`: the k slices the reference model segments, uniformly spread over the volume (the centre
  of each of k equal parts of the slice axis).
- :func:`largest_masks`: of those, the ``keep`` masks with the largest organ areas (empty masks are never kept).
- :func:`propagation_plan`: from every kept reference, both directions, slice by slice, until the next reference or
  the end of the volume; a slice between two references is reached from both (the two predictions are averaged).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple


def uniform_slices(num_slices: int, k: int) -> List[int]:
    """Indices ``floor((i + 1/2) Z / k)``, i = 0..k-1: k distinct slices spread uniformly over Z slices."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (reference slices) must be an integer >= 1, got {k!r}")
    if k > num_slices:
        raise ValueError(f"k = {k} reference slices but the volume has only {num_slices} slices")
    return [int((i + 0.5) * num_slices / k) for i in range(k)]


def largest_masks(areas: Dict[int, int], keep: int) -> List[int]:
    """The slices of the ``keep`` largest non-empty masks (``areas``: slice -> foreground voxels), in slice order;
    ties go to the lower slice."""
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ValueError(f"keep (reference masks) must be an integer >= 1, got {keep!r}")
    ranked = sorted((z for z, a in areas.items() if a > 0), key=lambda z: (-areas[z], z))
    return sorted(ranked[:keep])


def propagation_plan(num_slices: int, references: Sequence[int]) -> List[List[Tuple[int, int]]]:
    """Chains of ``(slice, previous slice)`` steps, one chain per reference and direction, each starting next to its
    reference and stopping before the next reference (or at the volume's end). Every non-reference slice is in one
    chain (outside the outermost references) or two (between two references)."""
    refs = sorted(set(int(r) for r in references))
    if not refs:
        raise ValueError("propagation needs at least one reference slice")
    if refs[0] < 0 or refs[-1] >= num_slices:
        raise ValueError(f"reference slices {refs} outside the volume's {num_slices} slices")
    chains = []
    for i, r in enumerate(refs):
        upper = refs[i + 1] if i + 1 < len(refs) else num_slices
        lower = refs[i - 1] if i > 0 else -1
        for stop, step in ((upper, 1), (lower, -1)):
            chain = [(z, z - step) for z in range(r + step, stop, step)]
            if chain:
                chains.append(chain)
    return chains
