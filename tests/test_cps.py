"""Cross pseudo supervision pieces (issue 10, part 4): ramp-up, Dice CPS loss (Eq. 2) by hand, the network pair
(ensemble = mean softmax), the partner architecture from the plans (2d and 3d), the unlabelled-case declaration,
and the loader's batches."""
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from conftest import make_trainer

from nnunetv2_ext.semisupervised.cps import (CPSNetworkPair, CrossPseudoSupervisionLoss, SigmoidRampUp,
                                             log_mean_softmax, split_batch)
from nnunetv2_ext.semisupervised.cps_networks import PLAIN, RESENC, build_pair_members, partner_architecture
from nnunetv2_ext.semisupervised.unlabelled import UnlabelledCasesError, find_unlabelled_cases


# ------------------------------------------------------------------------------------------------ ramp-up
def test_sigmoid_ramp_up_values():
    w = SigmoidRampUp(maximum=2.0, ramp_fraction=0.25)
    assert w(0, 100) == pytest.approx(2.0 * math.exp(-5))
    assert w(10, 100) == pytest.approx(2.0 * math.exp(-5 * 0.6 ** 2))
    assert w(25, 100) == w(99, 100) == 2.0
    assert SigmoidRampUp(1.5, 0.0)(0, 10) == 1.5  # constant: Chen et al.'s lambda
    values = [w(e, 100) for e in range(30)]
    assert values == sorted(values)
    for kwargs in ({"maximum": -1}, {"maximum": float("inf")}, {"ramp_fraction": 1.5}):
        with pytest.raises(ValueError):
            SigmoidRampUp(**kwargs)
    with pytest.raises(ValueError, match="epoch"):
        w(-1, 10)


# ------------------------------------------------------------------------------------------------ loss
def _dice():
    return MemoryEfficientSoftDiceLoss(apply_nonlin=lambda x: torch.softmax(x, 1), batch_dice=True, do_bg=False,
                                       smooth=0.0, ddp=False)


def test_cps_loss_is_dice_against_the_other_networks_argmax():
    # 1 x 2 classes x 1 x 4 pixels. Network A: foreground on pixels 0, 1; B: on pixels 1, 2
    a = torch.tensor([[[[0.0, 0.0, 5.0, 5.0]], [[5.0, 5.0, 0.0, 0.0]]]], requires_grad=True)
    b = torch.tensor([[[[5.0, 0.0, 0.0, 5.0]], [[0.0, 5.0, 5.0, 0.0]]]], requires_grad=True)
    loss = CrossPseudoSupervisionLoss(_dice())(a, b)
    pa, pb = torch.softmax(a, 1)[:, 1], torch.softmax(b, 1)[:, 1]
    ya = torch.tensor([1.0, 1.0, 0.0, 0.0])  # argmax of A
    yb = torch.tensor([0.0, 1.0, 1.0, 0.0])  # argmax of B
    dice_a_vs_b = 2 * (pa * yb).sum() / (pa.sum() + yb.sum())
    dice_b_vs_a = 2 * (pb * ya).sum() / (pb.sum() + ya.sum())
    assert float(loss.detach()) == pytest.approx(float(-(dice_a_vs_b + dice_b_vs_a).detach()), abs=1e-5)
    loss.backward()  # gradients reach both networks, not through the pseudo-labels (argmax)
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_cps_loss_of_agreeing_confident_networks_is_minimal():
    logits = torch.zeros(2, 3, 4, 4)
    logits[:, 1, :2] = 20.0
    logits[:, 2, 2:] = 20.0
    assert float(CrossPseudoSupervisionLoss(_dice())(logits, logits.clone())) == pytest.approx(-2.0, abs=1e-4)
    with pytest.raises(ValueError, match="same shape"):
        CrossPseudoSupervisionLoss(_dice())(logits, logits[:1])


def test_ensemble_is_log_of_the_mean_softmax():
    a, b = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    expected = (torch.softmax(a, 1) + torch.softmax(b, 1)) / 2
    np.testing.assert_allclose(torch.softmax(log_mean_softmax(a, b), 1), expected, atol=1e-6)
    np.testing.assert_allclose(torch.exp(log_mean_softmax(a, b)), expected, atol=1e-6)


def test_split_batch():
    out = [torch.arange(10).view(5, 2), torch.arange(5)]
    lab, unl = split_batch(out, 2)
    assert lab[0].shape[0] == 2 and unl[0].shape[0] == 3 and unl[1].tolist() == [2, 3, 4]


# ------------------------------------------------------------------------------------------------ networks
def _plans(dim: int, arch: str = PLAIN) -> PlansManager:
    conv = "torch.nn.modules.conv.Conv%dd" % dim
    norm = "torch.nn.modules.instancenorm.InstanceNorm%dd" % dim
    kwargs = {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": conv,
              "kernel_sizes": [[3] * dim] * 3, "strides": [[1] * dim, [2] * dim, [2] * dim],
              "n_conv_per_stage_decoder": [2, 2], "conv_bias": True, "norm_op": norm,
              "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    kwargs.update({"n_conv_per_stage": [2, 2, 2]} if arch == PLAIN else {"n_blocks_per_stage": [1, 1, 1]})
    config = {"data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
              "patch_size": [16] * dim, "median_image_size_in_voxels": [16] * dim, "spacing": [1.0] * dim,
              "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
              "architecture": {"network_class_name": arch, "arch_kwargs": kwargs,
                               "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
              "batch_dice": True}
    return PlansManager({"dataset_name": "Dataset999_X", "plans_name": "nnUNetPlans",
                         "original_median_spacing_after_transp": [1, 1, 1], "image_reader_writer": "SimpleITKIO",
                         "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
                         "configurations": {"c": config}, "experiment_planner_used": "x",
                         "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {}})


@pytest.mark.parametrize("dim", [2, 3])
def test_pair_from_plain_plans_is_plain_plus_residual_encoder(dim):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    cm = _plans(dim).get_configuration("c")
    net_a, net_b = build_pair_members(cm, 1, 3, True, resenc_blocks=(1, 2, 2))
    assert isinstance(net_a, PlainConvUNet) and isinstance(net_b, ResidualEncoderUNet)
    assert [len(s.blocks) for s in net_b.encoder.stages] == [1, 2, 2]
    pair = CPSNetworkPair(net_a, net_b)
    x = torch.randn(2, 1, *([16] * dim))
    out_a, out_b = pair(x, return_both=True)
    assert len(out_a) == len(out_b) == 2 and out_a[0].shape == out_b[0].shape == (2, 3, *([16] * dim))
    ensemble = pair(x)
    np.testing.assert_allclose(torch.softmax(ensemble[0], 1).detach(),
                               ((torch.softmax(out_a[0], 1) + torch.softmax(out_b[0], 1)) / 2).detach(), atol=1e-5)
    pair.set_deep_supervision(False)
    assert pair(x).shape == (2, 3, *([16] * dim))


def test_pair_from_resenc_plans_gets_the_plain_unet():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    net_a, net_b = build_pair_members(_plans(2, RESENC).get_configuration("c"), 1, 2, False)
    assert isinstance(net_a, ResidualEncoderUNet) and isinstance(net_b, PlainConvUNet)
    name, kwargs = partner_architecture(RESENC, {"n_stages": 2, "n_blocks_per_stage": [1, 3], "features_per_stage":
                                                 [4, 8], "n_conv_per_stage_decoder": [1]})
    assert name == PLAIN and kwargs["n_conv_per_stage"] == [2, 2] and "n_blocks_per_stage" not in kwargs
    with pytest.raises(ValueError, match="plain U-Net"):
        partner_architecture("some.other.Net", {"n_stages": 2})


def test_trainer_refuses_regions(nnunet_dirs):
    from nnunetv2_ext.trainers.small_variants import nnUNetTrainerCPSTiny
    dataset_json = {"labels": {"background": 0, "whole": [1, 2], "core": 2}, "regions_class_order": [1, 2],
                    "channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "numTraining": 1}
    with pytest.raises(ValueError, match="region"):
        make_trainer(nnUNetTrainerCPSTiny, _plans(2).plans, dataset_json, "c")


# ------------------------------------------------------------------------------------------------ declaration
def _image(path, channels=1):
    for c in range(channels):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(path).replace("_0000",
                                                                                                    f"_{c:04d}"))


def test_unlabelled_cases_from_folder_and_list(tmp_path):
    dj = {"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}
    (tmp_path / "imagesUnlabeled").mkdir()
    _image(tmp_path / "imagesUnlabeled" / "u1_0000.nii.gz")
    source = tmp_path / "elsewhere_0000.nii.gz"
    _image(source)
    (tmp_path / "unlabeled_cases.json").write_text(json.dumps({"cases": {
        "u1": {"file": "imagesUnlabeled/u1_0000.nii.gz", "source": "x"},
        "u2": {"file": None, "source": str(source)}}}))
    cases = find_unlabelled_cases(str(tmp_path), dj)
    assert sorted(cases) == ["u1", "u2"] and cases["u2"] == [str(source)]
    with pytest.raises(UnlabelledCasesError, match="labelled training cases"):
        find_unlabelled_cases(str(tmp_path), dj, labelled_cases=["u2"])
    # a 2-channel dataset: the list's single source file is not enough, a missing channel is named
    dj2 = {"channel_names": {"0": "a", "1": "b"}, "file_ending": ".nii.gz"}
    with pytest.raises(UnlabelledCasesError, match="u1_0001.nii.gz"):
        find_unlabelled_cases(str(tmp_path), dj2)
    assert find_unlabelled_cases(str(tmp_path / "nothing"), dj) == {}


# ------------------------------------------------------------------------------------------------ DDP (gloo, CPU)
def _ddp_rank(rank, world, port, out_dir):
    import os
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same initial weights on both ranks, as nnU-Net's DDP start broadcasts them
        pair = CPSNetworkPair(*build_pair_members(_plans(2).get_configuration("c"), 1, 2, True, (1, 1, 1)))
        model = DDP(pair)
        optimizer = torch.optim.SGD(model.parameters(), 0.1)
        dice = MemoryEfficientSoftDiceLoss(apply_nonlin=lambda x: torch.softmax(x, 1), batch_dice=True, do_bg=False,
                                           smooth=1e-5, ddp=True)
        cps = CrossPseudoSupervisionLoss(dice)
        torch.manual_seed(100 + rank)  # different data per rank
        x = torch.randn(4, 1, 16, 16)
        out_a, out_b = model(x, return_both=True)  # the kwarg passes through DDP
        loss = cps(out_a[0], out_b[0]) + sum(o.mean() for o in out_a[1:]) + sum(o.mean() for o in out_b[1:])
        loss.backward()
        optimizer.step()
        torch.save({k: v.detach() for k, v in pair.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_pair_trains_under_ddp_with_the_return_both_path(tmp_path):
    """DDP wraps the pair; both networks' gradients are all-reduced (weights equal on both ranks after a step on
    different data), and the CPS Dice's batch statistics are gathered across ranks (nnU-Net's ddp=True)."""
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    w0, w1 = (torch.load(tmp_path / f"rank{i}.pt") for i in range(2))
    torch.manual_seed(0)
    start = CPSNetworkPair(*build_pair_members(_plans(2).get_configuration("c"), 1, 2, True, (1, 1, 1))).state_dict()
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k])
    changed = [k for k in w0 if not torch.equal(w0[k], start[k])]
    assert any(k.startswith("net_a.") for k in changed) and any(k.startswith("net_b.") for k in changed)
