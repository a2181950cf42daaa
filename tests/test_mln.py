"""Multi-level structural network (MLN) head of the fine stage (issue 12, Eq. 12-13 of Liu et al.): shapes, the
decoder features taken from a plans-built U-Net, the multi-level saliency guidance starting as the identity, the pixel
branch's points (uncertain-point selection, snapped to voxels, written back), the boundary term by hand, and Eq. 13's
MLN schedule."""
import math

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunetv2_ext.coarse_to_fine.loss import CoarseToFineLoss, MLNLossWeights
from nnunetv2_ext.coarse_to_fine.mln import (ASPP, MLNBoundaryTerm, MLNFineNet, MLNHead, MLNOutput,
                                             coordinates_to_flat_index, flat_index_to_coordinates, split_points,
                                             unet_decoder_features)
from nnunetv2_ext.coarse_to_fine.network import CoarseToFineAuxiliary
from nnunetv2_ext.two_stage.ops import PlansOps


def _ops():
    return PlansOps(nn.Conv2d, nn.InstanceNorm2d, {"affine": True, "eps": 1e-5}, nn.LeakyReLU, {"inplace": True})


def _unet(in_channels=2, features=(4, 8, 16)):
    return PlainConvUNet(in_channels, len(features), list(features), nn.Conv2d, 3, [1, 2, 2], 1, 2, 1,
                         conv_bias=True, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True, "eps": 1e-5},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


def test_decoder_features_are_what_the_plans_unet_segments_from():
    torch.manual_seed(0)
    unet = _unet().eval()
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        reference = unet(x)
        unet.encoder.return_skips = True
        features = unet_decoder_features(unet.encoder, unet.decoder, x)
        assert torch.allclose(unet.decoder.seg_layers[-1](features), reference, atol=1e-6)
    assert features.shape == (2, 4, 16, 16)


def test_aspp_shapes_and_image_pooling_branch():
    aspp = ASPP(_ops(), 4, 6, rates=(1, 2))
    assert len(aspp.branches) == 3 and aspp(torch.randn(2, 4, 12, 10)).shape == (2, 6, 12, 10)
    pooled = aspp.pool(torch.randn(2, 4, 1, 1))
    assert pooled.shape == (2, 6, 1, 1)
    with pytest.raises(ValueError, match="dilation"):
        ASPP(_ops(), 4, 6, rates=(0,))


def test_flat_index_and_coordinates_round_trip():
    spatial = (5, 7)
    index = torch.tensor([[0, 6, 7, 34]])
    coords = flat_index_to_coordinates(index, spatial)
    assert coords[0, 1].tolist() == pytest.approx([0.5 / 5, 6.5 / 7])  # voxel (0, 6): centre
    assert coords[0, 3].tolist() == pytest.approx([4.5 / 5, 6.5 / 7])  # voxel (4, 6)
    assert torch.equal(coordinates_to_flat_index(coords, spatial), index)
    assert coordinates_to_flat_index(torch.tensor([[[1.0, 1.0], [0.0, 0.0]]]), spatial).tolist() == [[34, 0]]


def _head(num_points=16):
    torch.manual_seed(0)
    return MLNHead(_ops(), 4, 2, branch_channels=4, aspp_rates=(1, 2), num_points=num_points, d_model=8, heads=2,
                   layers=1)


def test_head_shapes_and_identity_start():
    head = _head().eval()
    f = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out = head(f)
        fused = head.fused_out(f)  # guidance weight 1 and zero point correction at initialisation
    assert out.logits.shape == (2, 2, 8, 8) and out.region.shape == (2, 2, 8, 8) and out.sdm.shape == (2, 1, 8, 8)
    assert out.point_logits.shape == (2, 2, 16) and out.point_index.shape == (2, 16)
    assert (out.sdm.abs() < 1).all()
    assert torch.allclose(out.logits, fused, atol=1e-6)


def test_inference_points_are_the_most_uncertain_voxels_and_are_written_back():
    head = _head(num_points=3).eval()
    logits = torch.full((1, 2, 4, 4), 0.0)
    logits[0, 1] = torch.arange(16, dtype=torch.float32).view(4, 4) - 6.2  # margin smallest near 6.2
    index = head.select_points(logits)
    assert sorted(index[0].tolist()) == [5, 6, 7]  # |k - 6.2| smallest for k = 6, 7, 5
    with torch.no_grad():
        head.points.correct.bias.copy_(torch.tensor([0.0, 3.0]))  # the pixel branch adds 3 to the organ logit
        f = torch.randn(1, 4, 4, 4)
        out = head(f)
        fused = head.fused_out(f * head.guidance.weight(torch.cat(
            [torch.softmax(out.region, 1)[:, 1:], 1 - out.sdm.abs()], 1)))
    diff = (out.logits - fused)[0, 1].flatten()
    changed = set(torch.nonzero(diff.abs() > 1e-5).flatten().tolist())
    assert changed == set(out.point_index[0].tolist()) and torch.allclose(diff[list(changed)], torch.tensor(3.0))


def test_point_selection_finds_the_known_uncertain_voxels():
    """Eq. 10's sampling on logits whose uncertain voxels are known: at inference exactly the N most uncertain voxels;
    in training the first m·N of the N points come from the uncertain region (k·N uniform candidates ranked by the
    margin), the remaining (1 - m)·N are uniform. Random indices fail both checks."""
    head = _head(num_points=8)
    logits = torch.zeros(4, 2, 8, 8)
    logits[:, 0] = 10.0                       # confident background everywhere ...
    tie = torch.tensor([3, 9, 20, 27, 33, 42, 50, 61])
    logits[:, 0].view(4, -1)[:, tie] = 0.0    # ... except 8 voxels where the two classes tie (margin 0)
    head.eval()
    for row in head.select_points(logits):
        assert sorted(row.tolist()) == tie.tolist()
    logits = torch.zeros(4, 2, 8, 8)
    logits[:, 0, :, 4:] = 10.0                # the left half (columns 0-3) ties, the right half is confident
    head.train()
    torch.manual_seed(3)
    index = head.select_points(logits)
    m_n = round(head.selector.importance_ratio * 8)
    assert m_n == 6 and index.shape == (4, 8)
    # interpolation reaches half a voxel into column 4; a uniform draw would give columns 0-4 with p = (5/8)^24
    assert (index[:, :m_n] % 8 <= 4).all(), index


def test_training_points_follow_the_uncertain_point_selection():
    head = _head(num_points=8).train()
    torch.manual_seed(1)
    index = head.select_points(torch.randn(3, 2, 6, 6))
    assert index.shape == (3, 8) and int(index.min()) >= 0 and int(index.max()) < 36
    small = _head(num_points=100).train()
    assert small.select_points(torch.randn(1, 2, 4, 4)).shape == (1, 16)  # capped at the number of voxels


def test_fine_net_from_plans_unet_and_gradients_reach_every_branch():
    net = MLNFineNet(_unet(), 2, branch_channels=4, aspp_rates=(1, 2), num_points=16, d_model=8, heads=2, layers=1)
    out = net(torch.randn(2, 2, 16, 16))
    assert isinstance(out, MLNOutput) and out.logits.shape == (2, 2, 16, 16)
    target = torch.randint(0, 2, (2, 1, 16, 16))
    point_logits, labels = split_points(out, target)
    loss = nn.functional.cross_entropy(out.logits, target[:, 0]) + out.region.sum() * 1e-3 + out.sdm.sum() * 1e-3 \
        + nn.functional.cross_entropy(point_logits, labels)
    loss.backward()
    for name in ("region_aspp", "boundary_aspp", "guidance", "points", "fused_out"):
        grads = [p.grad for p in getattr(net.head, name).parameters()]
        assert all(g is not None for g in grads), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoder.parameters())
    with pytest.raises(ValueError, match="U-Net"):
        MLNFineNet(nn.Conv2d(1, 1, 1), 2)


def test_split_points_reads_the_reference_at_the_points():
    target = torch.arange(12).view(1, 1, 3, 4) % 2
    out = MLNOutput(torch.zeros(1, 2, 3, 4), point_logits=torch.zeros(1, 2, 3), point_index=torch.tensor([[0, 5, 11]]))
    assert split_points(out, target)[1].tolist() == [[0, 1, 1]]


def test_boundary_term_by_hand():
    """sdm_pred = tanh(phi / scale) exactly: the regression part is 0 and E_B = mean(sigmoid(-s D) * phi)."""
    phi = torch.tensor([[-2.0, -1.0, 1.0, 2.0], [3.0, 1.0, -1.0, 4.0]]).view(1, 1, 2, 4)
    target = (phi < 0).long()
    term = MLNBoundaryTerm(scale_mm=2.0, sharpness=10.0)
    pred = torch.tanh(phi / 2.0)
    expected = float(np.mean([1 / (1 + math.exp(10 * math.tanh(v / 2))) * v for v in phi.flatten().tolist()]))
    assert float(term(pred, target, phi)) == pytest.approx(expected, rel=1e-5)
    # a prediction off by 0.1 everywhere adds 0.1 (L1) plus the change of the boundary part
    off = pred + 0.1
    expected_off = 0.1 + float(np.mean([1 / (1 + math.exp(10 * (math.tanh(v / 2) + 0.1))) * v
                                        for v in phi.flatten().tolist()]))
    assert float(term(off, target, phi)) == pytest.approx(expected_off, rel=1e-5)
    ignore = MLNBoundaryTerm(2.0, 10.0, ignore_label=2)
    target_ignored = target.clone()
    target_ignored[0, 0, 0, 0] = 2
    assert float(ignore(off, target_ignored, phi)) != pytest.approx(float(term(off, target, phi)))
    with pytest.raises(ValueError, match="scale_mm"):
        MLNBoundaryTerm(0.0)


def test_mln_schedule_is_the_papers_and_reaches_the_loss_terms():
    """Liu et al.: region and boundary branches weighted 1 from the start; the pixel branch and the fusion (the fused
    output's E_R) at 0 for the first 12 of 20 epochs, then 1 (issue 18, item 1: the code had switched the boundary
    branch on at half of the run and trained the fusion from epoch 0)."""
    weights = MLNLossWeights()
    assert weights.at(0, 20) == {"region": 1.0, "boundary": 1.0, "pixel": 0.0, "fusion": 0.0}
    assert weights.at(11, 20) == {"region": 1.0, "boundary": 1.0, "pixel": 0.0, "fusion": 0.0}
    assert weights.at(12, 20) == {"region": 1.0, "boundary": 1.0, "pixel": 1.0, "fusion": 1.0}

    torch.manual_seed(0)
    head = _head()
    f = torch.randn(1, 4, 8, 8)
    fine = head(f)
    box = ((0, 8), (2, 10))
    output = torch.log_softmax(torch.randn(2, 2, 8, 12), 1)
    aux = CoarseToFineAuxiliary(torch.randn(2, 2, 8, 12), [box, None], [fine, None])
    target = torch.zeros(2, 1, 8, 12, dtype=torch.long)
    target[:, :, 2:6, 4:8] = 1
    sdm = torch.where(target.bool(), -1.0, 1.0).float()

    def region(logits, t):
        return nn.functional.cross_entropy(logits, t[:, 0])
    loss = CoarseToFineLoss(region, 0.3, 2 / 3, weights, MLNBoundaryTerm(2.0))
    loss.set_epoch(0, 10)
    early = loss(output, aux, target, sdm)
    t = loss.last_terms
    assert math.isnan(t["pixel"]) and not math.isnan(t["region"]) and not math.isnan(t["boundary"])
    assert not math.isnan(t["fine"])  # computed for the log, weighted 0
    assert float(early.detach()) == pytest.approx(0.3 * t["coarse"] + 2 / 3 * (t["region"] + t["boundary"]),
                                                  rel=1e-5)
    loss.set_epoch(6, 10)
    late = loss(output, aux, target, sdm)
    t = loss.last_terms
    assert float(late.detach()) == pytest.approx(0.3 * t["coarse"] + 2 / 3 * (t["fine"] + t["region"] + t["boundary"] +
                                                                     t["pixel"]), rel=1e-5)
    with pytest.raises(ValueError, match="signed distance"):
        loss(output, aux, target, None)
