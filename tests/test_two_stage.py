"""Unit tests of the cascade tumour variant (issue 6): crop/paste, modules, losses, steps, input checks."""
import dataclasses

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunetv2_ext.losses.cascade import (CascadeTumorLoss, bce_iou_loss, boundary_weight, stage2_loss,
                                         weighted_bce_iou_loss)
from nnunetv2_ext.networks.cascade_tumour import (CascadeTumorNet, ContextExplorationBlock, FocusModule,
                                                  LocalisationModule, PlansOps, TumourStageNet)
from nnunetv2_ext.two_stage.checks import check_cascade_labels, check_tumour_inside_organ
from nnunetv2_ext.two_stage.crop import bounding_box, crop_with_padding, expand_box, paste_crop
from nnunetv2_ext.two_stage.prior import SalientChangeModule
from nnunetv2_ext.two_stage.steps import STEP_I, STEP_J, STEP_S, step_boundaries, step_for_epoch


def _unet(dim, in_ch=1, out_ch=2):
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
    strides = [1, 2, 2, 2] if dim == 2 else [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    n = len(strides)
    return PlainConvUNet(in_ch, n, [8, 16, 16, 16][:n], conv, 3, strides, [1] * n, out_ch, [1] * (n - 1),
                         conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)


def _cascade(dim, margin=2, fallback="no_tumour"):
    torch.manual_seed(0)
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    return CascadeTumorNet(_unet(dim), TumourStageNet(_unet(dim).encoder), SalientChangeModule(conv, 1),
                           crop_margin=margin, empty_organ_fallback=fallback)


# ------------------------------------------------------------------ crop / paste
def test_bounding_box_and_empty():
    m = torch.zeros(10, 12, dtype=torch.bool)
    assert bounding_box(m) is None
    m[2:5, 7] = True
    assert bounding_box(m) == ((2, 5), (7, 8))


def test_expand_box_margin_multiple_and_border():
    box = expand_box(((2, 5), (7, 8)), margin=3, multiple_of=(4, 8), min_size=(8, 8))
    assert [hi - lo for lo, hi in box] == [12, 8]  # 3 + 2*3 = 9 -> 12 (multiple of 4); 1 + 6 -> min 8
    assert box[0][0] < 0  # reaches outside the image: padded, not clipped
    for (lo, hi), mult in zip(box, (4, 8)):
        assert (hi - lo) % mult == 0
    with pytest.raises(ValueError, match="margin"):
        expand_box(((0, 1),), margin=-1, multiple_of=(1,), min_size=(1,))


@pytest.mark.parametrize("box", [((1, 5), (2, 9), (0, 4)), ((-3, 4), (5, 15), (-2, 8)), ((-1, 9), (-1, 11), (-1, 7))])
def test_crop_paste_round_trip_is_exact(box):
    x = torch.randn(2, 8, 10, 6)
    crop = crop_with_padding(x, box, pad_value=0.0)
    assert crop.shape == (2, *[hi - lo for lo, hi in box])
    back = paste_crop(crop, box, x.shape[1:], fill=-7.0)
    inside = torch.zeros(x.shape[1:], dtype=torch.bool)
    inside[tuple(slice(max(lo, 0), hi) for lo, hi in box)] = True
    assert torch.equal(back[:, inside], x[:, inside])
    assert (back[:, ~inside] == -7.0).all()
    # the padded part of the crop holds the pad value
    if box[0][0] < 0:
        assert (crop[:, : -box[0][0]] == 0).all()


def test_crop_box_outside_image_raises():
    with pytest.raises(ValueError, match="outside"):
        crop_with_padding(torch.zeros(1, 4, 4), ((5, 8), (0, 2)))


# ------------------------------------------------------------------ modules
@pytest.mark.parametrize("dim", [2, 3])
def test_module_shapes_and_gradients(dim):
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    ops = PlansOps(conv, nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d, {"affine": True}, nn.LeakyReLU, {})
    s = (4, 8, 8) if dim == 3 else (8, 8)
    x = torch.randn(2, 16, *s, requires_grad=True)
    ce = ContextExplorationBlock(ops, 16)
    assert ce(x).shape == x.shape
    loc = LocalisationModule(conv, 16)
    feats, m = loc(x)
    assert feats.shape == x.shape and m.shape == (2, 1, *s)
    assert loc.channel_attention.gamma.item() == 1 and loc.spatial_attention.gamma.item() == 1
    stride = [1, 2, 2] if dim == 3 else [2, 2]
    focus = FocusModule(ops, 8, 16, stride)
    fine = torch.randn(2, 8, *[a * b for a, b in zip(s, stride)])
    f, fm = focus(fine, feats, m)
    assert f.shape == fine.shape and fm.shape == (2, 1, *fine.shape[2:])
    (fm.sum() + f.mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert focus.fp_weight.grad is not None and focus.fn_weight.grad is not None
    assert loc.channel_attention.gamma.grad is not None and loc.spatial_attention.gamma.grad is not None


def test_salient_change_starts_as_identity_and_is_differentiable():
    scm = SalientChangeModule(nn.Conv2d, 1)
    x = torch.randn(1, 1, 8, 8)
    p = torch.rand(1, 1, 8, 8, requires_grad=True)
    assert torch.equal(scm(x, p), x)
    nn.init.normal_(scm.transform[-1].weight)
    scm(x, p).sum().backward()
    assert p.grad.abs().sum() > 0


@pytest.mark.parametrize("dim", [2, 3])
def test_tumour_stage_net_outputs(dim):
    net = TumourStageNet(_unet(dim).encoder)
    s = (4, 16, 16) if dim == 3 else (16, 16)
    loc, maps = net(torch.randn(1, 1, *s))
    assert len(maps) == len(net.focus) and maps[-1].shape == (1, 1, *s)
    assert loc.shape[2:] == tuple(a // b for a, b in zip(s, net.total_stride))


def _phantom_batch(dim):
    """Batch of 2: sample 0 has an organ with a tumour inside, sample 1 has neither."""
    s = (8, 24, 24) if dim == 3 else (24, 24)
    target = torch.zeros(2, 1, *s)
    organ = (slice(None),) * (dim - 2) + (slice(8, 16), slice(6, 14)) if dim == 2 else \
        (slice(2, 6), slice(8, 16), slice(6, 14))
    target[(0, 0, *organ)] = 1
    tumour = (slice(10, 13), slice(8, 11)) if dim == 2 else (slice(3, 5), slice(10, 13), slice(8, 11))
    target[(0, 0, *tumour)] = 2
    x = torch.randn(2, 1, *s) + target
    return x, target


@pytest.mark.parametrize("dim", [2, 3])
def test_cascade_net_reference_boxes_and_empty_fallback(dim):
    net = _cascade(dim)
    net.record_auxiliary = True
    x, target = _phantom_batch(dim)
    net.set_reference_organ(target[:, 0] > 0)
    logits = net(x)
    assert logits.shape == (2, 3, *x.shape[2:])
    # log-probabilities: softmax gives back probabilities that sum to 1
    assert torch.allclose(logits.exp().sum(1), torch.ones(1), atol=1e-5)
    aux = net.auxiliary
    box = aux.boxes[0]
    organ_box = bounding_box(target[0, 0] > 0)
    for (lo, hi), (olo, ohi), mult in zip(box, organ_box, net.stage2.total_stride):
        assert lo <= olo - net.crop_margin and hi >= ohi + net.crop_margin and (hi - lo) % mult == 0
    assert aux.boxes[1] is None and aux.focus_maps[1] is None  # no organ: stage 2 skipped
    assert net.num_empty_organ_patches == 1 and net.num_patches == 2
    # tumour probability is ~0 outside the crop box
    outside = torch.ones(x.shape[2:], dtype=torch.bool)
    outside[tuple(slice(max(lo, 0), hi) for lo, hi in box)] = False
    assert logits[0, 2][outside].exp().max() < 1e-6
    assert logits[1, 2].exp().max() < 1e-6


def test_cascade_net_whole_patch_fallback_and_prediction_boxes():
    net = _cascade(2, fallback="whole_patch")
    net.record_auxiliary = True
    x, _ = _phantom_batch(2)
    with torch.no_grad():
        net.stage1.decoder.seg_layers[-1].bias.copy_(torch.tensor([10.0, -10.0]))  # stage 1 finds no organ
    net(x)
    assert all(b is not None for b in net.auxiliary.boxes)  # whole patch
    assert net.auxiliary.boxes[0] == ((0, 24), (0, 24))
    with pytest.raises(ValueError, match="empty_organ_fallback"):
        _cascade(2, fallback="nonsense")


@pytest.mark.parametrize("prior", [False, True])
def test_loss_gradients_reach_stage1_through_prior_only_when_on(prior):
    net = _cascade(2)
    net.record_auxiliary = True
    net.set_prior_enabled(prior)
    nn.init.normal_(net.salient_change.transform[-1].weight)  # a trained prior
    x, target = _phantom_batch(2)
    net.set_reference_organ(target[:, 0] > 0)
    logits = net(x)
    seg2 = stage2_loss(net.auxiliary.location_maps[0], net.auxiliary.focus_maps[0],
                       crop_with_padding((target[:1] == 2).float(), net.auxiliary.boxes[0]))
    seg2.backward()
    grad = net.stage1.encoder.stages[0][0].convs[0].conv.weight.grad
    assert (grad is not None and grad.abs().sum() > 0) == prior


def test_cascade_loss_terms_and_backward():
    net = _cascade(2)
    net.record_auxiliary = True
    x, target = _phantom_batch(2)
    net.set_reference_organ(target[:, 0] > 0)
    logits = net(x)

    def stage1(organ_logits, organ_target):
        assert set(organ_target.unique().tolist()) <= {0, 1}
        return nn.functional.cross_entropy(organ_logits, organ_target[:, 0].long())

    calls = []

    def isb(lg, t):
        calls.append(lg.shape)
        return lg.mean() * 0 + 1.0

    loss = CascadeTumorLoss(stage1, alpha=0.9, beta=0.4, shared_boundary_loss=isb)
    total = loss(logits, net.auxiliary, target)
    t = loss.last_terms
    assert np.isclose(total.item(), t["seg1"] + 0.9 * t["seg2"] + 0.4 * 1.0, rtol=1e-5)
    assert calls == [logits.shape]
    total.backward()
    assert net.stage2.localisation.map.weight.grad.abs().sum() > 0
    assert net.stage2.focus[-1].map.weight.grad.abs().sum() > 0


def test_bce_iou_losses_prefer_the_right_answer():
    t = torch.zeros(1, 1, 16, 16)
    t[..., 4:9, 5:10] = 1
    good, bad = (t * 2 - 1) * 8, -(t * 2 - 1) * 8
    assert bce_iou_loss(good, t) < 0.05 < bce_iou_loss(bad, t)
    assert weighted_bce_iou_loss(good, t) < 0.05 < weighted_bce_iou_loss(bad, t)
    w = boundary_weight(t, 5)
    assert w[0, 0, 4, 5] > w[0, 0, 6, 7] and w[0, 0, 0, 0] == 1  # heavier at the boundary than inside / far away
    assert torch.isfinite(bce_iou_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)))


# ------------------------------------------------------------------ steps
def test_steps_switch_at_fractions():
    assert step_boundaries(56, 2 / 56, 4 / 56) == (2, 6)
    names = [step_for_epoch(e, 56).name for e in range(56)]
    assert names[:2] == ["S", "S"] and names[2:6] == ["I"] * 4 and set(names[6:]) == {"J"}
    assert [step_for_epoch(e, 4, 0.25, 0.25) for e in range(4)] == [STEP_S, STEP_I, STEP_J, STEP_J]
    assert not STEP_S.prior_enabled and STEP_S.reference_boxes
    assert STEP_I.prior_enabled and STEP_I.reference_boxes
    assert STEP_J.prior_enabled and not STEP_J.reference_boxes
    with pytest.raises(ValueError, match="<= 1"):
        step_boundaries(10, 0.6, 0.6)


# ------------------------------------------------------------------ input checks
class _Labels:
    def __init__(self, labels, regions=False, ignore=None):
        self.all_labels, self.has_regions, self.ignore_label = labels, regions, ignore
        self.has_ignore_label = ignore is not None


def test_label_checks():
    check_cascade_labels(_Labels([0, 1, 2]), "D")
    with pytest.raises(ValueError, match="needs labels"):
        check_cascade_labels(_Labels([0, 1]), "D")
    with pytest.raises(ValueError, match="region"):
        check_cascade_labels(_Labels([0, 1, 2], regions=True), "D")
    with pytest.raises(ValueError, match="ignore"):
        check_cascade_labels(_Labels([0, 1, 2, 3], ignore=3), "D")


class _FakeDataset:
    def __init__(self, cases):
        self.cases = cases

    def load_case(self, k):
        seg = self.cases[k]
        locs = {c: np.argwhere(seg == c) for c in (1, 2)}
        return None, seg, None, {"class_locations": {c: v for c, v in locs.items() if len(v)}}


def test_tumour_inside_organ_check():
    inside = np.zeros((1, 10, 10), np.int8)
    inside[0, 2:8, 2:8] = 1
    inside[0, 4:6, 4:6] = 2
    far = np.zeros((1, 10, 10), np.int8)
    far[0, 0:2, 0:2] = 1
    far[0, 8:10, 8:10] = 2
    check_tumour_inside_organ(_FakeDataset({"a": inside}), ["a"], "D")
    with pytest.raises(ValueError, match="b"):
        check_tumour_inside_organ(_FakeDataset({"a": inside, "b": far}), ["a", "b"], "D")
    organ_only = np.where(inside == 2, 1, inside)
    with pytest.raises(ValueError, match="no training case contains tumour"):
        check_tumour_inside_organ(_FakeDataset({"a": organ_only}), ["a"], "D")


# ------------------------------------------------------------------ shared two-stage API (boxes, prior, schedule)
def test_fit_box_to_patch_magnifies_small_boxes_keeping_aspect():
    from nnunetv2_ext.two_stage.boxes import fit_box_to_patch
    box, out, zoom = fit_box_to_patch(((10, 20), (30, 35)), (40, 40), max_zoom=8)
    assert zoom == 4 and out == (40, 40) and box == ((10, 20), (28, 38))  # 5 -> 10 voxels, centred
    box, out, zoom = fit_box_to_patch(((0, 4), (0, 4)), (40, 40), max_zoom=2)  # capped: grows to 20 x 20
    assert zoom == 2 and out == (40, 40) and [hi - lo for lo, hi in box] == [20, 20]
    box, out, zoom = fit_box_to_patch(((0, 60), (0, 10)), (40, 40))  # larger than the patch: not shrunk
    assert zoom == 1 and out == (60, 40) and box[0] == (0, 60)


def test_case_boxes_per_slice_and_per_volume_with_mm():
    from nnunetv2_ext.two_stage.boxes import case_boxes, format_box, margin_in_mm
    mask = torch.zeros(6, 10, 12, dtype=torch.bool)
    mask[2, 3:5, 4:9] = True
    mask[3, 1:2, 6:7] = True
    per_slice = case_boxes(mask, 2, spacing=(3.0, 0.5, 0.5))
    assert per_slice.found and per_slice.boxes == {2: ((3, 5), (4, 9)), 3: ((1, 2), (6, 7))}
    assert per_slice.union == ((2, 4), (1, 5), (4, 9)) and per_slice.union_mm == (6.0, 2.0, 2.5)
    volume = case_boxes(mask, 3)
    assert volume.boxes == {None: ((2, 4), (1, 5), (4, 9))}
    assert not case_boxes(torch.zeros(4, 4, 4), 3).found
    assert margin_in_mm(8, (0.8, 0.8)) == (6.4, 6.4) and "mm" in format_box(volume.union, (3.0, 0.5, 0.5))


def test_margin_checks():
    from nnunetv2_ext.two_stage.boxes import check_margin_leaves_room, grow_box, normalise_margin
    assert normalise_margin(3, 2) == (3, 3) and grow_box(((5, 6),), 2) == ((3, 8),)
    for bad in (-1, (1, 2, 3), 1.5, True):
        with pytest.raises(ValueError, match="crop margin"):
            normalise_margin(bad, 2)
    assert check_margin_leaves_room(8, (48, 48), (16, 16)) == (8, 8)
    with pytest.raises(ValueError, match=r"no room .* largest K per axis: \(16, 16\)"):
        check_margin_leaves_room(17, (48, 48), (16, 16))


def test_crop_and_resize_round_trip_on_constant_and_shapes():
    from nnunetv2_ext.two_stage.crop import crop_and_resize, resize_and_paste
    x = torch.full((1, 2, 12, 10), 3.0)
    crop = crop_and_resize(x, ((2, 8), (1, 6)), (24, 20))
    assert crop.shape == (1, 2, 24, 20) and torch.allclose(crop, torch.full_like(crop, 3.0))
    back = resize_and_paste(crop, ((2, 8), (1, 6)), (12, 10), fill=-1.0)
    assert torch.allclose(back[..., 2:8, 1:6], torch.full((1, 2, 6, 5), 3.0)) and (back[..., :2, :] == -1).all()


def test_saliency_weighted_and_concat_form():
    from nnunetv2_ext.two_stage.prior import saliency_weighted
    x, w = torch.ones(2, 1, 4, 4) * 2, torch.full((2, 1, 4, 4), 0.5)
    assert torch.equal(saliency_weighted(x, w), torch.ones(2, 1, 4, 4))
    both = saliency_weighted(x, w, concat_image=True)
    assert both.shape == (2, 2, 4, 4) and torch.equal(both[:, 1:], x)
    scm = SalientChangeModule(nn.Conv2d, 1, concat_image=True)
    assert scm.out_channels == 2 and scm(x, w).shape == (2, 2, 4, 4)
    with pytest.raises(ValueError, match="does not fit"):
        saliency_weighted(x, torch.ones(2, 1, 3, 4))


def test_generic_schedule_three_named_steps():
    from nnunetv2_ext.two_stage.steps import StepSchedule, TrainingStep
    gt_separate = TrainingStep("1", prior_enabled=True, joint=False, reference_boxes=True)
    gt_joint = TrainingStep("2", prior_enabled=True, joint=True, reference_boxes=True)
    predicted = TrainingStep("3", prior_enabled=True, joint=True, reference_boxes=False)
    schedule = StepSchedule((gt_separate, gt_joint, predicted), (0.2, 0.3))
    assert schedule.starts(10) == (0, 2, 5)
    assert [schedule.step_for_epoch(e, 10).name for e in range(10)] == list("1122233333")
    assert schedule.describe(10) == "1 epochs [0, 2), 2 [2, 5), 3 [5, 10)"
    with pytest.raises(ValueError, match="joint"):
        TrainingStep("x", prior_enabled=False, joint=True, reference_boxes=True)
    with pytest.raises(ValueError, match="fractions"):
        StepSchedule((gt_separate, predicted), (0.2, 0.3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.fractions = (0.5, 0.5)
