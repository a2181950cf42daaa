"""Coarse-to-fine scheme (issue 12), unit level: RDSC and the stopping rule of Algorithm 1, the saliency
transformation F_S and Eq. 9's fine input, paste-back, the boxes, the three-step gradient paths, Eq. 13's weights and
the bad-input checks. Hand-computed cases; toy stages instead of U-Nets where the arithmetic must be exact."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_trainer

from nnunetv2_ext.coarse_to_fine.iterative import (IterationLog, IterationRecord, StoppingRule, case_rdsc_curve,
                                                   iterate_fine_stage, relative_dice)
from nnunetv2_ext.coarse_to_fine.loss import CoarseToFineLoss, coarse_fallback_warning
from nnunetv2_ext.coarse_to_fine.network import (COARSE_TO_FINE_SCHEDULE, CoarseToFineNet, coarse_to_fine_schedule,
                                                 keep_in_graph, reference_organ)
from nnunetv2_ext.two_stage.crop import crop_with_padding
from nnunetv2_ext.two_stage.prior import SalientChangeModule
from nnunetv2_ext.two_stage.steps import STEP_I, STEP_J, STEP_S


# ---------------------------------------------------------------------------------------------------- RDSC, rule
def _mask(shape, *boxes):
    m = torch.zeros(shape, dtype=torch.bool)
    for (a, b), (c, d) in boxes:
        m[a:b, c:d] = True
    return m


def test_relative_dice_by_hand():
    a = _mask((6, 6), ((0, 2), (0, 2)))  # 4 voxels
    b = _mask((6, 6), ((0, 1), (0, 2)))  # 2 voxels, both inside a
    assert relative_dice(a, b) == (pytest.approx(2 * 2 / 6), 2, 4, 2)
    assert relative_dice(a, a)[0] == 1.0
    empty = torch.zeros(6, 6, dtype=torch.bool)
    assert relative_dice(empty, empty)[0] == 1.0  # RSTN: both empty -> converged
    assert relative_dice(a, empty)[0] == 0.0
    with pytest.raises(ValueError, match="same shape"):
        relative_dice(a, torch.zeros(5, 6, dtype=torch.bool))


@pytest.mark.parametrize("tol", [0, -0.1, 1.0001, float("nan"), float("inf"), "0.9", True])
def test_stopping_rule_rejects_tol_outside_0_1(tol):
    with pytest.raises(ValueError, match="tol must lie in \\(0, 1\\]"):
        StoppingRule(tol=tol)


@pytest.mark.parametrize("t_max", [0, -3, 2.5, True, None])
def test_stopping_rule_rejects_bad_t_max(t_max):
    with pytest.raises(ValueError, match="T_max"):
        StoppingRule(max_iterations=t_max)


def test_stopping_rule_paper_defaults_and_edges():
    rule = StoppingRule()
    assert (rule.tol, rule.max_iterations) == (0.99, 10)
    assert StoppingRule(tol=1.0, max_iterations=1).converged(1.0)
    assert not rule.converged(0.9899) and rule.converged(0.99)


def _scripted(masks):
    """refine() returning the given masks in turn (probability = mask as float, output = the round number)."""
    it = iter(masks)
    calls = []

    def refine(probability, mask):
        calls.append(mask.clone())
        new = next(it)
        return torch.tensor(len(calls)), new.float(), new
    return refine, calls


def test_iterations_stop_when_rdsc_reaches_tol():
    m0 = _mask((8, 8), ((0, 4), (0, 4)))      # 16 voxels
    m1 = _mask((8, 8), ((0, 4), (0, 2)))      # 8, inside m0: RDSC 16 / 24
    m2 = _mask((8, 8), ((0, 4), (0, 2)))      # = m1: RDSC 1
    refine, calls = _scripted([m1, m2, m1])
    out, rec = iterate_fine_stage(m0.float(), m0, torch.tensor(0), refine, StoppingRule(0.99, 10))
    assert rec.iterations == 2 and rec.converged and not rec.stopped_empty
    assert rec.rdsc == [pytest.approx(2 / 3), 1.0]
    assert rec.overlaps == [(8, 8, 16), (8, 8, 8)]
    assert int(out) == 2 and torch.equal(calls[0], m0) and torch.equal(calls[1], m1)  # box/saliency from M_{t-1}


def test_iterations_stop_at_t_max_unconverged_and_at_lower_tol():
    m0 = _mask((8, 8), ((0, 4), (0, 4)))
    m1 = _mask((8, 8), ((0, 4), (0, 2)))
    refine, _ = _scripted([m1, m1])
    _, rec = iterate_fine_stage(m0.float(), m0, torch.tensor(0), refine, StoppingRule(0.99, 1))
    assert rec.iterations == 1 and not rec.converged and rec.rdsc == [pytest.approx(2 / 3)]
    refine, _ = _scripted([m1, m1])
    _, rec = iterate_fine_stage(m0.float(), m0, torch.tensor(0), refine, StoppingRule(0.6, 10))
    assert rec.iterations == 1 and rec.converged


def test_empty_coarse_mask_runs_no_fine_round_and_empty_fine_mask_stops():
    empty = torch.zeros(8, 8, dtype=torch.bool)
    refine, calls = _scripted([])
    out, rec = iterate_fine_stage(empty.float(), empty, torch.tensor(-1), refine, StoppingRule())
    assert int(out) == -1 and rec.iterations == 0 and rec.coarse_empty and rec.converged and not calls
    m0 = _mask((8, 8), ((0, 4), (0, 4)))
    refine, calls = _scripted([empty, m0])
    _, rec = iterate_fine_stage(m0.float(), m0, torch.tensor(0), refine, StoppingRule())
    # the fine stage removed the coarse false positive: an empty mask is a fixed point (no box, RDSC 1 next round)
    assert rec.iterations == 1 and rec.stopped_empty and rec.converged and rec.rdsc == [0.0] and len(calls) == 1


def test_case_curve_aggregates_inputs_and_keeps_stopped_masks():
    # input A: 2 rounds, (inter, |M_t|, |M_t-1|) = (8, 8, 16) then (8, 8, 8); input B stops after one round (4,4,4)
    a = IterationRecord(2, [2 / 3, 1.0], [(8, 8, 16), (8, 8, 8)], True)
    b = IterationRecord(1, [1.0], [(4, 4, 4)], True)
    c = IterationRecord(coarse_empty=True)
    curve = case_rdsc_curve([a, b, c])
    assert curve == [pytest.approx(2 * 12 / (12 + 20)), pytest.approx(1.0)]  # round 2: B contributes (4, 4, 4)


def test_iteration_log_groups_cases_and_summarises_like_table_4(tmp_path):
    log = IterationLog(StoppingRule(0.99, 3))
    log.start_case()
    log.start_case()  # a case without records is dropped
    log.add(IterationRecord(2, [0.5, 1.0], [(2, 2, 6), (2, 2, 2)], True))
    log.add(IterationRecord(coarse_empty=True))
    log.start_case()
    log.add(IterationRecord(3, [0.5, 0.8, 0.9], [(1, 1, 3), (4, 5, 5), (9, 10, 10)], False))
    s = log.summary(["a", "b"])
    assert s["cases"] == 2 and s["mean_iterations"] == pytest.approx(2.5) and s["converged_fraction"] == 0.5
    a, b = s["per_case"]
    assert (a["case"], a["iterations"], a["inputs"], a["inputs_refined"], a["converged"]) == ("a", 2, 2, 1, True)
    assert a["rdsc"] == [0.5, 1.0] and b["rdsc"] == [0.5, 0.8, 0.9]
    assert s["mean_rdsc_by_iteration"] == [0.5, 0.9, pytest.approx(0.95)]  # a counts as 1.0 after stopping
    text = log.format(["a", "b"])
    assert "case a: iterations 2" in text and "converged no" in text and "mean iterations 2.50, converged 50.0 %" in text
    written = log.write_json(str(tmp_path / "log.json"), ["a", "b"])
    assert json.loads((tmp_path / "log.json").read_text()) == written
    with pytest.raises(ValueError, match="case names"):
        log.summary(["only one"])


# ---------------------------------------------------------------------------------------------------- F_S, Eq. 9
def test_saliency_transformation_starts_as_identity_and_concatenates_the_image():
    fs = SalientChangeModule(nn.Conv2d, 1, concat_image=True)
    x, p = torch.randn(2, 1, 6, 6), torch.rand(2, 1, 6, 6)
    out = fs(x, p)
    assert out.shape == (2, 2, 6, 6) and fs.out_channels == 2
    assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(out[:, 1], x[:, 0])  # I = F_S(P) = 1 at initialisation


def test_saliency_transformation_by_hand():
    """1x1 kernels, one hidden channel: I = 1 + tanh(w2 * leaky(w1 p + b1) + b2)."""
    fs = SalientChangeModule(nn.Conv2d, 1, hidden_channels=1, kernel_size=1, concat_image=True)
    with torch.no_grad():
        fs.transform[0].weight.fill_(2.0)
        fs.transform[0].bias.fill_(-0.5)
        fs.transform[-1].weight.fill_(1.5)
        fs.transform[-1].bias.fill_(0.1)
    p = torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3)
    x = torch.tensor([2.0, -1.0, 3.0]).view(1, 1, 1, 3)
    hidden = [2 * v - 0.5 for v in (0.0, 0.25, 1.0)]
    hidden = [h if h > 0 else 0.01 * h for h in hidden]
    weight = [1 + math.tanh(1.5 * h + 0.1) for h in hidden]
    out = fs(x, p)
    assert out[0, 0, 0].tolist() == pytest.approx([2.0 * weight[0], -1.0 * weight[1], 3.0 * weight[2]], rel=1e-6)
    assert out[0, 1, 0].tolist() == [2.0, -1.0, 3.0]


# ---------------------------------------------------------------------------------------------------- toy network
class ToyCoarse(nn.Module):
    """Organ logit = 10 * channel 0 - 5 (organ where x > 0.5) in the left 24 columns only (it misses the distractor),
    shifted by ``shift`` columns, times a learnable scale (starts at 1)."""

    def __init__(self, shift=0):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.shift = shift

    def forward(self, x):
        seen = x[:, :1].clone()
        seen[..., 24:] = 0
        organ = 10 * self.scale * torch.roll(seen, self.shift, dims=-1) - 5
        return torch.cat([torch.zeros_like(organ), organ], 1)


class ToyFine(nn.Module):
    """Organ logit from the ORIGINAL image half of Eq. 9's input (channel C), plus a learnable multiplier on the
    saliency-weighted half that starts at 0 (so the output is exact) - gradients still flow through it."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, z):
        self.seen.append(z.detach().clone())
        organ = 10 * z[:, 1:2] - 5 + self.w * z[:, :1]
        return torch.cat([torch.zeros_like(organ), organ], 1)


def _toy_net(shift=0, margin=2, rule=StoppingRule(0.99, 10), random_margins=0.0):
    net = CoarseToFineNet(ToyCoarse(shift), ToyFine(), SalientChangeModule(nn.Conv2d, 1, concat_image=True),
                          total_stride=(4, 4), crop_margin=margin, stopping_rule=rule,
                          random_margin_probability=random_margins)
    return net


def _image():
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 8:16, 8:14] = 1.0    # the organ
    x[0, 0, 26:30, 26:30] = 1.0  # a distractor far away
    return x


def test_fine_input_is_eq_9_crop_of_weighted_and_original_image():
    net = _toy_net()
    with torch.no_grad():
        net.saliency.transform[-1].bias.fill_(0.3)  # I = 1 + tanh(0.3) everywhere
    x, p = torch.randn(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    box = ((-2, 6), (4, 12))  # reaches outside: zero padded
    z = net.fine_input(x, p, box)
    expected = crop_with_padding(torch.cat([x * (1 + math.tanh(0.3)), x], 1), box, 0.0)
    assert z.shape == (1, 2, 8, 8) and torch.allclose(z, expected)
    net.set_step(STEP_S)  # F_S off in step S: [X, X]
    assert torch.equal(net.fine_input(x, p, box), crop_with_padding(torch.cat([x, x], 1), box, 0.0))


def test_boxes_margin_stride_and_random_margins():
    net = _toy_net(margin=2)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:16, 8:14] = True  # 8 x 6
    # + 2 per side -> 12 x 10 -> multiple of 4: 12 x 12, centred
    assert net.crop_box(mask) == ((6, 18), (5, 17))
    assert net.crop_box(torch.zeros(32, 32, dtype=torch.bool)) is None
    net.random_margin_probability = 1.0
    torch.manual_seed(0)
    sizes = set()
    for _ in range(40):
        (a, b), (c, d) = net.crop_box(mask, randomise=True)
        assert a <= 8 and b >= 16 and c <= 8 and d >= 14      # never smaller than the organ box
        assert b - a <= 8 + 2 * 4 + 3 and (b - a) % 4 == 0    # each side in [0, 2K], then stride-rounded
        sizes.add((b - a, d - c))
    assert len(sizes) > 1
    assert net.crop_box(mask, randomise=False) == ((6, 18), (5, 17))  # inference: always K


def test_paste_back_is_background_outside_the_box():
    net = _toy_net()
    crop = torch.log_softmax(torch.randn(1, 2, 4, 8), 1)
    box = ((2, 6), (-2, 6))
    full = net.paste(crop, box, (10, 10))
    assert torch.equal(full[..., 2:6, 0:6], crop[..., 2:8])
    outside = torch.ones(10, 10, dtype=torch.bool)
    outside[2:6, 0:6] = False
    assert (full[0, 0][outside] == 0).all() and (full[0, 1][outside] == -net.fill_logit).all()
    assert (full.argmax(1)[0][outside] == 0).all()


def test_iterative_test_refines_until_rdsc_converges():
    """Coarse mask = organ shifted by 3 columns (RDSC to the organ 0.5): round 1 crops around it (the box covers the
    organ, the distractor that the fine stage would segment stays outside), round 2 crops around round 1's mask (the
    organ): same mask, RDSC 1, stop."""
    net = _toy_net(shift=3).eval()
    x = _image()
    with torch.no_grad():
        out = net(x)
    organ = torch.zeros(32, 32, dtype=torch.bool)
    organ[8:16, 8:14] = True
    assert torch.equal(out.argmax(1)[0] == 1, organ)  # exact organ; the distractor is outside every box
    (case,) = net.iteration_log.cases
    (rec,) = case
    coarse = torch.roll(organ, 3, dims=-1)  # what the toy coarse stage sees
    assert relative_dice(organ, coarse)[0] == pytest.approx(0.5)
    assert rec.iterations == 2 and rec.converged and rec.rdsc == [pytest.approx(0.5), 1.0]
    # round 1's box from the coarse mask (rows 8:16, cols 11:17, + K = 2, to multiples of 4), round 2's from round 1's
    x0 = torch.cat([x, x], 1)
    assert torch.equal(net.fine.seen[0], crop_with_padding(x0, ((6, 18), (8, 20))))
    assert torch.equal(net.fine.seen[1], crop_with_padding(x0, ((6, 18), (5, 17))))

    net.stopping_rule = net.iteration_log.rule = StoppingRule(0.99, 1)
    net.iteration_log.start_case("next")
    with torch.no_grad():
        net(x)
    assert len(net.iteration_log.cases) == 2 and net.iteration_log.cases[1][0].iterations == 1
    assert not net.iteration_log.cases[1][0].converged


def test_eval_without_iterative_test_is_one_pass():
    net = _toy_net(shift=3).eval()
    net.iterative_test = False
    with torch.no_grad():
        net(_image())
    assert len(net.fine.seen) == 1 and not net.iteration_log.cases


def _train_once(net, step, reference, coarse_weight=0.0):
    net.train()
    net.set_step(step)
    net.record_auxiliary = True
    net.set_reference(reference)
    x = _image().repeat(2, 1, 1, 1)
    target = reference[:, None].long()
    out = net(x)
    loss = CoarseToFineLoss(lambda logits, t: nn.functional.nll_loss(torch.log_softmax(logits, 1), t[:, 0]),
                            coarse_weight, 1.0)
    total = loss(out, net.auxiliary, target)
    net.zero_grad()
    total.backward()
    return net, loss


def _reference():
    ref = torch.zeros(2, 32, 32, dtype=torch.bool)
    ref[:, 8:16, 8:14] = True
    return ref


def test_step_S_trains_the_stages_separately_and_I_J_jointly():
    for step, joint in ((STEP_S, False), (STEP_I, True), (STEP_J, True)):
        net = _toy_net()
        with torch.no_grad():
            net.saliency.transform[-1].weight.normal_(0, 0.5)  # F_S no longer flat: d I / d P != 0
            net.fine.w.fill_(0.5)  # the fine stage uses the weighted half
        net, _ = _train_once(net, step, _reference())
        coarse_grad = net.coarse.scale.grad
        assert (coarse_grad is not None and coarse_grad.abs() > 0) == joint, step.name
        # DDP: every parameter takes part in every step (F_S with a zero gradient in step S)
        assert all(p.grad is not None for p in net.parameters()), step.name


def test_step_J_uses_predicted_boxes_and_falls_back_to_the_reference_when_empty():
    net = _toy_net(shift=3)
    net, _ = _train_once(net, STEP_J, _reference())
    assert net.auxiliary.reference_fallbacks == 0
    assert net.auxiliary.boxes[0] == net.crop_box(torch.roll(_reference()[0], 3, dims=-1)) == ((6, 18), (8, 20))
    net = _toy_net()
    with torch.no_grad():
        net.coarse.scale.fill_(0.0)  # coarse finds nothing -> reference box (RSTN)
    net, _ = _train_once(net, STEP_J, _reference())
    assert net.auxiliary.reference_fallbacks == 2 and net.auxiliary.boxes[0] == net.crop_box(_reference()[0])
    net, _ = _train_once(net, STEP_J, torch.zeros(2, 32, 32, dtype=torch.bool))
    assert net.auxiliary.boxes == [None, None]  # no organ anywhere: fine stage skipped, background


def test_reference_steps_give_organless_samples_the_coarse_box():
    """Steps S and I crop reference boxes; a sample without organ gets the coarse stage's (false positive) box, so
    the fine stage learns to reject it; without any prediction either, it is skipped."""
    reference = _reference()
    reference[1] = False
    for step in (STEP_S, STEP_I):
        net, _ = _train_once(_toy_net(shift=3), step, reference)
        assert net.auxiliary.boxes[0] == net.crop_box(reference[0])
        assert net.auxiliary.boxes[1] == net.crop_box(torch.roll(_reference()[0], 3, dims=-1))
        net = _toy_net()
        with torch.no_grad():
            net.coarse.scale.fill_(0.0)
        net, _ = _train_once(net, step, reference)
        assert net.auxiliary.boxes[1] is None and net.auxiliary.boxes[0] == net.crop_box(reference[0])


def test_eq_13_outer_weights():
    net = _toy_net()
    net, loss = _train_once(net, STEP_I, _reference(), coarse_weight=0.0)
    terms = loss.last_terms
    for w1, w2 in ((0.3, 2 / 3), (1.0, 0.0), (0.0, 1.0)):
        loss.coarse_weight, loss.fine_weight = w1, w2
        total = loss(net(_image().repeat(2, 1, 1, 1)), net.auxiliary, _reference()[:, None].long())
        assert float(total.detach()) == pytest.approx(w1 * terms["coarse"] + w2 * terms["fine"], rel=1e-5)
    with pytest.raises(ValueError, match="omega_1"):
        CoarseToFineLoss(nn.Identity(), -0.1, 1.0)
    with pytest.raises(ValueError, match="omega_2"):
        CoarseToFineLoss(nn.Identity(), 0.3, float("nan"))


def test_keep_in_graph_is_a_numerical_no_op():
    out = torch.randn(2, 3)
    m = nn.Linear(2, 2)
    kept = keep_in_graph(out, [m])
    assert torch.equal(kept, out)
    kept.sum().backward()
    assert m.weight.grad is not None and (m.weight.grad == 0).all()


def test_schedule_is_rstn_by_default_and_validated():
    assert COARSE_TO_FINE_SCHEDULE.starts(80) == (0, 10, 40)  # 10k / 30k / 40k of RSTN's 80k iterations
    assert [COARSE_TO_FINE_SCHEDULE.step_for_epoch(e, 8).name for e in range(8)] == list("SIIIJJJJ")
    with pytest.raises(ValueError):
        coarse_to_fine_schedule(0.7, 0.5)


def test_network_rejects_bad_margin_and_missing_concatenation():
    with pytest.raises(ValueError, match="crop margin"):
        _toy_net(margin=-1)
    with pytest.raises(ValueError, match="concat"):
        CoarseToFineNet(ToyCoarse(), ToyFine(), SalientChangeModule(nn.Conv2d, 1), (4, 4))


def test_reference_organ_excludes_the_ignore_label():
    target = torch.tensor([[[[0, 1, 2]]]])
    assert reference_organ(target).tolist() == [[[False, True, False]]]
    assert np.isclose(relative_dice(torch.ones(3), torch.ones(3))[0], 1.0)


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_input_fails_before_training(phantom_2d_plans):
    """Refused when the trainer is built (as nnUNetv2_train builds it) or its network rebuilt (as nnUNetv2_predict
    does), before any case is read. Needs only the phantom's plans."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_ext.trainers.small_variants import nnUNetTrainerCoarseToFineTiny as T
    plans, dataset_json = phantom_2d_plans.plans, phantom_2d_plans.dataset_json

    two_organs = dict(dataset_json, labels={"background": 0, "organ": 1, "other": 2})
    with pytest.raises(ValueError, match="ONE organ"):
        make_trainer(T, plans, two_organs, "2d", 1)
    regions = dict(dataset_json, labels={"background": 0, "organ": [1, 2], "core": 2}, regions_class_order=[1, 2])
    with pytest.raises(ValueError, match="region"):
        make_trainer(T, plans, regions, "2d", 1)
    for attr, value, match in (("crop_margin", -1, "crop margin"), ("tol", 0.0, "tol"), ("tol", 1.5, "tol"),
                               ("max_iterations", 0, "T_max")):
        bad = type("Bad", (T,), {attr: value})
        with pytest.raises(ValueError, match=match):
            make_trainer(bad, plans, dataset_json, "2d", 1)
        # nnUNetv2_predict rebuilds the network through the class: the same check, before any case is read
        pm = PlansManager(phantom_2d_plans.plans)
        with pytest.raises(ValueError, match=match):
            bad.build_network_architecture(pm, pm.get_configuration("2d"), 1, 2, False)
    three_d = phantom_2d_plans.plans
    three_d["configurations"]["3d_fullres"] = dict(three_d["configurations"]["2d"], patch_size=[16, 32, 32],
                                                   spacing=[3.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="2d slices"):
        make_trainer(T, three_d, dataset_json, "3d_fullres", 1)
    ignore = dict(dataset_json, labels={"background": 0, "organ": 1, "ignore": 2})
    make_trainer(T, plans, ignore, "2d", 1)  # an ignore label is fine (boxes from label 1 only)


def test_coarse_fallback_warning_only_in_predicted_box_steps_above_a_quarter():
    assert coarse_fallback_warning(25, 100, False, 0.3) is None  # exactly a quarter: quiet
    text = coarse_fallback_warning(26, 100, False, 0.3)
    assert text.startswith("WARNING: the coarse stage found no organ in 26 of 100") and "omega1, now 0.3" in text
    assert coarse_fallback_warning(100, 100, True, 0.3) is None  # steps S / I crop from the reference anyway


def test_whole_case_prediction_names_the_case_and_returns_its_record():
    """The case-level path (nnunet_adapters.predictor): every slice of the case goes through the iterative test,
    the records are grouped under the case's name, and the case's summary comes back for the JSONL log (the network
    writes nothing itself)."""
    from nnunetv2_ext.coarse_to_fine.network import ITERATION_CASE_LOG
    from nnunetv2_ext.nnunet_adapters.predictor import CaseContext
    net = _toy_net(shift=3).eval()
    case = torch.cat([_image()[0], _image()[0]], 0)[None]  # (C 1, Z 2, Y 32, X 32): two identical slices
    with torch.no_grad():
        direct = net(_image())  # recorded as an unnamed case
        prediction = net.predict_case_logits(case, CaseContext("case_3", (3.0, 1.0, 1.0), (32, 32)))
    assert prediction.logits.shape == (2, 2, 32, 32)
    assert torch.allclose(prediction.logits[:, 0], direct[0], atol=1e-5)  # one tile = the slice: same output
    assert prediction.log_name == ITERATION_CASE_LOG
    assert prediction.record["case"] == "case_3" and prediction.record["inputs"] == 2
    assert prediction.record["iterations"] == 2 and prediction.lines[0].startswith("Coarse-to-fine: case case_3:")
    with torch.no_grad():  # test-time mirroring over both in-plane axes: 4 inputs per slice
        mirrored = net.predict_case_logits(case, CaseContext("case_4", None, (32, 32), mirror_axes=(0, 1)))
    assert mirrored.record["inputs"] == 8 and net.iteration_log.names[-1] == "case_4"
    net.iterative_test = False
    with torch.no_grad():
        single = net.predict_case_logits(case, CaseContext("case_5", None, (32, 32)))
    assert single.record is None and net.iteration_log.names == [None, "case_3", "case_4"]  # nothing recorded


# ------------------------------------------------------------------ the MLL model (issue 18, item 2)
class _Constant(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value
        self.calls = []

    def forward(self, output, target, sdm=None):
        self.calls.append(sdm)
        return output.sum() * 0 + self.value


def test_fine_terms_add_eq_11_on_the_fine_output_by_hand():
    """ω1 E_R(coarse) + ω2 (E_R(fine) + α L_B + β E_P) with constants for every term:
    0.3·1 + 0.5·(2 + 0.5·3 + 0·4) before β switches on, + 0.5·1·4 after; a term whose weight is 0 is not
    computed (nan in the log)."""
    from types import SimpleNamespace

    from nnunetv2_ext.losses.schedules import ConstantWeight, SwitchWeight
    region = lambda logits, t: logits.sum() * 0 + (1.0 if logits.shape[-1] == 7 else 2.0)  # noqa: E731
    boundary, pixel = _Constant(3.0), _Constant(4.0)
    loss = CoarseToFineLoss(region, 0.3, 0.5, fine_terms={"boundary": (boundary, ConstantWeight(0.5)),
                                                          "pixelwise": (pixel, SwitchWeight(0.6))})
    aux = SimpleNamespace(coarse_logits=torch.zeros(1, 2, 7, 7))
    output, target, sdm = torch.zeros(1, 2, 8, 8), torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    loss.set_epoch(5, 10)
    assert loss.current_weights() == {"coarse": 0.3, "fine": 0.5, "boundary": 0.5, "pixelwise": 0.0}
    assert float(loss(output, aux, target, sdm)) == pytest.approx(0.3 + 0.5 * (2 + 1.5))
    assert math.isnan(loss.last_terms["pixelwise"]) and loss.last_terms["boundary"] == 3.0 and not pixel.calls
    loss.set_epoch(6, 10)
    assert float(loss(output, aux, target, sdm)) == pytest.approx(0.3 + 0.5 * (2 + 1.5 + 4))
    assert boundary.calls[-1] is sdm  # the terms get the signed distance maps
    with pytest.raises(ValueError, match="exclude each other"):
        from nnunetv2_ext.coarse_to_fine.loss import MLNLossWeights
        from nnunetv2_ext.coarse_to_fine.mln import MLNBoundaryTerm
        CoarseToFineLoss(region, 0.3, 0.5, MLNLossWeights(), MLNBoundaryTerm(2.0),
                         fine_terms={"boundary": (boundary, ConstantWeight(1.0))})
    with pytest.raises(ValueError, match="fine term 'fine' needs another name"):
        CoarseToFineLoss(region, 0.3, 0.5, fine_terms={"fine": (boundary, ConstantWeight(1.0))})


def test_mll_model_has_the_papers_settings(phantom_2d_plans):
    from nnunetv2_ext.losses.schedules import restart_epoch
    from nnunetv2_ext.trainers.coarse_to_fine import nnUNetTrainerCoarseToFineMLL as T
    assert T.mll_pixelwise_weight(11, 20) == 0 and T.mll_pixelwise_weight(12, 20) == 1  # epoch 12 of 20
    assert restart_epoch(T.lr_restart_fraction, 20) == 12 and T.mll_selection_stride == 4
    assert [T.mll_boundary_weight(e, 20) for e in range(0, 6)] == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    schedule = coarse_to_fine_schedule(T.separate_fraction, T.joint_reference_fraction)
    assert schedule.step_for_epoch(7, 20).name == "I" and schedule.step_for_epoch(8, 20).name == "J"  # J at epoch 8
    trainer = make_trainer(T, phantom_2d_plans.plans, phantom_2d_plans.dataset_json)
    loss = trainer.build_loss_module(nn.Identity())
    assert set(loss.fine_terms) == {"boundary", "pixelwise"} and loss.fine_terms["pixelwise"].selection_stride == 4
