"""Unit tests of nnunetv2_ext.losses and the signed-distance-map transform: known values on analytic shapes,
gradients, multi-class, deep supervision, ignore label, bad input."""
import itertools
import math

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunetv2_ext.losses import (BoundaryLoss, ConstantWeight, HausdorffDTLoss, InterClassSharedBoundaryLoss,
                                 MultiLevelStructuralLoss, RegionAndStructuralLoss, StepUpWeight, SwitchWeight,
                                 UncertainPointLoss, point_sample, shared_boundary_matrix)
from nnunetv2_ext.transforms import SignedDistanceMapTransform, signed_distance_maps


def hard_logits(labels: np.ndarray, num_classes: int, scale: float = 30.0) -> torch.Tensor:
    """(1, C, *spatial) float64 logits whose softmax is one-hot of ``labels`` up to exp(-scale)."""
    onehot = np.eye(num_classes)[labels].transpose((labels.ndim,) + tuple(range(labels.ndim)))
    return torch.from_numpy(onehot[None] * scale)


def as_target(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(labels[None, None].astype(np.int64))


def as_sdm(labels, classes, spacing, ignore_label=None) -> torch.Tensor:
    return torch.from_numpy(signed_distance_maps(labels, classes, spacing, ignore_label)[None]).double()


def disk(shape, center, radius_mm, spacing=(1.0, 1.0)):
    grid = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, center, spacing)], indexing="ij")
    return (sum(g ** 2 for g in grid) <= radius_mm ** 2).astype(np.int64)


# ---------------------------------------------------------------- signed distance maps
def test_sdm_disk_signs_and_values():
    labels = disk((64, 64), (32, 32), 10)
    sdm = signed_distance_maps(labels, [1], (1.0, 1.0))[0]
    assert sdm.dtype == np.float32 and sdm.shape == (64, 64)
    assert np.all(sdm[labels == 1] < 0) and np.all(sdm[labels == 0] > 0)
    assert sdm[32, 32] == pytest.approx(-math.sqrt(101))  # centre: nearest outside voxel at (10, 1)
    assert sdm[32, 52] == pytest.approx(10.0, abs=0.01)  # 20 from the centre, nearest inside voxel at 10
    assert sdm[32, 43] == pytest.approx(1.0) and sdm[32, 42] == pytest.approx(-1.0)  # either side of the boundary


def test_sdm_sphere_honours_anisotropic_spacing():
    spacing = (3.0, 1.0, 1.0)
    labels = disk((21, 51, 51), (10, 25, 25), 12.0, spacing)  # ball of radius 12 mm, 4 slices either side
    sdm = signed_distance_maps(labels, [1], spacing)[0]
    assert sdm[10 + 8, 25, 25] == pytest.approx(12.0)  # 24 mm above the centre, top inside slice at 12 mm
    assert sdm[10, 25, 25 + 24] == pytest.approx(12.0)  # the same 12 mm in-plane: 12 voxels
    assert sdm[10 + 5, 25, 25] == pytest.approx(3.0)  # first slice outside: one z spacing
    assert sdm[10, 25, 25] == pytest.approx(-math.sqrt(145))  # nearest outside voxel in-plane (12, 1); z: 15 mm


def test_sdm_multiclass_absent_full_and_ignore():
    labels = np.zeros((20, 20), np.int64)
    labels[5:10, 5:10] = 1
    labels[10:15, 5:10] = 2
    labels[:, 18:] = 3  # ignore label
    sdm = signed_distance_maps(labels, [1, 2, 4], (1.0, 1.0), ignore_label=3)
    assert sdm.shape == (3, 20, 20)
    assert sdm[0, 9, 7] == -1 and sdm[0, 10, 7] == 1  # class 1 / class 2 interface
    assert sdm[1, 10, 7] == -1 and sdm[1, 9, 7] == 1
    assert sdm[0, 7, 19] == pytest.approx(10.0)  # ignore voxels count as background: distance to class 1
    assert np.all(sdm[2] == 0)  # absent class: no boundary, zeros
    assert np.all(signed_distance_maps(np.ones((8, 8), np.int64), [1], (1, 1)) == 0)  # class fills the patch


def test_sdm_transform_appends_full_resolution_maps():
    seg = torch.from_numpy(disk((32, 32), (16, 16), 6)[None].astype(np.int16))
    t = SignedDistanceMapTransform([1, 2], (2.0, 1.0))
    ds = [seg, seg[:, ::2, ::2]]
    out = t(segmentation=list(ds))["segmentation"]
    assert len(out) == 3 and out[0] is ds[0] and out[1] is ds[1]
    assert out[2].dtype == torch.float32 and out[2].shape == (2, 32, 32)
    np.testing.assert_array_equal(out[2].numpy(), signed_distance_maps(seg[0].numpy(), [1, 2], (2.0, 1.0)))
    seg_and_sdm = t(segmentation=seg)["segmentation"]
    assert isinstance(seg_and_sdm, list) and seg_and_sdm[0] is seg
    with pytest.raises(ValueError, match="spatial axes"):
        SignedDistanceMapTransform([1], (1.0, 1.0, 1.0))(segmentation=seg)
    with pytest.raises(ValueError, match="spacing must be positive"):
        SignedDistanceMapTransform([1], (0.0, 1.0))


# ---------------------------------------------------------------- boundary loss (Eq. 7)
def half_plane(shape, first_outside_column):
    labels = np.zeros(shape, np.int64)
    labels[:, :first_outside_column] = 1
    return labels


def test_boundary_loss_exact_value_half_plane():
    spacing = (1.0, 2.0)
    ref, pred = half_plane((32, 40), 20), half_plane((32, 40), 22)
    loss = BoundaryLoss()(hard_logits(pred, 2), as_target(ref), as_sdm(ref, [1], spacing))
    # per row: inside columns 0..19 at -(20-c)*2 mm, two false-positive columns at +2 and +4 mm
    expected = 32 * (-2 * sum(range(1, 21)) + 2 + 4) / (32 * 40)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_boundary_loss_disk_matches_analytic_integral_and_is_minimal_at_reference():
    n, radius = 96, 16.0
    ref = disk((n, n), (48, 48), radius)
    sdm = as_sdm(ref, [1], (1.0, 1.0))
    values = {}
    for r in (radius - 6, radius, radius + 6):
        pred = disk((n, n), (48, 48), r)
        values[r] = BoundaryLoss()(hard_logits(pred, 2), as_target(ref), sdm).item()
        analytic = 2 * math.pi * (r ** 3 / 3 - radius * r ** 2 / 2) / n ** 2  # ∫_{|x|<r} (|x| - R) dA / |Ω|
        # voxel centres sit 0.5-1 voxel from the continuous boundary: allow 1 mm times the disk area
        assert abs(values[r] - analytic) <= math.pi * r ** 2 / n ** 2, (r, values[r], analytic)
    assert values[radius] < values[radius - 6] and values[radius] < values[radius + 6]


def test_boundary_loss_sphere_anisotropic_matches_analytic_integral():
    spacing, shape, centre, radius = (2.0, 1.0, 1.0), (24, 48, 48), (12, 24, 24), 14.0
    ref = disk(shape, centre, radius, spacing)
    sdm = as_sdm(ref, [1], spacing)
    n_voxels = np.prod(shape)
    for r in (radius - 4, radius + 4):
        pred = disk(shape, centre, r, spacing)
        value = BoundaryLoss()(hard_logits(pred, 2), as_target(ref), sdm).item()
        voxel_volume = np.prod(spacing)
        # ∫_{|x|<r} (|x| - R) dV in mm^4, per voxel volume and |Ω| voxels
        analytic = 4 * math.pi * (r ** 4 / 4 - radius * r ** 3 / 3) / voxel_volume / n_voxels
        assert abs(value - analytic) <= 0.5 * pred.sum() / n_voxels, (r, value, analytic)  # 0.5 mm per voxel


def test_boundary_loss_multiclass_is_mean_over_foreground_classes():
    ref = np.zeros((24, 24), np.int64)
    ref[4:12, 4:12], ref[14:20, 6:18] = 1, 2
    logits = torch.randn(1, 3, 24, 24, dtype=torch.float64)
    sdm = as_sdm(ref, [1, 2], (1.0, 1.0))
    probs = torch.softmax(logits, 1)
    expected = ((probs[:, 1] * sdm[:, 0]).mean() + (probs[:, 2] * sdm[:, 1]).mean()) / 2
    assert BoundaryLoss()(logits, as_target(ref), sdm).item() == pytest.approx(expected.item())


def test_boundary_loss_shape_errors():
    logits, target = torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="signed distance maps must have shape"):
        BoundaryLoss()(logits, target, torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="needs signed distance maps"):
        BoundaryLoss()(logits, target, None)
    with pytest.raises(ValueError, match="label map"):
        BoundaryLoss()(logits, torch.zeros(2, 3, 8, 8), torch.zeros(2, 2, 8, 8))


# ---------------------------------------------------------------- Hausdorff DT loss (Eq. 8)
def test_hausdorff_loss_exact_values_half_plane():
    spacing = (1.0, 2.0)
    ref, pred = half_plane((32, 40), 20), half_plane((32, 40), 22)
    logits, target, sdm = hard_logits(pred, 2), as_target(ref), as_sdm(ref, [1], spacing)
    one_sided = HausdorffDTLoss(use_prediction_distance=False)(logits, target, sdm)
    two_sided = HausdorffDTLoss(spacing)(logits, target, sdm)
    # wrong columns 20, 21: d_G = 2, 4 mm; d_S (prediction boundary between 21 and 22) = 4, 2 mm
    assert one_sided.item() == pytest.approx(32 * (2 ** 2 + 4 ** 2) / 1280, rel=1e-6)
    assert two_sided.item() == pytest.approx(32 * (2 ** 2 + 4 ** 2 + 4 ** 2 + 2 ** 2) / 1280, rel=1e-6)
    assert HausdorffDTLoss(spacing)(hard_logits(ref, 2), target, sdm).item() == pytest.approx(0, abs=1e-12)


def test_hausdorff_loss_parameter_errors():
    with pytest.raises(ValueError, match="exponent"):
        HausdorffDTLoss((1, 1), exponent=0)
    with pytest.raises(ValueError, match="spacing"):
        HausdorffDTLoss(None)


# ---------------------------------------------------------------- gradients
def _gradcheck(fn, logits):
    assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-5)


def test_gradients_of_all_terms():
    torch.manual_seed(0)
    ref = np.zeros((10, 12), np.int64)
    ref[2:7, 3:8], ref[5:9, 7:11] = 1, 2
    target, sdm = as_target(ref), as_sdm(ref, [1, 2], (1.0, 1.5))
    logits = torch.randn(1, 3, 10, 12, dtype=torch.float64, requires_grad=True)
    _gradcheck(lambda x: BoundaryLoss()(x, target, sdm), logits)
    _gradcheck(lambda x: HausdorffDTLoss((1.0, 1.5))(x, target, sdm), logits)
    _gradcheck(lambda x: InterClassSharedBoundaryLoss()(x, target), logits)

    def points(x):
        torch.manual_seed(1)  # the same points at every evaluation
        return UncertainPointLoss(num_points=64)(x, target)
    _gradcheck(points, logits)
    logits3d = torch.randn(1, 3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    target3d = torch.randint(0, 3, (1, 1, 4, 5, 6))
    _gradcheck(lambda x: InterClassSharedBoundaryLoss()(x, target3d), logits3d)


# ---------------------------------------------------------------- ignore label
@pytest.mark.parametrize("name", ["boundary", "hausdorff", "points", "shared"])
def test_ignored_voxels_get_no_gradient(name):
    torch.manual_seed(0)
    ref = np.zeros((16, 16), np.int64)
    ref[3:10, 3:10], ref[8:12, 8:12] = 1, 2
    ref[:, :4] = 3  # ignore label in the first 4 columns
    target, sdm = as_target(ref), as_sdm(ref, [1, 2], (1.0, 1.0), ignore_label=3)
    loss = {"boundary": lambda x: BoundaryLoss(3)(x, target, sdm),
            "hausdorff": lambda x: HausdorffDTLoss((1.0, 1.0), ignore_label=3)(x, target, sdm),
            "points": lambda x: UncertainPointLoss(512, ignore_label=3)(x, target),
            "shared": lambda x: InterClassSharedBoundaryLoss(3)(x, target)}[name]
    logits = torch.randn(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    loss(logits).backward()
    grad = logits.grad.abs().sum(1)[0]
    # ignored columns 0..3; point interpolation and the shared-boundary neighbourhood reach one column further
    assert grad[:, :3].max() == 0
    assert grad[:, 6:].max() > 0


def test_all_ignored_gives_zero_not_nan():
    logits = torch.randn(1, 2, 8, 8, requires_grad=True)
    target = torch.full((1, 1, 8, 8), 2)
    for loss in (BoundaryLoss(2)(logits, target, torch.zeros(1, 1, 8, 8)), UncertainPointLoss(16, ignore_label=2)(
            logits, target), InterClassSharedBoundaryLoss(2)(logits, target)):
        assert torch.isfinite(loss) and loss.item() == 0
        loss.backward()


# ---------------------------------------------------------------- uncertain points (Eq. 10)
def test_point_sample_matches_voxel_centres_2d_and_3d():
    values = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    idx = torch.tensor([[1, 3], [0, 0], [3, 4]])  # (axis0, axis1) voxel indices
    pts = ((idx + 0.5) / torch.tensor([4, 5]))[None].expand(2, -1, -1)
    np.testing.assert_allclose(point_sample(values, pts).numpy(), values[:, :, idx[:, 0], idx[:, 1]].numpy())
    vol = torch.randn(1, 2, 3, 4, 5, dtype=torch.float64)
    idx3 = torch.tensor([[2, 1, 4], [0, 3, 0]])
    pts3 = ((idx3 + 0.5) / torch.tensor([3, 4, 5]))[None]
    np.testing.assert_allclose(point_sample(vol, pts3, "nearest").numpy(),
                               vol[:, :, idx3[:, 0], idx3[:, 1], idx3[:, 2]].numpy())


@pytest.mark.parametrize("importance", [1.0, 0.75])
def test_uncertain_points_concentrate_where_the_margin_is_smallest(importance):
    torch.manual_seed(0)
    logits = torch.zeros(2, 3, 40, 40)
    logits[:, 0] = 10.0  # confident background everywhere ...
    logits[:, :2, :, 20:] = 0.0  # ... except the right half: classes 0 and 1 tie (margin 0)
    loss = UncertainPointLoss(num_points=200, oversample_ratio=3, importance_ratio=importance)
    pts = loss.select_points(logits)
    assert pts.shape == (2, 200, 2)
    in_band = (pts[..., 1] * 40 >= 19.5).float().mean().item()
    # m·N points from the band (1.5·N band candidates on average), plus the random ones, half of which land there
    expected = importance + (1 - importance) * 0.5
    assert in_band == pytest.approx(expected, abs=0.06)


def test_uncertain_point_loss_is_ce_on_points():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 6, 7)
    target = torch.randint(0, 3, (1, 1, 6, 7))
    # with voxel-centre points the loss equals the CE of those voxels
    loss = UncertainPointLoss(num_points=5, importance_ratio=0.0)
    idx = torch.tensor([[0, 0], [5, 6], [2, 3], [4, 1], [1, 5]])
    loss.select_points = lambda x: ((idx + 0.5) / torch.tensor([6, 7]))[None]
    expected = torch.nn.functional.cross_entropy(logits[0, :, idx[:, 0], idx[:, 1]].T, target[0, 0, idx[:, 0],
                                                                                                  idx[:, 1]])
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_uncertain_point_loss_parameter_errors():
    with pytest.raises(ValueError, match="num_points"):
        UncertainPointLoss(0)
    with pytest.raises(ValueError, match="oversample_ratio"):
        UncertainPointLoss(10, oversample_ratio=0.5)
    with pytest.raises(ValueError, match="importance_ratio"):
        UncertainPointLoss(10, importance_ratio=1.5)



def test_stride_4_selection_reads_the_uncertainty_of_4x4_blocks():
    """The paper selects on the stride-4 logits: the uncertainty is that of 4x4 block means. A tied 4x4 block beside
    a single tied voxel: all points go to the block (the voxel's block mean is nearly confident). With m = 1 and k·N
    candidates, the N kept points are the most uncertain candidates. At full resolution the single voxel alone is
    found."""
    torch.manual_seed(0)
    logits = torch.zeros(1, 2, 16, 16)
    logits[:, 0] = 8.0  # confident background ...
    logits[:, 0, 13, 2] = 0.0  # ... one tied voxel in block (3, 0)
    full = UncertainPointLoss(num_points=8, oversample_ratio=128, importance_ratio=1.0)
    pts = full.select_points(logits)[0] * 16  # voxel units
    assert (((pts[:, 0] - 13.5).abs() < 1) & ((pts[:, 1] - 2.5).abs() < 1)).all(), pts
    logits[:, 0, 4:8, 8:12] = 0.0  # a tied block (1, 2)
    strided = UncertainPointLoss(num_points=8, oversample_ratio=128, importance_ratio=1.0, selection_stride=4)
    assert strided.selection_logits(logits).shape == (1, 2, 4, 4)
    pts = strided.select_points(logits)[0] * 16
    assert ((pts[:, 0] >= 4) & (pts[:, 0] < 8) & (pts[:, 1] >= 8) & (pts[:, 1] < 12)).all(), pts
    # non-divisible sizes keep covering the whole extent
    assert strided.selection_logits(torch.zeros(1, 2, 10, 9, 7)).shape == (1, 2, 3, 3, 2)
    with pytest.raises(ValueError, match="selection_stride"):
        UncertainPointLoss(10, selection_stride=0)


def test_restarted_poly_lr_by_hand():
    from nnunetv2_ext.losses.schedules import restart_epoch, restarted_poly_lr
    assert [restart_epoch(f, n) for f, n in ((0.6, 20), (0.6, 10), (0.6, 4), (0.5, 2))] == [12, 6, 3, 1]
    lr = lambda e: restarted_poly_lr(e, 10, 0.01, 6)  # noqa: E731
    assert lr(0) == 0.01 and lr(3) == pytest.approx(0.01 * 0.5 ** 0.9) and lr(6) == 0.01
    assert lr(8) == pytest.approx(0.01 * 0.5 ** 0.9) and lr(9) == pytest.approx(0.01 * 0.25 ** 0.9)
    # no restart inside the run: nnU-Net's poly schedule
    assert restarted_poly_lr(5, 10, 0.01, 10) == pytest.approx(0.01 * 0.5 ** 0.9) == restarted_poly_lr(5, 10, 0.01, 0)


def test_epoch_function_scheduler_sets_the_rate_nnunet_asks_for():
    import functools

    from nnunetv2_ext.losses.schedules import restarted_poly_lr
    from nnunetv2_ext.nnunet_adapters.lr import EpochFunctionLRScheduler
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = EpochFunctionLRScheduler(optimizer, functools.partial(restarted_poly_lr, num_epochs=10,
                                                                      initial_lr=0.01, restart=6), 10)
    for epoch in (3, 6, 9, 6):  # as nnU-Net calls it: step(current_epoch), also after --c
        scheduler.step(epoch)
        assert optimizer.param_groups[0]["lr"] == restarted_poly_lr(epoch, 10, 0.01, 6)


# ---------------------------------------------------------------- inter-class shared boundary (Eq. 14-16)
def discrete_shared_boundary_matrix(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The paper's definition, voxel by voxel: l_i = #voxels of class i with a 4/6-neighbour of another class,
    l_ij = #those with a neighbour of class j, m(i, j) = l_ij / l_i (0 if l_i = 0)."""
    shape = labels.shape
    l_i, l_ij = np.zeros(num_classes), np.zeros((num_classes, num_classes))
    for x in itertools.product(*[range(n) for n in shape]):
        c = labels[x]
        neighbours = set()
        for axis, step in itertools.product(range(labels.ndim), (-1, 1)):
            y = list(x)
            y[axis] += step
            if 0 <= y[axis] < shape[axis]:
                neighbours.add(labels[tuple(y)])
        if neighbours - {c}:
            l_i[c] += 1
            for j in neighbours:
                l_ij[c, j] += 1
    m = np.divide(l_ij, l_i[:, None], out=np.zeros_like(l_ij), where=l_i[:, None] > 0)
    np.fill_diagonal(m, 0)  # defined for i != j only
    return m


def two_touching_squares():
    labels = np.zeros((20, 30), np.int64)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 2
    return labels


def test_shared_boundary_two_touching_squares_known_values():
    m = shared_boundary_matrix(hard_logits(two_touching_squares(), 3, 1.0).round().double())[0].numpy()
    # class 1: 36 perimeter voxels, 10 touch class 2 (right column), 28 touch background
    assert m[1, 2] == pytest.approx(10 / 36) and m[1, 0] == pytest.approx(28 / 36)
    assert m[2, 1] == pytest.approx(10 / 36) and m[2, 0] == pytest.approx(28 / 36)
    # background: 60 voxels around the 10 x 20 rectangle, 30 next to each square
    assert m[0, 1] == pytest.approx(0.5) and m[0, 2] == pytest.approx(0.5)
    np.testing.assert_allclose(m, discrete_shared_boundary_matrix(two_touching_squares(), 3))


@pytest.mark.parametrize("shape", [(12, 13), (5, 6, 7)])
def test_soft_shared_boundary_equals_discrete_definition_on_one_hot(shape):
    rng = np.random.default_rng(0)
    for _ in range(3):
        labels = rng.integers(0, 4, size=shape)
        labels[..., : shape[-1] // 2] = 0  # an absent-ish region and some large components
        onehot = torch.from_numpy(np.eye(4)[labels]).movedim(-1, 0)[None]
        np.testing.assert_allclose(shared_boundary_matrix(onehot)[0].numpy(),
                                   discrete_shared_boundary_matrix(labels, 4), atol=1e-12)
    absent = np.zeros(shape, np.int64)  # classes 1..3 absent: their rows are 0
    m = shared_boundary_matrix(torch.from_numpy(np.eye(4)[absent]).movedim(-1, 0)[None])[0]
    assert torch.all(m == 0)


def test_shared_boundary_loss_values():
    ref = two_touching_squares()
    apart = np.zeros_like(ref)
    apart[5:15, 2:12], apart[5:15, 17:27] = 1, 2  # the same squares, not touching
    loss = InterClassSharedBoundaryLoss()
    assert loss(hard_logits(ref, 3), as_target(ref)).item() == pytest.approx(0, abs=1e-9)
    m_ref = discrete_shared_boundary_matrix(ref, 3)
    m_apart = discrete_shared_boundary_matrix(apart, 3)
    off = ~np.eye(3, dtype=bool)
    expected = ((m_apart - m_ref)[off] ** 2).mean()
    assert expected > 0.01
    assert loss(hard_logits(apart, 3), as_target(ref)).item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- schedules and the compound (Eq. 11)
def test_schedules():
    alpha, beta = StepUpWeight(), SwitchWeight()
    assert [alpha(e, 1000) for e in (0, 49, 50, 100, 199, 200, 250, 999)] == [0, 0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    assert [beta(e, 1000) for e in (0, 499, 500, 999)] == [0, 0, 1, 1]
    assert StepUpWeight(increment=0.5, step_fraction=0.5)(1, 2) == 0.5
    assert ConstantWeight(0.3)(7, 10) == 0.3


@pytest.mark.parametrize("make, match", [
    (lambda: StepUpWeight(increment=2), "increment"),
    (lambda: StepUpWeight(step_fraction=0), "step_fraction"),
    (lambda: StepUpWeight(start=2, maximum=1), "start"),
    (lambda: SwitchWeight(switch_fraction=1.5), "switch_fraction"),
    (lambda: SwitchWeight(after=-1), "after"),
    (lambda: ConstantWeight(float("nan")), "value"),
    (lambda: StepUpWeight()(-1, 10), "epoch"),
])
def test_schedule_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _region_loss(num_scales):
    dc_ce = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                           weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    return DeepSupervisionWrapper(dc_ce, [0.5 ** i for i in range(num_scales)]), dc_ce


def test_mll_compound_with_deep_supervision_multiclass():
    torch.manual_seed(0)
    ref = np.zeros((2, 32, 32), np.int64)
    ref[:, 8:20, 8:20], ref[:, 14:24, 16:28] = 1, 2
    segs = [torch.from_numpy(ref[:, None, ::s, ::s].copy()) for s in (1, 2, 4)]
    sdm = torch.from_numpy(np.stack([signed_distance_maps(r, [1, 2], (1.0, 1.0)) for r in ref]))
    outputs = [torch.randn(2, 3, 32 // s, 32 // s, requires_grad=True) for s in (1, 2, 4)]
    region, dc_ce = _region_loss(3)
    mll = MultiLevelStructuralLoss(region, BoundaryLoss(), UncertainPointLoss(128))
    assert mll.current_weights() == {"boundary": 0.0, "pixelwise": 0.0}
    expected_region = sum(0.5 ** i * dc_ce(o, s) for i, (o, s) in enumerate(zip(outputs, segs)))
    assert mll(outputs, segs + [sdm]).item() == pytest.approx(expected_region.item(), rel=1e-6)
    mll.set_epoch(600, 1000)  # alpha = 1, beta = 1
    torch.manual_seed(3)
    total = mll(outputs, segs + [sdm])
    torch.manual_seed(3)
    terms = BoundaryLoss()(outputs[0], segs[0], sdm) + UncertainPointLoss(128)(outputs[0], segs[0])
    assert total.item() == pytest.approx((expected_region + terms).item(), rel=1e-5)
    total.backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)
    with pytest.raises(ValueError, match="target list of 4 entries"):
        mll(outputs, segs)


def test_compound_without_deep_supervision_and_without_sdm():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16)
    seg = torch.randint(0, 3, (2, 1, 16, 16))
    _, dc_ce = _region_loss(1)
    loss = RegionAndStructuralLoss(dc_ce, {"isb": (InterClassSharedBoundaryLoss(), ConstantWeight(0.5))},
                                   uses_sdm=False)
    expected = dc_ce(logits, seg) + 0.5 * InterClassSharedBoundaryLoss()(logits, seg)
    assert loss(logits, seg).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        RegionAndStructuralLoss(dc_ce, {}, uses_sdm=False)
