"""Connected components of a prediction, and where the false-positive ones lie relative to the organ.

A prediction's foreground is split into connected components (full connectivity: 26 neighbours in 3D, 8 in 2D).
Each component is described by :class:`Component`: its size, the slices it covers (axis 0, the axial axis of
nnU-Net's arrays) and whether it touches the reference. A component that does not touch the reference is a
*false-positive component*; its **slice distance** is how many slices it lies outside the reference's slab (the
range of slices with reference foreground): 0 when it overlaps the slab's slices (a false positive beside the
organ, in the organ's slices), 1 for the slice just above or below the slab, and so on; None when the reference is
empty (no slab). For a slice-sampling method (PNSS drops negative slices far from the slab) this distance separates
false positives in slices the method trained on from those in slices it stopped seeing.

Used by the benchmark report (components per case, the false-positive table) and the demo.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

#: slice-distance bins of the false-positive summary: within the slab's slices, 1-2, 3-5, more than 5 slices away
DISTANCE_BINS = ((0, 0), (1, 2), (3, 5), (6, None))


@dataclass(frozen=True)
class Component:
    voxels: int
    first_slice: int
    last_slice: int
    touches_reference: bool
    slice_distance: Optional[int]
    """Slices between the component and the reference's slab (0: within the slab's slices); None without reference
    foreground."""

    def as_dict(self) -> dict:
        return asdict(self)


def reference_slab(reference: np.ndarray) -> Optional[tuple]:
    """(first, last) slice (axis 0) with reference foreground, or None when the reference is empty."""
    rows = np.flatnonzero(np.asarray(reference).reshape(reference.shape[0], -1).any(1))
    return (int(rows[0]), int(rows[-1])) if rows.size else None


def slice_distance(first: int, last: int, slab: Optional[tuple]) -> Optional[int]:
    """Slices between [first, last] and the slab [s0, s1]: 0 when they overlap, else the gap + 1 (the next slice
    is 1 away); None without a slab."""
    if slab is None:
        return None
    s0, s1 = slab
    if last < s0:
        return s0 - last
    if first > s1:
        return first - s1
    return 0


def components(prediction: np.ndarray, reference: Optional[np.ndarray] = None) -> List[Component]:
    """The foreground components of ``prediction`` (any label > 0), largest first; with ``reference`` (same shape),
    whether each touches the reference foreground and its slice distance from the reference's slab."""
    from scipy.ndimage import find_objects, label
    pred = np.asarray(prediction) > 0
    ref = None if reference is None else np.asarray(reference) > 0
    if ref is not None and ref.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    labelled, n = label(pred, structure=np.ones((3,) * pred.ndim))
    if n == 0:
        return []
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)
    touching = set(np.unique(labelled[ref]).tolist()) - {0} if ref is not None else set()
    slab = reference_slab(ref) if ref is not None else None
    out = []
    for i, box in enumerate(find_objects(labelled), start=1):
        first, last = box[0].start, box[0].stop - 1
        touches = i in touching
        out.append(Component(int(sizes[i]), int(first), int(last), touches,
                             None if ref is None else (0 if touches else slice_distance(first, last, slab))))
    return sorted(out, key=lambda c: (-c.voxels, c.first_slice))


def false_positive_summary(per_case: Dict[str, Sequence[Component]]) -> dict:
    """Over cases: components per case, false-positive (not touching the reference) components per case, cases with
    any, their median size in voxels, and how many lie at each slice distance (:data:`DISTANCE_BINS`; ``no_slab``
    for cases with an empty reference)."""
    n = max(len(per_case), 1)
    fps = [c for comps in per_case.values() for c in comps if not c.touches_reference]
    bins = {}
    for lo, hi in DISTANCE_BINS:
        key = f"{lo}" if hi == lo else (f"{lo}-{hi}" if hi is not None else f">{lo - 1}")
        bins[key] = sum(1 for c in fps if c.slice_distance is not None and c.slice_distance >= lo and
                        (hi is None or c.slice_distance <= hi))
    bins["no_slab"] = sum(1 for c in fps if c.slice_distance is None)
    return {"cases": len(per_case),
            "components_per_case": sum(len(c) for c in per_case.values()) / n,
            "fp_components_per_case": len(fps) / n,
            "cases_with_fp": sum(1 for comps in per_case.values() if any(not c.touches_reference for c in comps)),
            "fp_median_voxels": float(np.median([c.voxels for c in fps])) if fps else 0.0,
            "fp_voxels_per_case": sum(c.voxels for c in fps) / n,
            "fp_by_slice_distance": bins}
