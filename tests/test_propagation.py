"""Reference slices + mask propagation (issue 19, item 3): memory read, losses, reference choice and plan by hand;
the network's shapes and training clips; the propagation driver with a network whose memory read is exact."""
import math

import numpy as np
import pytest
import torch

from nnunetv2_ext.propagation.losses import LovaszHingeLoss, OhemBCELoss, lovasz_grad
from nnunetv2_ext.propagation.memory import l2_affinity, readout
from nnunetv2_ext.propagation.network import PropagationNet
from nnunetv2_ext.propagation.propagate import propagate_volume
from nnunetv2_ext.propagation.references import largest_masks, propagation_plan, uniform_slices


# ------------------------------------------------------------------ memory read (STCN)
def test_affinity_is_the_softmax_of_the_negative_squared_distance():
    torch.manual_seed(0)
    mk, qk = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 2, 2)
    a = l2_affinity(mk, qk)
    m, q = mk.flatten(2), qk.flatten(2)                     # (B, Ck, 12), (B, Ck, 4)
    distance = ((m[:, :, :, None] - q[:, :, None, :]) ** 2).sum(1)  # (B, 12, 4)
    expected = torch.softmax(-distance / math.sqrt(4), dim=1)
    assert a.shape == (2, 12, 4) and torch.allclose(a, expected, atol=1e-6)
    assert torch.allclose(a.sum(1), torch.ones(2, 4))


def test_readout_returns_the_value_of_the_matching_key():
    # memory of two 1x1 frames with keys far apart: a query equal to the second key reads the second value
    mk = torch.tensor([[10.0, 0.0], [0.0, 10.0]]).T.reshape(1, 2, 2, 1, 1)   # frame 0: (10, 0), frame 1: (0, 10)
    values = torch.tensor([1.0, 5.0]).reshape(1, 1, 2, 1, 1)
    read = readout(l2_affinity(mk, torch.tensor([0.0, 10.0]).reshape(1, 2, 1, 1)), values)
    assert read.shape == (1, 1, 1, 1) and float(read) == pytest.approx(5.0, abs=1e-6)


# ------------------------------------------------------------------ losses
def test_lovasz_hinge_by_hand():
    # Berman et al. Alg. 1 on 3 pixels, labels (1, 0, 1), logits (2, 0.5, -1): hinge errors 1 - m s = (-1, 1.5, 2)
    # sorted (2 [gt 1], 1.5 [gt 0], -1 [gt 1]); Jaccard losses of the prefixes: 1 - 1/2, 1 - 1/3, 1 - 2/2 ... see
    # lovasz_grad: J = (1 - 1/2, 1 - 1/3, 1 - 0/2) = (0.5, 0.667, 1.0) -> grad (0.5, 0.1667, 0.3333)
    grad = lovasz_grad(torch.tensor([1.0, 0.0, 1.0]))
    assert torch.allclose(grad, torch.tensor([0.5, 1 / 6, 1 / 3]), atol=1e-6)
    logits = torch.tensor([2.0, 0.5, -1.0]).reshape(1, 1, 1, 3)
    target = torch.tensor([1.0, 0.0, 1.0]).reshape(1, 1, 1, 3)
    assert float(LovaszHingeLoss()(logits, target)) == pytest.approx(2 * 0.5 + 1.5 / 6)  # relu(-1) = 0
    perfect = torch.tensor([3.0, -3.0, 3.0]).reshape(1, 1, 1, 3)
    assert float(LovaszHingeLoss()(perfect, target)) == 0.0


def test_ohem_keeps_the_hardest_share():
    logits = torch.tensor([0.0, 0.0, 5.0, -5.0]).reshape(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
    per_pixel = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten()
    hardest = float(per_pixel.max())                    # the pixel with logit 5 and target 0
    assert float(OhemBCELoss(0.25)(logits, target)) == pytest.approx(hardest)
    assert float(OhemBCELoss(1.0)(logits, target)) == pytest.approx(float(per_pixel.mean()))
    with pytest.raises(ValueError, match="top_p"):
        OhemBCELoss(0)


# ------------------------------------------------------------------ reference module and plan
def test_uniform_slices_and_largest_masks():
    assert uniform_slices(10, 3) == [1, 5, 8] and uniform_slices(5, 5) == [0, 1, 2, 3, 4]
    assert uniform_slices(7, 1) == [3]
    for k in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="k"):
            uniform_slices(5, k)
    assert largest_masks({1: 10, 5: 30, 8: 0}, 2) == [1, 5]
    assert largest_masks({1: 10, 5: 30, 8: 20}, 1) == [5]
    assert largest_masks({1: 0, 5: 0}, 2) == []          # no reference shows the organ
    with pytest.raises(ValueError, match="keep"):
        largest_masks({1: 1}, 0)


def test_propagation_plan_is_bidirectional_and_stops_at_references():
    chains = propagation_plan(8, [5, 2])
    assert chains == [[(3, 2), (4, 3)], [(1, 2), (0, 1)], [(6, 5), (7, 6)], [(4, 5), (3, 4)]]
    reached = [z for c in chains for z, _ in c]
    assert sorted(set(reached)) == [0, 1, 3, 4, 6, 7] and reached.count(3) == 2 and reached.count(0) == 1
    with pytest.raises(ValueError, match="outside"):
        propagation_plan(4, [4])


# ------------------------------------------------------------------ network and driver
def test_network_shapes_and_gradients():
    torch.manual_seed(0)
    net = PropagationNet(in_channels=2, width=4, key_dim=8, value_dim=8)
    frames, mask = torch.randn(2, 3, 2, 16, 24), (torch.rand(2, 1, 16, 24) > 0.5).float()
    logits = net(frames, mask)
    assert logits.shape == (2, 2, 1, 16, 24)
    logits.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


class _CopyNet:
    """A propagation 'network' whose memory read is exact: the key of a pixel is its image value, the value the
    mask, the decoder the readout. On a volume whose slices are identical it must reproduce the reference mask."""
    total_stride = 1

    def eval(self):
        return self

    def encode_key(self, x):
        return x * 300, None, [x]

    def encode_value(self, x, features, masks):
        return masks * 20 - 10          # logits +10 / -10

    def segment(self, key, query_value, features, memory_keys, memory_values):
        return readout(l2_affinity(memory_keys, key), memory_values)


def test_driver_reproduces_the_reference_through_the_volume():
    z, h, w = 7, 6, 5
    yy, xx = np.mgrid[:h, :w]
    slice_image = (yy * w + xx).astype(np.float32) / (h * w)   # every pixel its own intensity
    volume = np.repeat(slice_image[None, None], z, axis=1)       # (1, Z, H, W), identical slices
    mask = (yy >= 2) & (xx <= 2)
    prob = propagate_volume(_CopyNet(), volume, {1: mask, 5: mask})
    assert prob.shape == (z, h, w)
    assert np.array_equal(prob > 0.5, np.repeat(mask[None], z, 0))
    with pytest.raises(ValueError, match="at least one"):
        propagate_volume(_CopyNet(), volume, {})


def test_clip_sampler_starts_on_the_organ_and_moves_one_way():
    from nnunetv2_ext.propagation.data import ClipSampler
    label = np.zeros((10, 20, 20), bool)
    label[3:7, 5:10, 5:10] = True
    image = np.arange(10, dtype=np.float32)[None, :, None, None] * np.ones((1, 10, 20, 20), np.float32)
    sampler = ClipSampler([("c", image, label)], (16, 16), max_skip=2, seed=0)
    for _ in range(20):
        frames, masks = sampler.clip()
        z = frames[:, 0, 0, 0]                  # the image value is the slice index
        assert frames.shape == (3, 1, 16, 16) and masks.shape == (3, 1, 16, 16)
        assert masks[0].any() and 3 <= z[0] <= 6
        steps = np.diff(z)
        assert (np.all(steps >= 0) or np.all(steps <= 0)) and np.all(np.abs(steps) <= 2)
    with pytest.raises(ValueError, match="no training case shows the label"):
        ClipSampler([("c", image, np.zeros_like(label))], (16, 16))
