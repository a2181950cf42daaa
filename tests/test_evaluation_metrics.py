"""Per-mask metrics: hand-computed values on analytic shapes, empty-mask conventions, and cross-checks against
independent implementations (SimpleITK's distance/overlap filters on the whole volume, nnU-Net's voxel counts)."""
import math

import numpy as np
import pytest
from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn
from scipy.ndimage import gaussian_filter

from nnunetv2_ext.evaluation.metrics import bounding_box, mask_metrics, surface_voxels
from nnunetv2_ext.evaluation.sitk_reference import reference_metrics


def _box(shape, lo, hi):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def test_shifted_box_overlap_metrics_by_hand():
    spacing = (2.5, 0.7, 0.9)
    ref = _box((30, 30, 30), (10, 10, 10), (20, 20, 20))
    pred = _box((30, 30, 30), (12, 10, 10), (22, 20, 20))  # shifted by 2 slices: 800 of 1000 voxels overlap
    m = mask_metrics(ref, pred, spacing)
    assert (m["TP"], m["FP"], m["FN"], m["TN"]) == (800, 200, 200, 27000 - 1200)
    assert m["DSC"] == pytest.approx(0.8)
    assert m["IoU"] == pytest.approx(800 / 1200)
    assert m["precision"] == pytest.approx(0.8) and m["recall"] == pytest.approx(0.8)
    assert m["specificity"] == pytest.approx(25800 / 26000)
    voxel_ml = 2.5 * 0.7 * 0.9 / 1000
    assert m["vol_ref_ml"] == pytest.approx(1000 * voxel_ml)
    assert m["vol_diff_ml"] == pytest.approx(0.0) and m["rel_vol_diff"] == pytest.approx(0.0)


@pytest.mark.parametrize("axis, shift", [(0, 2), (1, 3), (2, 1)])
def test_parallel_plates_distance_is_shift_times_spacing(axis, shift):
    """Two one-voxel-thick plates: every voxel is surface and lies exactly shift*spacing[axis] from the other."""
    spacing = (2.5, 0.7, 0.9)
    lo, hi = [5, 5, 5], [15, 15, 15]
    lo[axis], hi[axis] = 8, 9
    ref = _box((20, 20, 20), lo, hi)
    pred = np.roll(ref, shift, axis=axis)
    distance = shift * spacing[axis]
    m = mask_metrics(ref, pred, spacing, nsd_tolerance_mm=distance + 1e-3, nsd_method="voxel")
    assert m["DSC"] == 0.0
    assert m["HD95"] == pytest.approx(distance) and m["ASSD"] == pytest.approx(distance)
    assert m["NSD"] == pytest.approx(1.0)
    assert mask_metrics(ref, pred, spacing, nsd_tolerance_mm=distance - 1e-3, nsd_method="voxel")["NSD"] == 0.0


def test_box_inside_grown_box_surface_distances_by_hand():
    """Reference 10^3 box, prediction the box grown by one voxel (12^3), isotropic 1.5 mm. Reference surface
    (1000 - 8^3 = 488 voxels) lies 1.5 mm inside the predicted surface; of the 728 predicted surface voxels,
    600 face voxels are 1.5 mm, 120 edge voxels 1.5*sqrt(2) mm and 8 corners 1.5*sqrt(3) mm from the reference."""
    s = 1.5
    ref = _box((20, 20, 20), (5, 5, 5), (15, 15, 15))
    pred = _box((20, 20, 20), (4, 4, 4), (16, 16, 16))
    m = mask_metrics(ref, pred, (s, s, s), nsd_tolerance_mm=2.0, nsd_method="voxel")
    assert surface_voxels(ref).sum() == 488 and surface_voxels(pred).sum() == 728
    # directed 95th percentiles: 1.5 (ref->pred); pred->ref: sorted index 0.95*727 = 690.65 lies among the edges
    assert m["HD95"] == pytest.approx(s * math.sqrt(2))
    assd = (488 * s + 600 * s + 120 * s * math.sqrt(2) + 8 * s * math.sqrt(3)) / (488 + 728)
    assert m["ASSD"] == pytest.approx(assd)
    assert m["NSD"] == pytest.approx((488 + 600) / (488 + 728))
    assert m["DSC"] == pytest.approx(2 * 1000 / (1000 + 1728))
    assert m["precision"] == pytest.approx(1000 / 1728) and m["recall"] == 1.0


def test_empty_mask_conventions():
    empty = np.zeros((8, 8, 8), dtype=bool)
    blob = _box((8, 8, 8), (2, 2, 2), (5, 5, 5))
    both = mask_metrics(empty, empty, (1, 1, 1))
    # both empty: DSC = 1 (Eq. 1 of the PNSS paper); nothing to find, nothing predicted: every ratio 1; NSD 1 (FLARE)
    assert [both[k] for k in ("DSC", "IoU", "precision", "recall", "specificity", "NSD")] == [1.0] * 6
    assert math.isnan(both["HD95"]) and math.isnan(both["ASSD"]) and math.isnan(both["rel_vol_diff"])
    false_positive = mask_metrics(empty, blob, (1, 1, 1))
    assert false_positive["DSC"] == 0.0 and false_positive["precision"] == 0.0 and false_positive["NSD"] == 0.0
    assert math.isnan(false_positive["recall"]) and math.isnan(false_positive["HD95"])
    missed = mask_metrics(blob, empty, (1, 1, 1))
    assert missed["DSC"] == 0.0 and missed["recall"] == 0.0 and missed["NSD"] == 0.0
    assert math.isnan(missed["precision"]) and math.isnan(missed["ASSD"])
    assert missed["rel_vol_diff"] == pytest.approx(-1.0)


def test_ignore_mask_is_left_out_of_counts_and_surfaces():
    ref = _box((10, 10, 10), (2, 2, 2), (6, 6, 6))
    pred = _box((10, 10, 10), (2, 2, 2), (8, 8, 8))
    ignore = np.zeros_like(ref)
    ignore[:, :, 6:] = True  # the part of the prediction beyond the reference lies partly in the ignore region
    with_ignore = mask_metrics(ref, pred, (1, 1, 1), ignore)
    restricted = mask_metrics(ref, pred & ~ignore, (1, 1, 1))
    assert with_ignore["TN"] == restricted["TN"] - ignore.sum()
    for k in ("DSC", "IoU", "precision", "recall", "HD95", "ASSD", "NSD", "vol_pred_ml"):
        assert with_ignore[k] == pytest.approx(restricted[k])


def test_mask_touching_the_image_border_counts_the_border_as_surface():
    """Outside the image is background: padding the volume must not change any metric."""
    ref = _box((12, 12, 12), (0, 3, 3), (6, 9, 9))
    pred = _box((12, 12, 12), (0, 4, 3), (7, 9, 10))
    spacing = (2.0, 0.8, 0.8)
    padded = [np.pad(m, 3) for m in (ref, pred)]
    a, b = mask_metrics(ref, pred, spacing), mask_metrics(*padded, spacing)
    for k in ("DSC", "HD95", "ASSD", "NSD", "precision", "recall"):
        assert a[k] == pytest.approx(b[k])


def _smooth_blobs(rng, shape, quantile_ref, quantile_pred, shift=0, shift_axis=0):
    field = gaussian_filter(rng.random(shape), 2.5)
    ref = field > np.quantile(field, quantile_ref)
    pred = np.roll(field > np.quantile(field, quantile_pred), shift, axis=shift_axis)
    # the whole-volume ITK reference replicates the image edge: keep the masks off the border
    for mask in (ref, pred):
        mask[[0, -1]] = False
        mask[:, [0, -1]] = False
        if mask.ndim == 3:
            mask[:, :, [0, -1]] = False
    return ref, pred


@pytest.mark.parametrize("seed", range(5))
def test_matches_simpleitk_reference_3d(seed):
    rng = np.random.default_rng(seed)
    ref, pred = _smooth_blobs(rng, (24, 36, 30), 0.9, rng.uniform(0.8, 0.95), int(rng.integers(-2, 3)),
                              int(rng.integers(0, 3)))
    spacing = tuple(rng.uniform(0.5, 3.0, 3))
    tolerance = float(rng.uniform(0.5, 3.0))
    ours, reference = mask_metrics(ref, pred, spacing, nsd_tolerance_mm=tolerance, nsd_method="voxel"), \
        reference_metrics(ref, pred, spacing, tolerance)
    for k, v in reference.items():
        assert ours[k] == pytest.approx(v, rel=1e-5, abs=1e-5), k
    tp, fp, fn, tn = compute_tp_fp_fn_tn(ref, pred)  # nnU-Net's own counts
    assert (ours["TP"], ours["FP"], ours["FN"], ours["TN"]) == (tp, fp, fn, tn)


def test_matches_simpleitk_reference_2d():
    rng = np.random.default_rng(7)
    ref, pred = _smooth_blobs(rng, (60, 50), 0.8, 0.75)
    ours, reference = mask_metrics(ref, pred, (0.6, 1.4), nsd_method="voxel"), reference_metrics(ref, pred, (0.6, 1.4))
    for k, v in reference.items():
        assert ours[k] == pytest.approx(v, rel=1e-5, abs=1e-5), k


def test_bounding_box():
    mask = _box((10, 11, 12), (2, 3, 4), (5, 6, 7))
    assert bounding_box(mask) == (slice(2, 5), slice(3, 6), slice(4, 7))
    assert bounding_box(np.zeros((3, 3), bool)) is None


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="shape"):
        mask_metrics(np.zeros((3, 3), bool), np.zeros((3, 4), bool), (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        mask_metrics(np.zeros((3, 3), bool), np.zeros((3, 3), bool), (1, 1, 1))
