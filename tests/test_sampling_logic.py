"""Unit tests of the pure PNSS/HESS logic (no nnU-Net): schedule, Eq. 6-7 slabs, Eq. 1 DSC, Eq. 8 hard set, mini-epoch
plans, the worker batch schedule, parameters, the epoch plan in the paper's epochs, the main sampler, the controller
and the checkpoint sidecar."""
import threading
import time

from dataclasses import replace

import numpy as np
import pytest
import torch

from nnunetv2_ext.nnunet_adapters import checkpoint_sidecar as checkpoint_state
from nnunetv2_ext.sampling.controller import SamplingController, hard_set_agreement
from nnunetv2_ext.sampling.epoch_plan import build_epoch_plan
from nnunetv2_ext.sampling.hess import (HardnessTable, channel_argmax, mini_epoch_iterations, mini_epoch_plan,
                                        per_sample_dice, rank_slice, select_hard)
from nnunetv2_ext.sampling.parameters import SamplingParameters
from nnunetv2_ext.sampling.pnss import PNSSSchedule, positive_block, select_slab, select_slabs
from nnunetv2_ext.sampling.report import log_line
from nnunetv2_ext.sampling.sampler import SLAB, SLICE, SLICE_FG, MainSampler, SampleSpec
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


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_channel_argmax_equals_torch_argmax_with_ties(num_classes):
    x = torch.randn(3, num_classes, 8, 8)
    x[:, 1] = x[:, 0]  # ties: the first maximum wins, as in torch.argmax
    assert torch.equal(channel_argmax(x), x.argmax(1))


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


def test_select_hard_with_false_positive_negatives_extension():
    """negatives_with_fp='hard' (an extension): a negative unit (no reference foreground) with DSC < 1 has predicted
    foreground; Eq. 8 calls it an outlier (DSC 0), the extension replays it, selected by PNSS or not."""
    t = HardnessTable(8)
    t.update(np.arange(8), np.array([0.2, 0.6, 0.7, 0.9, 1.0, 0.0, 1.0, 0.0]), epoch=0)
    selected = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)  # units 6 and 7 dropped by PNSS
    negative = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)  # units 4-7 have no reference foreground
    paper = select_hard(t, selected, 0.5)
    assert paper.hard_units.tolist() == [] and paper.num_outliers == 2 and paper.num_fp_negatives == 0  # 0.6 > mean
    ext = select_hard(t, selected, 0.5, fp_negatives=negative)
    # s_mean stays Eq. 8's (selected units: mean of 0.2 .. 0.0 = 0.5667); unit 5 (selected, FP) and unit 7 (dropped,
    # FP) join the hard set; 4 and 6 were predicted empty (DSC 1); unit 0 stays an outlier (a positive slice)
    assert ext.mean_dsc == pytest.approx(np.mean([0.2, 0.6, 0.7, 0.9, 1.0, 0.0]))
    assert ext.hard_units.tolist() == [5, 7]
    assert ext.num_outliers == 1 and ext.num_fp_negatives == 2 and ext.num_scored == 6
    old = select_hard(t, selected, 0.5, min_epoch=1, fp_negatives=negative)  # too old to count
    assert old.hard_units.tolist() == [] and old.num_fp_negatives == 0


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
    s = BatchSchedule(start_epoch=2, num_epochs=5, num_main_iterations=3, hess_rounds=[True] * 5, plan_capacity=8)
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


def test_batch_schedule_neutral_budget_and_epochs_without_round():
    # epochs 0 and 2 end with a HESS round; 4 iterations per epoch; a neutral budget takes the mini iterations of
    # epoch e out of epoch e + 1; epoch 1 has no round, so nothing is ever waited for there
    s = BatchSchedule(start_epoch=0, num_epochs=4, num_main_iterations=4, hess_rounds=[True, False, True, False],
                      plan_capacity=8, neutral_budget=True)
    assert [s.locate(b)[:2] for b in range(4)] == [(0, MAIN)] * 4
    s.publish_mini_epoch(0, np.array([[1], [2], [3]]))  # 3 mini iterations
    assert [s.locate(b) for b in (4, 6)] == [(0, MINI, 0), (0, MINI, 2)]
    # epoch 1: 4 - 3 = 1 main iteration, no round; epoch 2 starts right after it, without waiting for anything
    assert s.locate(7) == (1, MAIN, 0)
    assert [s.locate(b) for b in (8, 11)] == [(2, MAIN, 0), (2, MAIN, 3)]
    s.publish_mini_epoch(2, np.array([[4]]))
    assert s.locate(12) == (2, MINI, 0)
    assert [s.locate(b) for b in (13, 15)] == [(3, MAIN, 0), (3, MAIN, 2)]  # 4 - 1 = 3 main iterations
    assert s.locate(16) == (4, MAIN, 0)  # beyond training (workers prefetch): never waits
    # after --c at epoch 3 with one mini iteration owed by epoch 2
    resumed = BatchSchedule(3, 4, 4, [True, False, True, False], 8, neutral_budget=True, initial_debt=1)
    assert [resumed.locate(b) for b in (0, 2, 3)] == [(3, MAIN, 0), (3, MAIN, 2), (4, MAIN, 0)]


# ---------------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("kwargs, name", [({"alpha": 0}, "alpha"), ({"beta": 1.5}, "beta"), ({"r_min": 2}, "r_min"),
                                          ({"epoch_unit": "days"}, "epoch_unit"), ({"sampling": "any"}, "sampling"),
                                          ({"far_negative_share": 1.0}, "far_negative_share"),
                                          ({"final_full_fraction": -0.1}, "final_full_fraction"),
                                          ({"outlier_threshold": 1}, "outlier_threshold"),
                                          ({"max_epoch_cost": 1.0}, "max_epoch_cost"),
                                          ({"max_epoch_cost": 2.5}, "max_epoch_cost"),
                                          ({"budget": "free"}, "budget"), ({"scoring": "magic"}, "scoring"),
                                          ({"score_max_age": 0}, "score_max_age"), ({"pnss": 1}, "pnss"),
                                          ({"pnss": False, "hess": False}, "plain nnU-Net")])
def test_sampling_parameters_name_the_bad_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplingParameters(**kwargs)


def test_sampling_parameters_rules():
    assert SamplingParameters(pnss=False).pnss_schedule is None  # PNSS off: r = 1 throughout
    assert SamplingParameters(pnss=False, far_negative_share=0.3).far_share == 0  # nothing dropped, nothing kept
    assert SamplingParameters(budget="extra", max_epoch_cost=3).max_epoch_cost == 3  # > 2 only when on top


# ---------------------------------------------------------------------------------------------------- epoch plan
def _counts(r):
    return {1.0: 100, 0.5: 60, 0.0: 20}[r]


def test_epoch_plan_counts_passes_over_the_selection():
    # S = 50 samples per nnU-Net epoch; |D^1| = 100, |D^0.5| = 60, |D^0| = 20; L(0.5, 1) in passes
    plan = build_epoch_plan(SamplingParameters(alpha=0.5, beta=1), 6, 50, _counts)
    assert plan.passes_before.tolist() == pytest.approx([0, 0.5, 1, 1 + 5 / 6, 2 + 4 / 6, 5 + 1 / 6, 7 + 4 / 6])
    assert plan.paper_epoch.tolist() == [0, 0, 1, 1, 2, 5]
    assert plan.r.tolist() == [1, 1, 0.5, 0.5, 0, 0]
    assert plan.n_selected.tolist() == [100, 100, 60, 60, 20, 20]
    # a HESS round ends every nnU-Net epoch in which a pass was completed; none after the last (neutral budget)
    assert plan.hess_round.tolist() == [False, True, False, True, True, False]
    assert plan.first_epoch_at(0) == 4
    extra = build_epoch_plan(SamplingParameters(alpha=0.5, beta=1, budget="extra"), 6, 50, _counts)
    assert extra.hess_round.tolist() == [False, True, False, True, True, True]
    assert "0.50" in plan.summary() and "2-3" in plan.summary()


def test_epoch_plan_nnunet_epochs_and_final_phase():
    plan = build_epoch_plan(SamplingParameters(alpha=0.5, beta=1, epoch_unit="nnunet_epoch",
                                               final_full_fraction=0.34), 6, 50, _counts)
    assert plan.r.tolist() == [1, 0.5, 0, 0, 1, 1]  # the last round(0.34 * 6) = 2 epochs return to r = 1
    assert plan.hess_round.tolist() == [True] * 5 + [False]
    hess_only = build_epoch_plan(SamplingParameters(pnss=False), 3, 50, _counts)
    assert hess_only.r.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="no slice at r=0"):
        build_epoch_plan(SamplingParameters(alpha=1, beta=1, epoch_unit="nnunet_epoch"), 3, 50,
                         lambda r: 0 if r == 0 else 10)


# ---------------------------------------------------------------------------------------------------- main sampler
def _two_case_table():
    # case a: 10 slices, positive 3..5 (slice 4 a gap); case b: 6 slices, no foreground
    return SliceTable(["a", "b"], [10, 6], [3, 3], [3, 0], positive_slices=[[3, 5], []])


def test_main_sampler_modes_and_far_negatives():
    t = _two_case_table()
    assert np.flatnonzero(t.positive).tolist() == [3, 5]
    rng = np.random.RandomState(0)
    at0 = MainSampler(t, "slice", far_share=0.0).draw(0.0, [False] * 200, rng)
    assert {(s.case, s.z_start, s.z_stop, s.how) for s in at0} == {(0, z, z + 1, SLICE) for z in (3, 4, 5)}
    far = MainSampler(t, "slice", far_share=0.5).draw(0.0, [False] * 400, rng)
    n_far = sum(not 3 <= s.z_start < 6 or s.case == 1 for s in far)
    assert 150 < n_far < 250  # about half from the 13 dropped slices, of both cases
    assert n_far == sum(s.far for s in far)
    assert {s.case for s in far} == {0, 1}
    over = MainSampler(t, "slice_oversample", far_share=0.5).draw(0.0, [True] * 50, rng)
    assert all(s.how == SLICE_FG and s.z_start in (3, 5) for s in over)  # oversampled: positive slices, never far
    case = MainSampler(t, "case", far_share=0.0).draw(0.0, [False, True], rng)
    assert case == [SampleSpec(0, 3, 6, SLAB, False), SampleSpec(0, 3, 6, SLAB, True)]  # case b has an empty slab
    everything = MainSampler(t, "slice", far_share=0.9).draw(1.0, [False] * 100, rng)
    assert len({(s.case, s.z_start) for s in everything}) > 10  # r = 1: nothing dropped, all slices drawn


# ---------------------------------------------------------------------------------------------------- controller
def _controller(**kwargs):
    table = SliceTable(["a", "b"], [10, 10], [4, 2], [2, 4])  # blocks 4..5 and 2..5; 20 units
    params = SamplingParameters(**{"alpha": 0.5, "beta": 1, "epoch_unit": "nnunet_epoch", **kwargs})
    return SamplingController(params, table, num_epochs=4, iterations_per_epoch=10, global_batch_size=2)


def test_controller_exact_round_neutral_budget_and_state():
    c = _controller()
    assert c.max_mini_iterations == 5 and not c.records_forward_scores and c.needs_exact_pass(0)
    sel = np.flatnonzero(c.selected(0))
    exact = (sel, np.where(sel % 2 == 0, 0.9, 0.7).astype(np.float32))  # mean 0.8: odd units are hard
    rnd = c.end_main_phase(0, exact=exact)
    assert rnd.hard.hard_units.tolist() == [u for u in sel if u % 2] and rnd.hard.mean_dsc == pytest.approx(0.8)
    assert rnd.plan.shape == (5, 2)  # 10 hard units, batch 2: 5 iterations (= the cap)
    rec = c.finish_epoch(0, c.main_iterations(0), rnd, 0.3)
    assert (rec["mini_epoch_iterations"], rec["n_hard"], rec["hess_round"]) == (5, 10, True)
    assert c.main_iterations(1) == 5  # neutral: epoch 1 pays for the 5 mini iterations
    with pytest.raises(ValueError, match="exact scoring pass"):
        c.end_main_phase(1)
    state = c.state_dict()
    d = _controller()
    d.load_state_dict(state, current_epoch=1)
    assert d.records == c.records and d.main_iterations(1) == 5
    np.testing.assert_array_equal(d.tables["exact"].dsc, c.tables["exact"].dsc)
    with pytest.raises(ValueError, match="sampling parameters"):
        _controller(alpha=0.2).load_state_dict(state, 1)
    with pytest.raises(ValueError, match="records"):
        d.load_state_dict(state, current_epoch=2)


def test_controller_replays_negatives_with_false_positives_when_asked():
    c = _controller(negatives_with_fp="hard")
    positive = [4, 5, 12, 13, 14, 15]
    assert np.flatnonzero(c.selected(2)).tolist() == positive  # r = 0 at epoch 2: only the positive blocks
    assert c.exact_units(2).tolist() == list(range(20))  # the exact pass also scores every dropped negative slice
    assert _controller().exact_units(2).tolist() == positive  # the paper's: the selected units only
    units = np.arange(20)
    dsc = np.where(np.isin(units, positive), 0.8, 1.0).astype(np.float32)
    dsc[[0, 17]] = 0.0  # far false positives on a dropped slice of each case
    for e in (0, 1):
        c.finish_epoch(e, c.main_iterations(e))
    rnd = c.end_main_phase(2, exact=(units, dsc))
    assert rnd.hard.hard_units.tolist() == [0, 17] and rnd.hard.num_fp_negatives == 2
    rec = c.finish_epoch(2, c.main_iterations(2), rnd, 0.1)
    assert rec["n_fp_negatives"] == 2 and "of them 2 negative slices with false positives" in log_line(rec)
    with pytest.raises(ValueError, match="negatives_with_fp"):
        SamplingParameters(negatives_with_fp="hard", scoring="forward")
    with pytest.raises(ValueError, match="negatives_with_fp"):
        SamplingParameters(negatives_with_fp="replay")


def test_checkpoint_from_before_a_new_parameter_still_resumes():
    """A sampling state saved before ``negatives_with_fp`` existed (its parameters lack the key) resumes a trainer
    with that field's default: the old behaviour."""
    c = _controller()
    c.finish_epoch(0, c.main_iterations(0))
    state = c.state_dict()
    del state["parameters"]["negatives_with_fp"]
    d = _controller()
    d.load_state_dict(state, current_epoch=1)
    with pytest.raises(ValueError, match="sampling parameters"):
        _controller(negatives_with_fp="hard").load_state_dict(state, 1)


def test_controller_forward_scores_age_limit_and_agreement():
    c = _controller(scoring="forward", score_max_age=1, compare_scoring=True)
    assert c.records_forward_scores and c.needs_exact_pass(0)
    all_units = np.arange(20)
    # epoch 0: forward scores for units 0..9 only; the exact pass scores every selected unit
    rnd = c.end_main_phase(0, forward=(np.arange(10), np.full(10, 0.6, np.float32)),
                           exact=(all_units, np.full(20, 0.6, np.float32)))
    assert rnd.hard.num_scored == 10 and rnd.agreement["n_common"] == 10
    c.finish_epoch(0, 10, rnd)
    # epoch 1 (r = 0.5): new forward scores for units 10..13 only: the older ones are past the age limit
    sel1 = np.flatnonzero(c.selected(1))
    rnd = c.end_main_phase(1, forward=(np.array([10, 11, 12, 13]), np.array([0.9, 0.7, 0.8, 0.95], np.float32)),
                           exact=(sel1, np.linspace(0.6, 1.0, len(sel1)).astype(np.float32)))
    in_sel = [u for u in (10, 11, 12, 13) if c.selected(1)[u]]
    assert rnd.hard.num_scored == len(in_sel)
    assert set(rnd.hard.hard_units.tolist()) <= {10, 11, 12, 13}
    a = rnd.agreement
    assert a["n_common"] == len(in_sel) and 0 <= a["hard_jaccard"] <= 1 and -1 <= a["spearman"] <= 1
    c2 = _controller(scoring="forward", score_max_age=2)  # age 2: the scores of epoch 0 still count at epoch 1
    c2.finish_epoch(0, 10, c2.end_main_phase(0, forward=(np.arange(10), np.full(10, 0.6, np.float32))))
    assert c2.end_main_phase(1, forward=(np.array([12]), np.array([0.9], np.float32))).hard.num_scored > 1


def test_hard_set_agreement_hand_computed():
    f, e = HardnessTable(5), HardnessTable(5)
    f.update(np.arange(5), np.array([0.6, 0.7, 0.8, 0.9, 1.0]), epoch=3)
    e.update(np.arange(5), np.array([0.55, 0.75, 0.7, 0.95, 1.0]), epoch=3)
    a = hard_set_agreement(f, e, np.ones(5, bool), forward_min_epoch=3, epoch=3, outlier_threshold=0.5)
    # forward mean 0.8 -> hard {0, 1}; exact mean 0.79 -> hard {0, 1, 2}; Spearman of the two rankings = 0.9
    assert (a["n_hard_forward"], a["n_hard_exact"], a["hard_jaccard"]) == (2, 3, pytest.approx(2 / 3))
    assert a["spearman"] == pytest.approx(0.9)


# ---------------------------------------------------------------------------------------------------- checkpoints
def test_sidecar_is_atomic_and_keeps_the_previous_state(tmp_path, monkeypatch):
    ckpt = str(tmp_path / "checkpoint_latest.pth")
    checkpoint_state.write_state(ckpt, 3, {"records": [0, 1, 2]})
    checkpoint_state.write_state(ckpt, 4, {"records": [0, 1, 2, 3]})
    assert checkpoint_state.read_state(ckpt, 3) == {"records": [0, 1, 2]}  # a kill before nnU-Net's write: still there
    assert checkpoint_state.read_state(ckpt, 4)["records"] == [0, 1, 2, 3]

    def killed(obj, path):  # the process dies while writing the temporary file
        open(path, "wb").write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_state.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_state.write_state(ckpt, 5, {"records": [0, 1, 2, 3, 4]})
    monkeypatch.undo()
    assert checkpoint_state.read_state(ckpt, 4)["records"] == [0, 1, 2, 3]  # the sidecar on disk is intact
    assert checkpoint_state.read_state(ckpt, 5) is None


def test_table1_grid_trainers_are_written_out_one_per_grid_point():
    """The 20 Table 1 trainers exist as classes in pnss_table1.py (found by name in the source, not generated at
    import), each with its grid point's alpha and beta and everything else from its base."""
    import ast
    import pathlib

    import nnunetv2_ext.trainers.pnss_table1 as grid
    from nnunetv2_ext.trainers import nnUNetTrainerPNSS, nnUNetTrainerPNSSHESS
    source = pathlib.Path(grid.__file__).read_text()
    defined = {n.name for n in ast.parse(source).body if isinstance(n, ast.ClassDef)}
    expected = {f"{b.__name__}_{a}_b{beta}" for b in (nnUNetTrainerPNSS, nnUNetTrainerPNSSHESS)
                for a in grid.TABLE1_ALPHAS for beta in grid.TABLE1_BETAS}
    assert defined == expected and len(expected) == 20
    for base in (nnUNetTrainerPNSS, nnUNetTrainerPNSSHESS):
        for a_name, alpha in grid.TABLE1_ALPHAS.items():
            for beta in grid.TABLE1_BETAS:
                cls = getattr(grid, f"{base.__name__}_{a_name}_b{beta}")
                assert issubclass(cls, base) and cls.sampling == replace(base.sampling, alpha=alpha, beta=beta)
