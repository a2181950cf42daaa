"""Unit tests of the cascade tumour variant: networks (nnunetv2_ext.cascade.blocks / .network), losses
(nnunetv2_ext.cascade.loss) and the four fixes of issue 13, each on a small analytic case that the old behaviour
fails (noted per test)."""
import math

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from torch import nn

from nnunetv2_ext.cascade.blocks import (ContextExplorationBlock, DualBranchEncoder, FocusModule, LocalisationModule,
                                        TumourStageNet, truncate_encoder)
from nnunetv2_ext.cascade.loss import (PAPER_FOCUS_WEIGHTS, BCEIoULoss, CascadeTumorLoss,
                                       PaperNormalisedSharedBoundaryLoss, TumourStageLoss, WeightedBCEIoULoss,
                                       boundary_weight, focus_level_weights, stage1_loss)
from nnunetv2_ext.cascade.network import CascadeTumorNet
from nnunetv2_ext.losses.shared_boundary import InterClassSharedBoundaryLoss
from nnunetv2_ext.two_stage.ops import PlansOps
from nnunetv2_ext.two_stage.boxes import bounding_box
from nnunetv2_ext.nnunet_adapters.predictor import CaseContext, finish_case
from nnunetv2_ext.two_stage.prior import SalientChangeModule


def _unet(dim, in_ch=1, out_ch=2, n=4):
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
    strides = [1, 2, 2, 2, 2, 2][:n] if dim == 2 else [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]][:n]
    kernels = 3 if dim == 2 else [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]][:n]
    return PlainConvUNet(in_ch, n, [8, 16, 16, 16, 16, 16][:n], conv, kernels, strides, [1] * n, out_ch,
                         [1] * (n - 1), conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)


def _patch(dim):
    return (8, 24, 24) if dim == 3 else (24, 24)


def _cascade(dim, margin=2, fallback="no_tumour", dual=False):
    torch.manual_seed(0)
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    encoder = _unet(dim).encoder
    if dual:
        encoder = DualBranchEncoder(encoder, 1)
    return CascadeTumorNet(_unet(dim), TumourStageNet(encoder), SalientChangeModule(conv, 1), crop_margin=margin,
                           stage2_patch_size=_patch(dim), empty_organ_fallback=fallback)


def _phantom_batch(dim):
    """Batch of 2: sample 0 has an organ with a tumour inside, sample 1 has neither."""
    s = _patch(dim)
    target = torch.zeros(2, 1, *s)
    organ = (slice(8, 16), slice(6, 14)) if dim == 2 else (slice(2, 6), slice(8, 16), slice(6, 14))
    target[(0, 0, *organ)] = 1
    tumour = (slice(10, 13), slice(8, 11)) if dim == 2 else (slice(3, 5), slice(10, 13), slice(8, 11))
    target[(0, 0, *tumour)] = 2
    x = torch.randn(2, 1, *s) + target
    return x, target


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


@pytest.mark.parametrize("dim", [2, 3])
def test_tumour_stage_net_outputs_and_truncation_to_the_papers_depth(dim):
    encoder = truncate_encoder(_unet(dim, n=6 if dim == 2 else 4).encoder, 5 if dim == 2 else 3)
    net = TumourStageNet(encoder)
    assert net.num_focus_levels == (4 if dim == 2 else 2)
    s = (4, 16, 16) if dim == 3 else (32, 32)
    loc, maps = net(torch.randn(1, 1, *s))
    assert len(maps) == net.num_focus_levels and maps[-1].shape == (1, 1, *s)
    assert loc.shape[2:] == tuple(a // b for a, b in zip(s, net.total_stride))
    with pytest.raises(ValueError, match="at least 2"):
        truncate_encoder(_unet(dim).encoder, 1)


@pytest.mark.parametrize("dim", [2, 3])
def test_dual_branch_encoder_eq_1_to_4(dim):
    """Branch B: per stage 1x1 -> k and 5x5 -> k paths (dynamic-network-architectures blocks, the 5 kept at 1 on
    the plans' anisotropic axes), fused with branch A at every level to the plans' widths."""
    plain = _unet(dim).encoder
    enc = DualBranchEncoder(plain, 1)
    s = (4, 16, 16) if dim == 3 else (16, 16)
    x = torch.randn(2, 1, *s)
    out = enc(x)
    ref = plain(x)
    assert [o.shape for o in out] == [r.shape for r in ref]
    first = enc.branch_b[0]
    assert all(isinstance(m, ConvDropoutNormReLU) for m in [*first.small, *first.large])
    assert list(first.small[0].conv.kernel_size) == [1] * dim
    expect_large = [1, 5, 5] if dim == 3 else [5, 5]  # plans kernel [1, 3, 3] in the first 3d stage
    assert list(first.large[0].conv.kernel_size) == expect_large
    net = TumourStageNet(enc)
    loc, maps = net(x)
    (maps[-1].sum() + loc.sum()).backward()
    assert first.large[0].conv.weight.grad.abs().sum() > 0  # branch B is used


# ------------------------------------------------------------------ the cascade network on a patch
@pytest.mark.parametrize("dim", [2, 3])
def test_cascade_net_reference_boxes_zoomed_crop_and_empty_fallback(dim):
    net = _cascade(dim)
    net.record_auxiliary = True
    x, target = _phantom_batch(dim)
    net.set_reference_organ(target[:, 0] > 0)
    logits = net(x)
    assert logits.shape == (2, 3, *x.shape[2:])
    assert torch.allclose(logits.exp().sum(1), torch.ones(1), atol=1e-5)  # log-probabilities
    aux = net.auxiliary
    box = aux.boxes[0]
    organ_box = bounding_box(target[0, 0] > 0)
    for (lo, hi), (olo, ohi) in zip(box, organ_box):
        assert lo <= olo - 2 and hi >= ohi + 2  # margin K = 2 around the whole organ
    sizes = [hi - lo for lo, hi in box]
    patch = _patch(dim)
    assert np.allclose(np.array(patch) / np.array(sizes), patch[-1] / sizes[-1], atol=0.2)  # patch aspect
    assert aux.cropped == [0] and aux.boxes[1] is None and aux.focus_maps[-1].shape == (1, 1, *patch)
    assert net.num_empty_organ_patches == 1 and net.num_patches == 2
    outside = torch.ones(x.shape[2:], dtype=torch.bool)
    outside[tuple(slice(max(lo, 0), hi) for lo, hi in box)] = False
    assert logits[0, 2][outside].exp().max() < 1e-6 and logits[1, 2].exp().max() < 1e-6


def test_cascade_net_whole_image_fallback():
    net = _cascade(2, fallback="whole_image")
    net.record_auxiliary = True
    x, _ = _phantom_batch(2)
    with torch.no_grad():
        net.stage1.decoder.seg_layers[-1].bias.copy_(torch.tensor([10.0, -10.0]))  # stage 1 finds no organ
    net(x)
    assert net.auxiliary.boxes == [((0, 24), (0, 24))] * 2
    with pytest.raises(ValueError, match="empty_organ_fallback"):
        _cascade(2, fallback="nonsense")


@pytest.mark.parametrize("prior,joint", [(False, False), (True, False), (True, True)])
def test_tumour_loss_reaches_stage1_only_through_a_joint_prior(prior, joint):
    net = _cascade(2)
    net.record_auxiliary = True
    net.set_prior(prior, joint)
    nn.init.normal_(net.salient_change.transform[-1].weight)  # a trained prior
    x, target = _phantom_batch(2)
    net.set_reference_organ(target[:, 0] > 0)
    net(x)
    aux = net.auxiliary
    TumourStageLoss()(aux.location_map, aux.focus_maps, CascadeTumorLoss.tumour_targets(aux, target)).backward()
    grad = net.stage1.encoder.stages[0][0].convs[0].conv.weight.grad
    assert (grad is not None and grad.abs().sum() > 0) == (prior and joint)


def test_every_parameter_takes_part_when_the_prior_is_off_or_no_box(monkeypatch):
    """DistributedDataParallel needs all parameters in the graph: step S (prior off), patches without organ."""
    net = _cascade(2)
    net.record_auxiliary = True
    net.set_prior(False)
    x, target = _phantom_batch(2)
    net.set_reference_organ(torch.zeros_like(target[:, 0], dtype=torch.bool))  # no organ in either patch
    loss = CascadeTumorLoss(lambda lg, t: lg.mean())(net(x), net.auxiliary, target)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing


# ------------------------------------------------------------------ fix 2: organ box on the whole image at prediction
class _ThresholdStage1(nn.Module):
    """Stage 1 stub: organ where the image is > 0.5 (2 logits)."""

    def forward(self, x):
        organ = (x[:, :1] > 0.5).float()
        return torch.cat([-8 * organ + 4, 8 * organ - 4], dim=1)


def _case_net(dim, margin=3):
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    torch.manual_seed(0)
    return CascadeTumorNet(_ThresholdStage1(), TumourStageNet(_unet(dim).encoder), SalientChangeModule(conv, 1),
                           crop_margin=margin, stage2_patch_size=(8, 16, 16) if dim == 3 else (16, 16)).eval()


@pytest.mark.parametrize("dim", [2, 3])
def test_prediction_crops_the_organ_box_of_the_whole_case_once(dim, monkeypatch):
    """The organ (y 5..34, x 8..27) is larger than a tile (16 x 16): the whole-case box + K is cropped once
    (per slice in 2d) and zoomed onto stage 2's patch. Old behaviour: one partial box per sliding-window tile."""
    net = _case_net(dim)
    data = torch.zeros(1, 8, 40, 40)
    data[0, 2:5, 5:35, 8:28] = 1.0
    calls = []
    original = net.stage2.forward

    def spy(x):
        calls.append(tuple(x.shape))
        return original(x)
    monkeypatch.setattr(net.stage2, "forward", spy)
    ctx = CaseContext(case="case_1", spacing=(2.0, 0.5, 0.5), patch_size=(8, 16, 16) if dim == 3 else (16, 16))
    with torch.no_grad():
        prediction = net.predict_case_logits(data, ctx)
    logits, record, lines = prediction.logits, prediction.record, prediction.lines
    assert logits.shape == (3, 8, 40, 40)
    assert record["organ_found"] and record["tumour_stage_ran"]
    assert record["organ_box_voxels"] == [[2, 5], [5, 35], [8, 28]] and record["organ_box_mm"] == [6.0, 15.0, 10.0]
    crop = record["crop_box_voxels"]
    assert crop[1][0] <= 5 - 3 and crop[1][1] >= 35 + 3 and crop[2][0] <= 8 - 3 and crop[2][1] >= 28 + 3
    if dim == 2:
        assert calls == [(3, 1, 16, 16)]  # the 3 organ slices in one batch, each its whole-slice box
        assert record["slices_with_organ"] == 3
    else:
        assert calls == [(1, 1, 8, 16, 16)]
    assert "case_1: stage 1 found the organ" in lines[0] and "mm" in lines[0]
    assert (logits[2].exp()[:, :2] < 1e-6).all()  # nothing outside the crop box


def test_prediction_with_empty_stage1_gives_empty_tumour_and_a_warning(tmp_path):
    net = _case_net(2)
    lines = []
    ctx = CaseContext(case="case_empty", spacing=(2.0, 0.5, 0.5), patch_size=(16, 16), log=lines.append,
                      output_folder=str(tmp_path))
    with torch.no_grad():
        logits = finish_case(net.predict_case_logits(torch.zeros(1, 4, 20, 20), ctx), ctx)  # the adapter's step
    assert (logits.argmax(0) == 0).all()
    assert lines == ["WARNING: Cascade: case_empty: stage 1 found no organ; tumour label left empty (tumour stage "
                     "not run)"]
    record = (tmp_path / "cascade_prediction_log.jsonl").read_text()
    assert '"case": "case_empty"' in record and '"organ_found": false' in record


# ------------------------------------------------------------------ fix 1: Eq. 13 as written
def test_eq13_weights_as_written_on_constant_maps():
    """Zero logits, empty target, 4 x 4 maps: every term is ln 2 (BCE) + 8/9 (IoU, smooth 1: 1 - 1/(0.5*16 + 1)),
    the boundary weight is 1. Eq. 13: (1 + 1 + 1 + 2 + 4) * (ln 2 + 8/9) = 9 ln 2 + 8. The old renormalised form
    divided by (1 + 1 + 2 + 4 + 8) and gave ln 2 + 8/9."""
    assert focus_level_weights(4) == [1.0, 1.0, 2.0, 4.0] == list(PAPER_FOCUS_WEIGHTS)
    assert focus_level_weights(3) == [1.0, 2.0, 4.0] and focus_level_weights(6) == [1, 1, 1, 1, 2, 4]
    zero = torch.zeros(1, 1, 4, 4)
    loss = TumourStageLoss()(zero, [zero] * 4, torch.zeros(1, 1, 4, 4))
    assert math.isclose(loss.item(), 9 * math.log(2) + 8, rel_tol=1e-6)
    with pytest.raises(ValueError, match="level weights"):
        TumourStageLoss([1.0, 2.0])(zero, [zero] * 3, torch.zeros(1, 1, 4, 4))


def test_bce_iou_losses_prefer_the_right_answer():
    t = torch.zeros(1, 1, 16, 16)
    t[..., 4:9, 5:10] = 1
    good, bad = (t * 2 - 1) * 8, -(t * 2 - 1) * 8
    assert BCEIoULoss()(good, t) < 0.05 < BCEIoULoss()(bad, t)
    assert WeightedBCEIoULoss()(good, t) < 0.05 < WeightedBCEIoULoss()(bad, t)
    w = boundary_weight(t, 5)
    assert w[0, 0, 4, 5] > w[0, 0, 6, 7] and w[0, 0, 0, 0] == 1


# ------------------------------------------------------------------ fix 3: L_isb normalised by n_c^2 (Eq. 16)
def test_shared_boundary_loss_paper_normalisation():
    """Reference: class 1 in the left half, class 2 in the right half of a 4 x 4 image: m_ref(1, 2) = m_ref(2, 1) = 1,
    all else 0. Prediction: all background, m_pred = 0. Paper: (1 + 1) / 3^2 = 2/9; the old mean over the
    3 * 2 off-diagonal entries gave 2/6."""
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[..., :2] = 1
    target[..., 2:] = 2
    logits = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    logits[:, 0] = 60.0
    paper = PaperNormalisedSharedBoundaryLoss()(logits, target)
    assert math.isclose(paper.item(), 2 / 9, rel_tol=1e-6)
    assert math.isclose(InterClassSharedBoundaryLoss()(logits, target).item(), 2 / 6, rel_tol=1e-6)


# ------------------------------------------------------------------ fix 4: stage-1 loss choice (Eq. 10)
def test_stage1_loss_dice_only_is_the_papers_eq10():
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.helpers import softmax_helper_dim1
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    dice = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, batch_dice=True, do_bg=False,
                                       smooth=1e-5, ddp=False)(logits, target)
    ce = nn.functional.cross_entropy(logits, target[:, 0].long())
    assert torch.isclose(stage1_loss("dice", batch_dice=True)(logits, target), dice)
    assert torch.isclose(stage1_loss("dice_ce", batch_dice=True)(logits, target), dice + ce)  # the old, default
    with pytest.raises(ValueError, match="stage1_loss"):
        stage1_loss("ce", batch_dice=True)


# ------------------------------------------------------------------ total loss (Eq. 17)
def test_cascade_loss_terms_and_backward():
    net = _cascade(2)
    net.record_auxiliary = True
    x, target = _phantom_batch(2)
    net.set_reference_organ(target[:, 0] > 0)
    logits = net(x)

    def s1(organ_logits, organ_target):
        assert set(organ_target.unique().tolist()) <= {0, 1}
        return nn.functional.cross_entropy(organ_logits, organ_target[:, 0].long())

    calls = []

    def isb(lg, t):
        calls.append(lg.shape)
        return lg.mean() * 0 + 1.0

    loss = CascadeTumorLoss(s1, alpha=0.9, beta=0.4, shared_boundary_loss=isb)
    total = loss(logits, net.auxiliary, target)
    t = loss.last_terms
    assert np.isclose(total.item(), t["seg1"] + 0.9 * t["seg2"] + 0.4 * 1.0, rtol=1e-5)
    assert calls == [logits.shape]
    tumour = CascadeTumorLoss.tumour_targets(net.auxiliary, target)
    assert tumour.shape == (1, 1, 24, 24) and 0 < tumour.mean() < 0.5  # the zoomed tumour, binary
    total.backward()
    assert net.stage2.localisation.map.weight.grad.abs().sum() > 0
    assert net.stage2.focus[-1].map.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ issue 18, item 4: multi-scale stage 1 and transfer T
def test_step_p_comes_first_and_t_falls_on_the_start_of_s():
    from nnunetv2_ext.two_stage.steps import STEP_P, cascade_schedule
    schedule = cascade_schedule(0.1, 0.4, stage1_pretrain_fraction=0.2)
    assert [schedule.step_for_epoch(e, 10).name for e in range(10)] == list("PPSIIIIJJJ")
    assert schedule.first_epoch_of("S", 10) == 2
    assert not STEP_P.stage2_trained and not STEP_P.prior_enabled
    assert [s.name for s in cascade_schedule(0.1, 0.4).steps] == ["S", "I", "J"]  # no P without pre-training
    for bad in (-0.1, 1.0, "0.2"):
        with pytest.raises(ValueError, match="stage1_pretrain_fraction"):
            cascade_schedule(0.1, 0.4, stage1_pretrain_fraction=bad)
    with pytest.raises(ValueError, match="sum to <= 1"):
        cascade_schedule(0.5, 0.4, stage1_pretrain_fraction=0.2)


@pytest.mark.parametrize("multi_scale", [False, True])
def test_transfer_copies_stage1_encoder_into_the_shallower_stage2_encoder(multi_scale):
    from nnunetv2_ext.cascade.blocks import MultiScaleUNet, transfer_encoder_weights
    torch.manual_seed(0)
    stage1 = _unet(2, n=4)
    stage2_encoder = truncate_encoder(_unet(2, n=4).encoder, 3)
    if multi_scale:
        stage1 = MultiScaleUNet(DualBranchEncoder(stage1.encoder, 1), 2, [1, 1, 1])
        stage2_encoder = DualBranchEncoder(stage2_encoder, 1)
        assert stage1(torch.randn(2, 1, 24, 24)).shape == (2, 2, 24, 24)
    source = stage1.encoder.state_dict()
    before = {k: v.clone() for k, v in stage2_encoder.state_dict().items()}
    assert any(not torch.equal(v, source[k]) for k, v in before.items() if v.dtype.is_floating_point)
    n = transfer_encoder_weights(stage1.encoder, stage2_encoder)
    after = stage2_encoder.state_dict()
    assert n == len(after) and all(torch.equal(v, source[k]) for k, v in after.items())
    # stage 1's deepest stage has no place in the 3-stage encoder and was not needed
    assert any(k.startswith(("stages.3", "branch_a.stages.3")) for k in source)


def test_transfer_between_different_encoders_is_refused_before_copying():
    from nnunetv2_ext.cascade.blocks import transfer_encoder_weights
    plans_encoder = _unet(2).encoder
    dual = DualBranchEncoder(_unet(2).encoder, 1)
    before = {k: v.clone() for k, v in dual.state_dict().items()}
    with pytest.raises(ValueError, match="'branch_a.stages.0.*no counterpart"):
        transfer_encoder_weights(plans_encoder, dual)
    assert all(torch.equal(v, before[k]) for k, v in dual.state_dict().items())
    wider = _unet(2).encoder
    narrow = PlainConvUNet(1, 4, [4, 16, 16, 16], nn.Conv2d, 3, [1, 2, 2, 2], [1] * 4, 2, [1] * 3, conv_bias=True,
                           norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                           nonlin=nn.LeakyReLU).encoder
    with pytest.raises(ValueError, match="has shape"):
        transfer_encoder_weights(wider, narrow)


def test_step_p_trains_stage1_alone():
    """Stage 2 off (step P): no crop, an empty tumour channel, the loss is L_seg1 exactly and no stage-2 or prior
    parameter gets a gradient."""
    net = _cascade(2)
    net.record_auxiliary = True
    net.set_prior(False, False)
    net.set_stage2_enabled(False)
    x, target = _phantom_batch(2)
    net.set_reference_organ(target[:, 0] > 0)
    logits = net(x)
    assert net.auxiliary.cropped == [] and not net.auxiliary.stage2_enabled
    assert float(torch.softmax(logits.detach(), 1)[:, 2].max()) < 1e-6
    seg1 = stage1_loss("dice_ce", False)
    loss = CascadeTumorLoss(seg1, shared_boundary_loss=PaperNormalisedSharedBoundaryLoss())
    value = loss(logits, net.auxiliary, target)
    expected = seg1(net.auxiliary.organ_logits, (target > 0).float()).detach()
    assert float(value.detach()) == pytest.approx(float(expected))
    assert math.isnan(loss.last_terms["seg2"]) and math.isnan(loss.last_terms["isb"])
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.stage1.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.stage2.parameters())


def test_multi_scale_stage1_in_3d_and_its_encoder_transfers():
    from nnunetv2_ext.cascade.blocks import MultiScaleUNet, transfer_encoder_weights
    torch.manual_seed(0)
    stage1 = MultiScaleUNet(DualBranchEncoder(_unet(3).encoder, 1), 2, [1, 1, 1])
    assert stage1(torch.randn(1, 1, *_patch(3))).shape == (1, 2, *_patch(3))
    stage2_encoder = DualBranchEncoder(truncate_encoder(_unet(3).encoder, 3), 1)
    assert transfer_encoder_weights(stage1.encoder, stage2_encoder) == len(stage2_encoder.state_dict())
