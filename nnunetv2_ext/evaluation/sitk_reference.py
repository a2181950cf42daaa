"""Independent reference implementation of the metrics with SimpleITK filters, on the whole volume.

Used only to cross-check ``metrics.py`` (tests) and as the speed reference of ``benchmarks/bench_evaluation.py``:
surfaces from ITK's ``LabelContour`` (face connectivity), distances from ITK's ``SignedMaurerDistanceMap`` (exact
Euclidean, image spacing), overlap from ITK's ``LabelOverlapMeasuresImageFilter``; none of it shares code with
``metrics.py`` (which uses scipy's erosion and the ``edt`` library on the bounding box).

Known difference: ITK treats voxels outside the image as copies of the edge (a mask touching the image border has
no surface there), ``metrics.py`` as background. The two agree for masks that do not touch the image border.
"""
from typing import Dict, Sequence

import numpy as np
import SimpleITK as sitk


def _image(mask: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in spacing[::-1]])  # ITK orders axes x, y, z; numpy z, y, x
    return image


def reference_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float],
                      nsd_tolerance_mm: float = 1.0) -> Dict[str, float]:
    """DSC, IoU, HD95, ASSD and NSD of two non-empty boolean masks (conventions as in ``metrics.py``)."""
    ref_image, pred_image = _image(mask_ref, spacing), _image(mask_pred, spacing)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(ref_image, pred_image)
    contours = [sitk.LabelContour(image, fullyConnected=False) for image in (ref_image, pred_image)]
    # distance to the nearest voxel of the other contour = outside part of the contour's signed distance map
    # (the object's own map would measure to its 26-connected contour instead)
    distance_maps = [np.maximum(sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        contour, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)), 0) for contour in contours]
    contours = [sitk.GetArrayFromImage(contour).astype(bool) for contour in contours]
    d_ref_to_pred = distance_maps[1][contours[0]].astype(np.float64)
    d_pred_to_ref = distance_maps[0][contours[1]].astype(np.float64)
    n_surface = d_ref_to_pred.size + d_pred_to_ref.size
    return {
        "DSC": overlap.GetDiceCoefficient(),
        "IoU": overlap.GetJaccardCoefficient(),
        "HD95": float(max(np.percentile(d_ref_to_pred, 95), np.percentile(d_pred_to_ref, 95))),
        "ASSD": float((d_ref_to_pred.sum() + d_pred_to_ref.sum()) / n_surface),
        "NSD": float((np.sum(d_ref_to_pred <= nsd_tolerance_mm) + np.sum(d_pred_to_ref <= nsd_tolerance_mm))
                     / n_surface),
    }
