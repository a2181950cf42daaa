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
* HD95 = max of the two directed 95th percentiles (``hd95_method="max-directed"``, the default: MONAI's
  ``compute_hausdorff_distance(percentile=95)``, and the structure of DeepMind's ``compute_robust_hausdorff``), or
  the 95th percentile of both directions pooled (``"pooled"``: MedPy's ``hd95``, which stacks both directed
  distance lists before ``numpy.percentile``). ASSD = mean of all distances of both directions pooled (MONAI's
  symmetric ``compute_average_surface_distance`` and MedPy 0.5's ``assd``; MedPy 0.4 averaged the two
  directed means instead).
* Empty masks: HD95 and ASSD are undefined (NaN, counted and listed, never averaged in) when either mask is empty;
  a *missed* structure (empty prediction, non-empty reference) is flagged so that it shows in worst-case lists.
  ``hd_penalty`` applies the challenges' convention instead: one mask empty -> the penalty (a number of mm, e.g.
  BraTS' 373.13, or "diagonal" = the image diagonal in mm), both empty -> 0.
* NSD (normalised surface Dice at tolerance tau mm, Nikolov et al. 2021) = the share of both surfaces lying within
  tau of the other surface. ``nsd_method="surfel"`` (default) weights each surface element by its area, from the
  2x2x2 neighbourhood code of the voxel-corner grid, exactly as DeepMind's ``surface-distance`` (the FLARE
  challenges' evaluation code) and MONAI's ``compute_surface_dice(use_subvoxels=True)``; ``"voxel"`` counts surface
  voxels (MONAI's ``use_subvoxels=False``). FLARE's conventions for empty masks: both empty -> 1, one empty -> 0.
* Volumes in ml; ``vol_diff_ml`` = V_pred - V_ref; ``rel_vol_diff`` = (V_pred - V_ref) / V_ref (NaN for an empty
  reference).
"""
import warnings
from typing import Dict, Optional, Sequence, Tuple, Union

import edt
import numpy as np
from scipy.ndimage import binary_erosion, correlate, generate_binary_structure

from nnunetv2_ext.evaluation.surfels import NEIGHBOUR_CODE_KERNEL_2D, NEIGHBOUR_CODE_KERNEL_3D, surfel_area_table

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
NSD_METHODS = ("surfel", "voxel")
DEFAULT_NSD_METHOD = "surfel"
HD95_METHODS = ("max-directed", "pooled")
DEFAULT_HD95_METHOD = "max-directed"
#: metrics that are undefined for a missed structure unless a penalty is given
DISTANCE_METRICS = ("HD95", "ASSD")

HDPenalty = Union[None, str, float]


def check_metric_options(nsd_method: str = DEFAULT_NSD_METHOD, hd95_method: str = DEFAULT_HD95_METHOD,
                         hd_penalty: HDPenalty = None) -> None:
    """Raises ValueError naming the parameter for an unknown method or a bad penalty."""
    if nsd_method not in NSD_METHODS:
        raise ValueError(f"nsd_method must be one of {NSD_METHODS}, got {nsd_method!r}")
    if hd95_method not in HD95_METHODS:
        raise ValueError(f"hd95_method must be one of {HD95_METHODS}, got {hd95_method!r}")
    if hd_penalty is not None and hd_penalty != "diagonal" and not (
            isinstance(hd_penalty, (int, float)) and np.isfinite(hd_penalty) and hd_penalty > 0):
        raise ValueError(f"hd_penalty must be None, 'diagonal' or a distance > 0 in mm, got {hd_penalty!r}")


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


def surfel_distances(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float]
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Surface elements on the voxel-corner grid (DeepMind's ``surface-distance`` construction): for each surface
    element of ``mask_ref`` its distance (mm) to the nearest surface element of ``mask_pred`` and its area (mm^2;
    length in 2D), and the same the other way round: (d_ref_to_pred, area_ref, d_pred_to_ref, area_pred).
    Both masks must be non-empty."""
    box = bounding_box(mask_ref | mask_pred)
    kernel = NEIGHBOUR_CODE_KERNEL_3D if mask_ref.ndim == 3 else NEIGHBOUR_CODE_KERNEL_2D
    full = int(kernel.sum())
    table = surfel_area_table(spacing)
    spacing = tuple(float(s) for s in spacing)
    codes, borders = [], []
    for mask in (mask_ref, mask_pred):
        # the box plus one background layer at the end of every axis; the correlation's constant 0 adds the layer
        # before it, so every corner point of the box's voxels gets its full 2x2(x2) neighbourhood
        padded = np.zeros(tuple(s.stop - s.start + 1 for s in box), dtype=np.uint8)
        padded[tuple(slice(0, -1) for _ in box)] = mask[box]
        code = correlate(padded, kernel.astype(np.uint8), mode="constant", cval=0)
        codes.append(code)
        borders.append((code != 0) & (code != full))
    dist_to_pred = edt.edt(np.ascontiguousarray(~borders[1]), anisotropy=spacing, black_border=False)
    dist_to_ref = edt.edt(np.ascontiguousarray(~borders[0]), anisotropy=spacing, black_border=False)
    return (dist_to_pred[borders[0]].astype(np.float64), table[codes[0][borders[0]]],
            dist_to_ref[borders[1]].astype(np.float64), table[codes[1][borders[1]]])


def penalty_distance(hd_penalty: HDPenalty, shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The distance (mm) given to HD95/ASSD when exactly one mask is empty: a number, or the image diagonal."""
    diagonal = float(np.linalg.norm(np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)))
    if hd_penalty == "diagonal":
        return diagonal
    if float(hd_penalty) > diagonal:  # larger than any distance in the image: it dominates every mean
        warnings.warn(f"hd_penalty {hd_penalty} mm exceeds the image diagonal ({diagonal:.1f} mm); consider "
                      f"'diagonal'", stacklevel=2)
    return float(hd_penalty)


def surface_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float],
                    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, nsd_method: str = DEFAULT_NSD_METHOD,
                    hd95_method: str = DEFAULT_HD95_METHOD, hd_penalty: HDPenalty = None) -> Dict[str, float]:
    """HD95, ASSD (mm) and NSD at ``nsd_tolerance_mm`` (conventions and methods in the module docstring)."""
    ref_empty, pred_empty = not mask_ref.any(), not mask_pred.any()
    if ref_empty or pred_empty:
        if hd_penalty is None:
            distance = float("nan")
        else:
            distance = 0.0 if (ref_empty and pred_empty) else penalty_distance(hd_penalty, mask_ref.shape, spacing)
        return {"HD95": distance, "ASSD": distance, "NSD": 1.0 if (ref_empty and pred_empty) else 0.0}
    d_ref_to_pred, d_pred_to_ref = directed_surface_distances(mask_ref, mask_pred, spacing)
    if hd95_method == "pooled":
        hd95 = float(np.percentile(np.concatenate([d_ref_to_pred, d_pred_to_ref]), 95))
    else:
        hd95 = float(max(np.percentile(d_ref_to_pred, 95), np.percentile(d_pred_to_ref, 95)))
    result = {"HD95": hd95, "ASSD": float((d_ref_to_pred.sum() + d_pred_to_ref.sum())
                                          / (d_ref_to_pred.size + d_pred_to_ref.size))}
    if nsd_method == "voxel":
        result["NSD"] = float((np.count_nonzero(d_ref_to_pred <= nsd_tolerance_mm)
                               + np.count_nonzero(d_pred_to_ref <= nsd_tolerance_mm))
                              / (d_ref_to_pred.size + d_pred_to_ref.size))
    else:
        d_rp, a_r, d_pr, a_p = surfel_distances(mask_ref, mask_pred, spacing)
        result["NSD"] = float((a_r[d_rp <= nsd_tolerance_mm].sum() + a_p[d_pr <= nsd_tolerance_mm].sum())
                              / (a_r.sum() + a_p.sum()))
    return result


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


def reference_z_range(mask_ref: np.ndarray) -> Optional[slice]:
    """Axial (array axis 0) slices holding the reference, as the FLARE22 script crops aorta, IVC and oesophagus:
    ``[first, last)``, i.e. the script's own ``z_lower:z_upper`` (which leaves the top labelled slice out)."""
    slices = np.flatnonzero(mask_ref.any(axis=tuple(range(1, mask_ref.ndim))))
    return slice(int(slices[0]), int(slices[-1])) if slices.size else None


def mask_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float],
                 ignore_mask: Optional[np.ndarray] = None,
                 nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, nsd_method: str = DEFAULT_NSD_METHOD,
                 hd95_method: str = DEFAULT_HD95_METHOD, hd_penalty: HDPenalty = None,
                 crop_to_reference_z: bool = False) -> Dict[str, float]:
    """All metrics of one label/region of one case.

    Args:
        mask_ref, mask_pred: boolean arrays of equal shape (2D or 3D), the reference and predicted masks.
        spacing: voxel size in mm per array axis.
        ignore_mask: optional boolean array, True where the reference has the ignore label; these voxels are
            removed from both masks and from all counts.
        nsd_tolerance_mm: tolerance of the normalised surface Dice, in mm.
        nsd_method: "surfel" (area-weighted, DeepMind/FLARE) or "voxel" (surface voxels counted).
        hd95_method: "max-directed" (MONAI) or "pooled" (MedPy).
        hd_penalty: None (HD95/ASSD undefined when a mask is empty), "diagonal" or a distance in mm.
        crop_to_reference_z: evaluate only the reference's axial extent (FLARE22 for aorta, IVC, oesophagus).
    Returns:
        dict metric name -> value (see ``METRICS``), plus the voxel counts TP, FP, FN, TN.
    """
    if mask_ref.shape != mask_pred.shape:
        raise ValueError(f"reference and prediction masks differ in shape: {mask_ref.shape} vs {mask_pred.shape}")
    if len(spacing) != mask_ref.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match the {mask_ref.ndim}D masks")
    check_metric_options(nsd_method, hd95_method, hd_penalty)
    mask_ref = np.asarray(mask_ref, dtype=bool)
    mask_pred = np.asarray(mask_pred, dtype=bool)
    if ignore_mask is not None and ignore_mask.any():
        mask_ref = mask_ref & ~ignore_mask
        mask_pred = mask_pred & ~ignore_mask
    if crop_to_reference_z and (z := reference_z_range(mask_ref)) is not None:
        mask_ref, mask_pred = mask_ref[z], mask_pred[z]
        ignore_mask = ignore_mask[z] if ignore_mask is not None else None
    result = overlap_metrics(mask_ref, mask_pred, spacing, ignore_mask)
    result.update(surface_metrics(mask_ref, mask_pred, spacing, nsd_tolerance_mm, nsd_method, hd95_method,
                                  hd_penalty))
    return result
