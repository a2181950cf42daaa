"""Connected components and the slice distance of false positives from the organ's slab (evaluation.components),
checked on hand-built arrays."""
import numpy as np
import pytest

from nnunetv2_ext.evaluation.components import (components, false_positive_summary, reference_slab,
                                                 slice_distance)


def test_slab_and_distance_by_hand():
    ref = np.zeros((10, 8, 8), np.uint8)
    ref[3:6, 2:5, 2:5] = 1  # slices 3, 4, 5
    assert reference_slab(ref) == (3, 5) and reference_slab(np.zeros((4, 2, 2))) is None
    assert slice_distance(4, 4, (3, 5)) == 0 and slice_distance(0, 5, (3, 5)) == 0  # overlapping slices
    assert slice_distance(6, 6, (3, 5)) == 1 and slice_distance(9, 9, (3, 5)) == 4  # below the slab
    assert slice_distance(0, 1, (3, 5)) == 2  # above: slice 1 is two slices from slice 3
    assert slice_distance(0, 0, None) is None


def test_components_touching_beside_and_far():
    ref = np.zeros((10, 8, 8), np.uint8)
    ref[3:6, 2:5, 2:5] = 1
    pred = np.zeros_like(ref)
    pred[3:6, 2:5, 2:5] = 1       # the organ: 27 voxels, touches the reference
    pred[4, 7, 7] = 1             # beside the organ in its slices (not touching): distance 0
    pred[9, 0:2, 0:2] = 1         # 4 voxels far below: distance 4
    pred[0, 0, 7] = 1             # 1 voxel above: distance 3
    comps = components(pred, ref)
    assert [(c.voxels, c.touches_reference, c.slice_distance) for c in comps] == [
        (27, True, 0), (4, False, 4), (1, False, 3), (1, False, 0)]
    assert comps[1].first_slice == comps[1].last_slice == 9
    # diagonal neighbours are one component (full connectivity), labels > 1 are foreground too
    diag = np.zeros((3, 3, 3), np.uint8)
    diag[0, 0, 0], diag[1, 1, 1], diag[2, 2, 2] = 1, 2, 1
    assert len(components(diag)) == 1 and components(diag)[0].slice_distance is None
    assert components(np.zeros((3, 3, 3))) == []
    with pytest.raises(ValueError, match="shape"):
        components(pred, ref[:5])


def test_false_positive_summary_over_cases():
    ref = np.zeros((10, 8, 8), np.uint8)
    ref[3:6, 2:5, 2:5] = 1
    pred = ref.copy()
    pred[9, 0, 0] = 1
    pred[0, 7, 7] = 1
    empty_ref = np.zeros_like(ref)
    per_case = {"a": components(pred, ref), "b": components(ref, ref), "c": components(pred, empty_ref)}
    s = false_positive_summary(per_case)
    assert s["cases"] == 3 and s["components_per_case"] == pytest.approx(7 / 3)
    assert s["fp_components_per_case"] == pytest.approx(5 / 3) and s["cases_with_fp"] == 2
    assert s["fp_by_slice_distance"] == {"0": 0, "1-2": 0, "3-5": 2, ">5": 0, "no_slab": 3}
    assert s["fp_median_voxels"] == 1.0
