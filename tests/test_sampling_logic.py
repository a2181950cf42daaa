"""Unit tests of the pure PNSS/HESS logic: schedule, Eq. 6-7 slabs, Eq. 1 DSC, Eq. 8 hard set, mini-epoch plans."""
import threading
import time

import numpy as np
import pytest
import torch

from nnunetv2_ext.sampling.hess import (HardnessTable, mini_epoch_iterations, mini_epoch_plan, per_sample_dice,
                                        rank_slice, select_hard)
from nnunetv2_ext.sampling.pnss import PNSSSchedule, positive_block, select_slab, select_slabs
from nnunetv2_ext.sampling.shared_state import MAIN, MINI, BatchSchedule
from nnunetv2_ext.sampling.slice_table import SliceTable


# ---------------------------------------------------------------------------------------------------- L(alpha, beta)
def test_schedule_paper_best():
    s = PNSSSchedule(0.2, 5)
    assert [s.ratio(e) for e in (0, 4, 5, 9, 10, 24, 25, 1000)] == pytest.approx([1, 1, .8, .8, .6, .2, 0, 0])


def test_schedule_floor_and_exact_steps():
    s = PNSSSchedule(0.1, 1, r_min=0.35)
    assert s.ratio(3) == pytest.approx(0.7)
    assert s.ratio(6) == pytest.approx(0.4)
    assert s.ratio(7) == pytest.approx(0.35)
    assert s.ratio(100) == pytest.approx(0.35)


@pytest.mark.parametrize("kwargs, name", [({"alpha": 0}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"beta": 0}, "beta"),
                                          ({"beta": 2.5}, "beta"), ({"r_min": -0.1}, "r_min"),
                                          ({"r_min": 1.1}, "r_min")])
def test_schedule_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PNSSSchedule(**kwargs)


# ---------------------------------------------------------------------------------------------------- Eq. 6-7
def test_slab_hand_computed():
    # n = 10, positive block slices 3..5 (1-based l = 4, k = 3): 3 negatives below, n - l - k + 1 = 4 above
    assert select_slab(10, 3, 3, 1.0) == (0, 10)
    assert select_slab(10, 3, 3, 0.0) == (3, 6)
    assert select_slab(10, 3, 3, 0.5) == (1, 8)   # ceil(1.5) = 2 below, floor(2.0) = 2 above
    assert select_slab(10, 3, 3, 0.7) == (0, 8)   # ceil(2.1) = 3 below, floor(2.8) = 2 above


def test_slab_float_noise_does_not_add_a_slice():
    # 5 * 0.6 = 3.0000000000000004 in floating point; ceil must still give 3
    assert select_slab(20, 5, 2, 0.6) == (2, 7 + 7)  # above: floor(13 * 0.6 = 7.8) = 7


def test_slab_without_foreground_is_centred_and_vanishes():
    first, k = positive_block(np.zeros(9, bool))
    assert (first, k) == (4, 0)
    assert select_slab(9, first, k, 1.0) == (0, 9)
    assert select_slab(9, first, k, 0.0) == (4, 4)  # empty


def test_positive_block_keeps_gaps():
    assert positive_block(np.array([0, 1, 1, 0, 0, 1, 0], bool)) == (1, 5)


def test_vectorised_slabs_match_scalar():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 60, 200)
    first = np.array([rng.integers(0, x) for x in n])
    k = np.array([rng.integers(0, x - f + 1) for x, f in zip(n, first)])
    for r in (0, 0.1, 0.2, 0.3, 0.6, 0.7, 1):
        start, stop = select_slabs(n, first, k, r)
        assert all((a, b) == select_slab(int(x), int(f), int(kk), r)
                   for a, b, x, f, kk in zip(start, stop, n, first, k))


def test_slice_table_units_and_selection():
    t = SliceTable(["a", "b"], np.array([10, 4]), np.array([3, 0]), np.array([3, 4]))
    assert t.num_units == 14
    case, z = t.case_and_slice(np.array([0, 9, 10, 13]))
    assert case.tolist() == [0, 0, 1, 1] and z.tolist() == [0, 9, 0, 3]
    sel = t.selected_mask(0.5)
    assert np.flatnonzero(sel[:10]).tolist() == list(range(1, 8))
    assert sel[10:].all()


# ---------------------------------------------------------------------------------------------------- Eq. 1
def _disk(n, r, cy, cx):
    yy, xx = np.mgrid[:n, :n]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)


def _logits_from_mask(mask, num_classes=2):
    lab = torch.as_tensor(mask.astype(np.int64))
    return torch.nn.functional.one_hot(lab, num_classes).permute(2, 0, 1).float()[None] * 10


def test_per_sample_dice_analytic_cases():
    disk = _disk(32, 6, 16, 16)
    shifted = _disk(32, 6, 16, 20)
    inter, total = (disk & shifted).sum(), disk.sum() + shifted.sum()
    logits = torch.cat([_logits_from_mask(disk), _logits_from_mask(shifted), _logits_from_mask(np.zeros_like(disk)),
                        _logits_from_mask(np.zeros_like(disk))])
    target = torch.stack([torch.as_tensor(disk), torch.as_tensor(disk), torch.as_tensor(disk),
                          torch.zeros(32, 32, dtype=torch.bool)]).long()[:, None]
    d = per_sample_dice(logits, target, has_regions=False)
    assert d.tolist() == pytest.approx([1.0, 2 * inter / total, 0.0, 1.0])  # last: both empty -> 1 (Eq. 1)


def test_per_sample_dice_multiclass_and_ignore():
    lab = np.zeros((16, 16), int)
    lab[2:6, 2:6] = 1
    lab[10:14, 10:14] = 2
    pred = lab.copy()
    pred[10:14, 10:14] = 0  # class 2 missed entirely
    tgt = torch.as_tensor(lab)[None, None]
    d = per_sample_dice(_logits_from_mask(pred, 3), tgt, has_regions=False)
    assert d.item() == pytest.approx(0.5)  # mean of class 1 (1.0) and class 2 (0.0)
    # mark the missed class-2 region as ignore (label 3): it no longer counts, class 2 is empty in both -> 1
    lab_ign = lab.copy()
    lab_ign[10:14, 10:14] = 3
    d = per_sample_dice(_logits_from_mask(pred, 3), torch.as_tensor(lab_ign)[None, None], False, ignore_label=3)
    assert d.item() == pytest.approx(1.0)


def test_per_sample_dice_regions_with_ignore_channel():
    whole = _disk(16, 5, 8, 8)
    core = _disk(16, 2, 8, 8)
    logits = torch.stack([torch.as_tensor(whole), torch.as_tensor(np.zeros_like(core))]).float()[None] * 20 - 10
    ignore = np.zeros_like(whole)
    target = torch.stack([torch.as_tensor(whole), torch.as_tensor(core), torch.as_tensor(ignore)])[None]
    assert per_sample_dice(logits, target, True, ignore_label=9).item() == pytest.approx(0.5)
    target_ign = target.clone()
    target_ign[0, 2] = torch.as_tensor(core)  # ignore the core area: the missed core is not counted
    assert per_sample_dice(logits, target_ign, True, ignore_label=9).item() == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------- Eq. 8
def test_select_hard_eq8():
    t = HardnessTable(7)
    t.update(np.arange(6), np.array([0.2, 0.6, 0.7, 0.9, 1.0, 0.3]), epoch=0)
    selected = np.array([1, 1, 1, 1, 1, 0, 1], bool)  # unit 5 not selected, unit 6 never scored
    hs = select_hard(t, selected, 0.5)
    assert hs.mean_dsc == pytest.approx(np.mean([0.2, 0.6, 0.7, 0.9, 1.0]))  # 0.68
    assert hs.hard_units.tolist() == [1]  # 0.5 < 0.6 < 0.68; 0.7 is above the mean
    assert hs.num_outliers == 1 and hs.num_scored == 5


def test_hardness_state_roundtrip_and_bounds():
    t = HardnessTable(4)
    t.update([1, 3], [0.4, 0.9], epoch=2)
    t2 = HardnessTable(4)
    t2.load_state_dict(t.state_dict())
    np.testing.assert_array_equal(t.dsc, t2.dsc)
    assert t2.epoch_scored.tolist() == [-1, 2, -1, 2]
    with pytest.raises(IndexError):
        t.update([4], [0.1], epoch=0)
    with pytest.raises(ValueError):
        HardnessTable(5).load_state_dict(t.state_dict())


def test_mini_epoch_plan_covers_hard_units_and_respects_cap():
    hard = np.array([3, 8, 9, 15, 21, 22, 40])
    plan = mini_epoch_plan(hard, epoch=4, seed=1, global_batch_size=3, max_iterations=10)
    assert plan.shape == (3, 3) and set(plan.ravel()) == set(hard.tolist())
    np.testing.assert_array_equal(plan, mini_epoch_plan(hard, 4, 1, 3, 10))  # same on every rank/worker
    capped = mini_epoch_plan(hard, epoch=4, seed=1, global_batch_size=3, max_iterations=1)
    assert capped.shape == (1, 3) and set(capped.ravel()) <= set(hard.tolist())
    assert mini_epoch_iterations(0, 4, 10) == 0 and mini_epoch_iterations(9, 4, 10) == 3
    # DDP ranks with batch sizes 2 and 1 take disjoint columns of the global batch
    assert (rank_slice([2, 1], 0), rank_slice([2, 1], 1)) == (slice(0, 2), slice(2, 3))


# ---------------------------------------------------------------------------------------------------- batch schedule
def test_batch_schedule_locates_phases_and_waits_for_plan():
    s = BatchSchedule(start_epoch=2, num_epochs=5, num_main_iterations=3, hess_enabled=True, plan_capacity=8)
    assert [s.locate(b) for b in range(3)] == [(2, MAIN, 0), (2, MAIN, 1), (2, MAIN, 2)]

    def publish_later():
        time.sleep(0.3)
        s.publish_mini_epoch(2, np.array([[5, 6], [7, 5]]))

    threading.Thread(target=publish_later).start()
    t0 = time.time()
    assert s.locate(3) == (2, MINI, 0)  # must wait for epoch 2's plan
    assert time.time() - t0 > 0.2
    assert s.mini_plan_row(2, 1).tolist() == [7, 5]
    assert s.locate(5) == (3, MAIN, 0)
    s.publish_mini_epoch(3, np.zeros((0, 2), np.int64))  # no hard slices in epoch 3
    assert s.locate(8) == (4, MAIN, 0)
    with pytest.raises(RuntimeError, match="epoch"):
        s.mini_plan_row(4, 0)  # buffer of parity 0 holds epoch 2
