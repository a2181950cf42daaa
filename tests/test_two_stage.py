"""Unit tests of the shared two-stage parts (nnunetv2_ext.two_stage): boxes, crop/paste, prior, steps, checks,
organ-centred data loader, case-level prediction helpers."""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from nnunetv2_ext.two_stage.checks import check_cascade_labels, check_tumour_inside_organ
from nnunetv2_ext.two_stage.crop import bounding_box, crop_with_padding, expand_box, paste_crop
from nnunetv2_ext.two_stage.prior import SalientChangeModule
from nnunetv2_ext.two_stage.steps import STEP_I, STEP_J, STEP_S, step_boundaries, step_for_epoch


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


def test_salient_change_starts_as_identity_and_is_differentiable():
    scm = SalientChangeModule(nn.Conv2d, 1)
    x = torch.randn(1, 1, 8, 8)
    p = torch.rand(1, 1, 8, 8, requires_grad=True)
    assert torch.equal(scm(x, p), x)
    nn.init.normal_(scm.transform[-1].weight)
    scm(x, p).sum().backward()
    assert p.grad.abs().sum() > 0


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


# ------------------------------------------------------------------ organ-centred patches
class _FakeLabels:
    all_labels = [0, 1, 2]
    has_ignore_label = False


class _FakeData:
    identifiers = ["a"]


@pytest.mark.parametrize("two_d", [False, True])
def test_organ_centred_loader_holds_the_whole_organ_box_plus_margin(two_d):
    from nnunetv2_ext.two_stage.data_loader import OrganCentredDataLoader
    np.random.seed(0)
    shape = (30, 80, 80)
    organ = np.argwhere(np.ones((6, 20, 14), bool)) + np.array([10, 40, 50])  # z 10-15, y 40-59, x 50-63
    locations = {1: np.concatenate([np.zeros((len(organ), 1), int), organ], 1), 2: np.zeros((0, 4), int)}
    patch = (40, 40) if two_d else (16, 40, 40)
    margin = (3, 3) if two_d else (2, 3, 3)
    initial = (56, 56) if two_d else (16, 56, 56)  # nnU-Net samples a larger patch for rotation
    loader = OrganCentredDataLoader(_FakeData(), 2, initial, patch, _FakeLabels(), 1.0, organ_labels=(1, 2),
                                    margin=margin)
    final = (1, *patch) if two_d else patch
    for _ in range(50):
        lbs, ubs = loader.get_bbox(shape, True, locations)
        offset = [(i - f) // 2 for i, f in zip(loader.patch_size, final)]
        lo = [lb + o for lb, o in zip(lbs, offset)]
        hi = [a + f for a, f in zip(lo, final)]
        if two_d:
            assert 10 <= lo[0] <= 15 and hi[0] == lo[0] + 1
        else:
            assert lo[0] <= 10 - 2 and hi[0] >= 16 + 2
        assert lo[1] <= 40 - 3 and hi[1] >= 60 + 3 and lo[2] <= 50 - 3 and hi[2] >= 64 + 3
    lbs, _ = loader.get_bbox(shape, False, locations)  # not forced: nnU-Net's random placement
    assert len(lbs) == 3


# ------------------------------------------------------------------ case-level prediction helpers
def test_sliding_window_and_mirroring_reproduce_a_pointwise_function():
    from nnunetv2_ext.nnunet_adapters.predictor import mirrored, sliding_window
    image = torch.rand(1, 5, 23, 30)

    def fn(tile):
        return torch.cat([tile * 2, -tile], dim=1)
    out = sliding_window(mirrored(fn, (0, 1)), image, (1, 16, 16), num_channels=2)  # 2d tiles on a 3d case
    assert out.shape == (2, 5, 23, 30) and torch.allclose(out[0], image[0] * 2, atol=1e-5)
    out3 = sliding_window(fn, image, (4, 16, 16), num_channels=2, use_gaussian=False)
    assert torch.allclose(out3[1], -image[0], atol=1e-6)
    with pytest.raises(ValueError, match="tile size"):
        sliding_window(fn, image, (16, 16), num_channels=2)


def test_predictor_hook_hands_case_level_networks_the_whole_case(tmp_path):
    from types import SimpleNamespace

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunetv2_ext.nnunet_adapters.predictor import (CasePrediction, DeclaredCase, case_declared,
                                                        declared_case, install_case_level_prediction,
                                                        write_case_record)
    install_case_level_prediction()
    patched = nnUNetPredictor.predict_sliding_window_return_logits
    install_case_level_prediction()  # idempotent: not wrapped twice
    assert nnUNetPredictor.predict_sliding_window_return_logits is patched
    seen, lines = {}, []

    class CaseNet(nn.Module):
        def predict_case_logits(self, data, context):
            seen.update(shape=tuple(data.shape), case=context.case, spacing=context.spacing,
                        mirror=context.mirror_axes, folder=context.output_folder)
            return CasePrediction(torch.zeros(3, *data.shape[1:]), {"case": context.case}, ["one line"], "x.jsonl")

    net = CaseNet()
    predictor = SimpleNamespace(
        network=net, device=torch.device("cpu"), tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
        allowed_mirroring_axes=(0, 1), plans_manager=SimpleNamespace(transpose_forward=[0, 1, 2]),
        configuration_manager=SimpleNamespace(spacing=[0.8, 0.8], patch_size=[32, 32]))
    with case_declared(net, DeclaredCase("case_7", {"spacing": [2.5, 0.7, 0.7]}, str(tmp_path), lines.append)):
        out = nnUNetPredictor.predict_sliding_window_return_logits(predictor, torch.rand(1, 4, 10, 12))
    assert declared_case(net) == DeclaredCase()  # the declaration ends with the block
    assert out.shape == (3, 4, 10, 12)
    assert seen == {"shape": (1, 4, 10, 12), "case": "case_7", "spacing": (2.5, 0.8, 0.8), "mirror": (0, 1),
                    "folder": str(tmp_path)}
    assert lines == ["one line"] and (tmp_path / "x.jsonl").read_text().count('"case": "case_7"') == 1
    path = write_case_record(str(tmp_path), "log.jsonl", {"case": "case_7", "box": (1, 2)})
    write_case_record(str(tmp_path), "log.jsonl", {"case": "case_8"})
    lines = open(path).read().splitlines()
    assert len(lines) == 2 and '"box": [1, 2]' in lines[0]
    assert write_case_record(None, "log.jsonl", {}) is None


def test_largest_component_and_jittered_margins():
    from nnunetv2_ext.two_stage.boxes import grow_box, jitter_margin, largest_component
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[1:3, 1:3] = True  # 4 voxels
    mask[5:9, 5:9] = True  # 16 voxels
    kept = largest_component(mask)
    assert kept.sum() == 16 and not kept[1, 1] and isinstance(kept, torch.Tensor)
    assert largest_component(np.zeros((3, 3), bool)).sum() == 0
    np.random.seed(0)
    margins = [jitter_margin(8, 2, 0.25) for _ in range(200)]
    values = np.array(margins).ravel()
    assert values.min() >= 6 and values.max() <= 10 and len(set(values)) > 2
    assert grow_box(((5, 6), (5, 6)), ((1, 2), (3, 4))) == ((4, 8), (2, 10))
    assert jitter_margin(8, 2, 0.0) == ((8, 8), (8, 8))


def test_sliding_window_visits_each_slice_once_with_2d_tiles():
    from nnunetv2_ext.nnunet_adapters.predictor import sliding_window
    calls = []

    def fn(tile):
        calls.append(tuple(tile.shape))
        return tile
    sliding_window(fn, torch.rand(1, 7, 16, 16), (1, 16, 16), num_channels=1)
    assert len(calls) == 7  # nnU-Net's 2d prediction: one tile per slice, not the step formula's 13
