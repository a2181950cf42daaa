"""Per-mask segmentation metrics (pure numpy; distances with the ``edt`` library).

All functions take boolean masks of one label (or region) of one case, in array axis order, with ``spacing`` in mm in
the same axis order (nnU-Net's ``properties['spacing']``). 2D masks and 3D masks are both supported.

Conventions (see docs/evaluation.md, "Conventions"):

* Overlap metrics from the voxel counts TP, FP, FN, TN (voxels with the ignore label are left out of all counts):
  DSC = 2TP / (2TP + FP + FN) (Eq. 1 of the PNSS/HESS paper), IoU = TP / (TP + FP + FN),
  precision = TP / (TP + FP), recall (sensitivity) = TP / (TP + FN), specificity = TN / (TN + FP).
  A ratio whose denominator is 0 is 1 when both masks are empty (nothing to find, nothing predicted: Eq. 1 of the
  PNSS paper sets DSC = 1) and NaN (undefined, counted separately, left out of means) otherwise: precision when
  nothing is predicted but the reference is not empty, recall when the reference is empty but something is
  predicted. Those cases are fully scored by the other ratio (recall 0, resp. precision 0) and by DSC = 0.
* Surfaces are the mask voxels with at least one face-neighbour outside the mask (the mask minus its erosion with
  the 6-neighbourhood in 3D / 4-neighbourhood in 2D; outside the image counts as background). Distances are
  Euclidean in mm between voxel centres: from each surface voxel of one mask to the nearest surface voxel of the
  other, computed with an exact anisotropic EDT on the bounding box of both masks only.
* HD95 = max of the two directed 95th percentiles (the convention of MONAI and MedPy); ASSD = mean of all directed
  distances of both surfaces pooled (MONAI's symmetric average surface distance). Both are NaN when either mask
  is empty (undefined: counted, not averaged in).
* NSD (normalised surface Dice at tolerance tau mm, Nikolov et al. 2021, as used by the FLARE challenges) =
  (#surface voxels of A within tau of B + #surface voxels of B within tau of A) / (#surface voxels of A + of B).
  FLARE's conventions for empty masks: both empty -> 1, exactly one empty -> 0. The surface elements are counted
  as voxels (MONAI ``compute_surface_dice(use_subvoxels=False)``), not weighted by surfel area as in DeepMind's
  ``surface-distance`` code used by FLARE, which can differ by a few percent on coarse grids.
* Volumes in ml; ``vol_diff_ml`` = V_pred - V_ref; ``rel_vol_diff`` = (V_pred - V_ref) / V_ref (NaN for an empty
  reference).
"""
from typing import Dict, Optional, Sequence, Tuple

import edt
import numpy as np
from scipy.ndimage import binary_erosion, generate_binary_structure

#: metric name -> (True if higher is better, unit). ``None`` for "better" means "closer to 0 is better".
METRICS: Dict[str, Tuple[Optional[bool], str]] = {
    "DSC": (True, ""),
    "IoU": (True, ""),
    "precision": (True, ""),
    "recall": (True, ""),
    "specificity": (True, ""),
    "HD95": (False, "mm"),
    "ASSD": (False, "mm"),
    "NSD": (True, ""),
    "vol_ref_ml": (None, "ml"),
    "vol_pred_ml": (None, "ml"),
    "vol_diff_ml": (None, "ml"),
    "rel_vol_diff": (None, ""),
}
#: metrics whose cases can be ranked from best to worst (see ``badness``); the volumes themselves cannot
RANKED_METRICS = ("DSC", "IoU", "precision", "recall", "specificity", "HD95", "ASSD", "NSD", "vol_diff_ml",
                  "rel_vol_diff")

DEFAULT_NSD_TOLERANCE_MM = 1.0


def badness(metric: str, values: np.ndarray) -> np.ndarray:
    """Monotone "how bad" score used to rank cases: higher = worse. Volume differences are bad in both directions."""
    higher_is_better = METRICS[metric][0]
    values = np.asarray(values, dtype=float)
    if higher_is_better is None:
        return np.abs(values)
    return -values if higher_is_better else values


def _ratio(numerator: float, denominator: float, both_empty: bool) -> float:
    if denominator > 0:
        return float(numerator) / float(denominator)
    return 1.0 if both_empty else float("nan")


def bounding_box(mask: np.ndarray) -> Optional[Tuple[slice, ...]]:
    """Smallest box (tuple of slices) holding all True voxels of ``mask``; None for an empty mask."""
    box = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        nonzero = np.flatnonzero(np.any(mask, axis=other_axes))
        if nonzero.size == 0:
            return None
        box.append(slice(int(nonzero[0]), int(nonzero[-1]) + 1))
    return tuple(box)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one face-neighbour outside the mask (outside the array counts as background)."""
    # border_value=0: voxels on the array edge are surface, so cropping to a box holding the whole mask is exact
    eroded = binary_erosion(mask, structure=generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def directed_surface_distances(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float]
                               ) -> Tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``mask_ref`` to the nearest surface voxel of ``mask_pred``, and
    the other way round. Both masks must be non-empty; they are cropped to the bounding box of their union first
    (exact: every nearest surface voxel lies in that box)."""
    box = bounding_box(mask_ref | mask_pred)
    surface_ref = surface_voxels(mask_ref[box])
    surface_pred = surface_voxels(mask_pred[box])
    spacing = tuple(float(s) for s in spacing)
    # edt gives each non-zero voxel its distance to the nearest zero voxel: zeros = the other mask's surface
    dist_to_pred = edt.edt(np.ascontiguousarray(~surface_pred), anisotropy=spacing, black_border=False)
    dist_to_ref = edt.edt(np.ascontiguousarray(~surface_ref), anisotropy=spacing, black_border=False)
    return dist_to_pred[surface_ref].astype(np.float64), dist_to_ref[surface_pred].astype(np.float64)


def surface_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float],
                    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> Dict[str, float]:
    """HD95, ASSD (mm) and NSD at ``nsd_tolerance_mm`` (conventions in the module docstring)."""
    ref_empty, pred_empty = not mask_ref.any(), not mask_pred.any()
    if ref_empty or pred_empty:
        return {"HD95": float("nan"), "ASSD": float("nan"), "NSD": 1.0 if (ref_empty and pred_empty) else 0.0}
    d_ref_to_pred, d_pred_to_ref = directed_surface_distances(mask_ref, mask_pred, spacing)
    n_surface = d_ref_to_pred.size + d_pred_to_ref.size
    return {
        "HD95": float(max(np.percentile(d_ref_to_pred, 95), np.percentile(d_pred_to_ref, 95))),
        "ASSD": float((d_ref_to_pred.sum() + d_pred_to_ref.sum()) / n_surface),
        "NSD": float((np.count_nonzero(d_ref_to_pred <= nsd_tolerance_mm)
                      + np.count_nonzero(d_pred_to_ref <= nsd_tolerance_mm)) / n_surface),
    }


def overlap_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float],
                    ignore_mask: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Voxel counts, DSC, IoU, precision, recall, specificity and volumes (conventions in the module docstring).
    ``ignore_mask`` voxels are left out of every count; pass masks that are already False there."""
    n_valid = mask_ref.size - (int(np.count_nonzero(ignore_mask)) if ignore_mask is not None else 0)
    box = bounding_box(mask_ref | mask_pred)
    if box is None:
        tp = fp = fn = 0
    else:  # counting on the box is enough: outside it both masks are False
        ref, pred = mask_ref[box], mask_pred[box]
        tp = int(np.count_nonzero(ref & pred))
        fp = int(np.count_nonzero(pred)) - tp
        fn = int(np.count_nonzero(ref)) - tp
    tn = n_valid - tp - fp - fn
    both_empty = tp + fp + fn == 0
    voxel_ml = float(np.prod(spacing)) / 1000.0
    vol_ref, vol_pred = (tp + fn) * voxel_ml, (tp + fp) * voxel_ml
    return {
        "TP": tp, "FP": fp, "FN": fn, "TN": tn,
        "DSC": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "IoU": _ratio(tp, tp + fp + fn, both_empty),
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
        "specificity": _ratio(tn, tn + fp, True),  # tn + fp == 0 only if every voxel is reference
        "vol_ref_ml": vol_ref,
        "vol_pred_ml": vol_pred,
        "vol_diff_ml": vol_pred - vol_ref,
        "rel_vol_diff": (vol_pred - vol_ref) / vol_ref if vol_ref > 0 else float("nan"),
    }


def mask_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float],
                 ignore_mask: Optional[np.ndarray] = None,
                 nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> Dict[str, float]:
    """All metrics of one label/region of one case.

    Args:
        mask_ref, mask_pred: boolean arrays of equal shape (2D or 3D), the reference and predicted masks.
        spacing: voxel size in mm per array axis.
        ignore_mask: optional boolean array, True where the reference has the ignore label; these voxels are
            removed from both masks and from all counts.
        nsd_tolerance_mm: tolerance of the normalised surface Dice, in mm.
    Returns:
        dict metric name -> value (see ``METRICS``), plus the voxel counts TP, FP, FN, TN.
    """
    if mask_ref.shape != mask_pred.shape:
        raise ValueError(f"reference and prediction masks differ in shape: {mask_ref.shape} vs {mask_pred.shape}")
    if len(spacing) != mask_ref.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match the {mask_ref.ndim}D masks")
    mask_ref = np.asarray(mask_ref, dtype=bool)
    mask_pred = np.asarray(mask_pred, dtype=bool)
    if ignore_mask is not None and ignore_mask.any():
        mask_ref = mask_ref & ~ignore_mask
        mask_pred = mask_pred & ~ignore_mask
    result = overlap_metrics(mask_ref, mask_pred, spacing, ignore_mask)
    result.update(surface_metrics(mask_ref, mask_pred, spacing, nsd_tolerance_mm))
    return result
