"""Slice-position encoding (issue 19 item 2; Pham et al. §2.2): the encoding by hand, the dataset and prediction-input
commands, the trainer checks, and the channel kept exact through nnU-Net's real augmentation pipeline.
(Training, nnUNetv2_predict and what the network actually saw: test_slice_position_e2e.py.)"""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunetv2_ext.dataset_conversion.common import BadCasesError, ConversionError, run_conversion
from nnunetv2_ext.dataset_conversion.slice_position import (CHANNEL_KEY, SlicePositionConverter, add_to_images,
                                                            images_main)
from nnunetv2_ext.io_atomic import OutputFolderError
from nnunetv2_ext.slice_position.checks import position_channel
from nnunetv2_ext.slice_position.encoding import (SlicePositionError, position_image, positions_for_image,
                                                  relative_positions)
from nnunetv2_ext.slice_position.transforms import HoldSlicePosition, RestoreSlicePosition

SAGITTAL = (0, 0, 1, 1, 0, 0, 0, 1, 0)  # row-major: LPS z row (0, 1, 0), image axis 1 runs head-feet


def _volume(z=4, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), origin=(0, 0, 0), value=None):
    array = np.arange(z * 5 * 6, dtype=np.int16).reshape(z, 5, 6) if value is None else \
        np.full((z, 5, 6), value, dtype=np.uint8)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 3.0))
    image.SetDirection(direction)
    image.SetOrigin(origin)
    return image


# ------------------------------------------------------------------ the encoding, by hand
def test_positions_by_hand():
    np.testing.assert_allclose(relative_positions(4), [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(relative_positions(1), [0.5])
    with pytest.raises(SlicePositionError, match="at least one slice"):
        relative_positions(0)


def test_head_first_and_feet_first_series_give_the_same_position_to_the_same_anatomy():
    # identity direction: the index along the third axis grows towards the head (LPS +z), so slice 3 is the top one
    feet_first = _volume(4)
    np.testing.assert_allclose(positions_for_image(feet_first), [0.875, 0.625, 0.375, 0.125])
    # the same volume stored head first: index 0 at the top (z = 9 mm), the third axis pointing to the feet
    head_first = sitk.Flip(feet_first, [False, False, True])
    assert head_first.GetDirection()[8] == -1 and head_first.GetOrigin()[2] == 9
    np.testing.assert_allclose(positions_for_image(head_first), [0.125, 0.375, 0.625, 0.875])
    for k in range(4):  # slice k of one series is at the physical z of slice 3 - k of the other: same p
        z = feet_first.TransformIndexToPhysicalPoint((0, 0, k))[2]
        assert head_first.TransformIndexToPhysicalPoint((0, 0, 3 - k))[2] == z
        assert positions_for_image(feet_first)[k] == positions_for_image(head_first)[3 - k]
    channel = position_image(head_first, "case_1")
    assert channel.GetDirection() == head_first.GetDirection() and channel.GetOrigin() == head_first.GetOrigin()
    array = sitk.GetArrayFromImage(channel)
    assert array.dtype == np.float32 and array.shape == (4, 5, 6)
    for k, p in enumerate([0.125, 0.375, 0.625, 0.875]):
        assert np.all(array[k] == np.float32(p))


def test_non_axial_and_2d_images_are_refused_naming_the_case():
    with pytest.raises(SlicePositionError, match=r"case_7: the slices are not axial \(image axis 1"):
        positions_for_image(_volume(direction=SAGITTAL), "case_7")
    with pytest.raises(SlicePositionError, match="case_8: slice positions need a 3D image, got a 2D one"):
        positions_for_image(sitk.Image([5, 6], sitk.sitkFloat32), "case_8")


# ------------------------------------------------------------------ trainer checks
def _dataset_json(**extra):
    return dict({"channel_names": {"0": "CT", "1": "noNorm"}, CHANNEL_KEY: 1}, **extra)


def test_trainer_checks():
    assert position_channel(_dataset_json(), [48, 48], (0, 1, 2), "T") == 1
    cases = [({"channel_names": {"0": "CT"}}, [48, 48], (0, 1, 2), "no slice-position channel"),
             (_dataset_json(channel_names={"0": "CT", "1": "CT"}), [48, 48], (0, 1, 2), "must be 'noNorm'"),
             (_dataset_json(**{CHANNEL_KEY: 2}), [48, 48], (0, 1, 2), "is not one of the dataset's channels"),
             (_dataset_json(), [8, 48, 48], (0, 1, 2), "use a 2d configuration"),
             (_dataset_json(), [48, 48], (1, 0, 2), "along image axis 1")]
    for dataset_json, patch, transpose, message in cases:
        with pytest.raises(SlicePositionError, match=message):
            position_channel(dataset_json, patch, transpose, "nnUNetTrainerSlicePosition")


# ------------------------------------------------------------------ through nnU-Net's augmentation
def test_the_channel_stays_exact_through_nnunets_training_augmentation():
    """nnU-Net's own training pipeline (2d, the phantom's patch), 30 draws: with Hold/Restore the position channel
    comes out exactly as it went in, over the whole patch (also where rotation pulled in padding); without them the
    same draws change it."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    patch = (48, 48)
    pipeline = nnUNetTrainer.get_training_transforms(patch, (-np.pi, np.pi), None, (0, 1), False, [False, False],
                                                     False, [1], None, None)
    wrapped = ComposeTransforms([HoldSlicePosition(1), pipeline, RestoreSlicePosition(1)])
    image = torch.zeros((2, 48, 48))
    image[0] = torch.linspace(-1, 1, 48 * 48).reshape(48, 48)
    image[1, 4:, :] = 0.3125  # rows 0-3: the zero padding of a patch that reached past the image
    seg = torch.zeros((1, 48, 48), dtype=torch.int16)
    seg[0, 20:28, 20:28] = 1
    changed = 0
    for seed in range(30):
        torch.manual_seed(seed)
        np.random.seed(seed)
        out = wrapped(image=image.clone(), segmentation=seg.clone())["image"]
        assert out.shape == (2, 48, 48) and torch.all(out[1] == 0.3125), seed
        torch.manual_seed(seed)
        np.random.seed(seed)
        plain = pipeline(image=image.clone(), segmentation=seg.clone())["image"]
        changed += int(not torch.all(plain[1][4:] == 0.3125))
    assert changed >= 10, changed  # noise, brightness, gamma, ... do act on an unprotected channel


# ------------------------------------------------------------------ the commands
def _write_raw(raw: Path, name="Dataset970_Tiny", cases=("a", "b"), tests=("t",), sagittal=()):
    folder = raw / name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    for ident in cases + tests:
        direction = SAGITTAL if ident in sagittal else (1, 0, 0, 0, 1, 0, 0, 0, 1)
        sub = "imagesTr" if ident in cases else "imagesTs"
        sitk.WriteImage(_volume(direction=direction), str(folder / sub / f"{ident}_0000.nii.gz"))
        if ident in cases:
            sitk.WriteImage(_volume(direction=direction, value=1), str(folder / "labelsTr" / f"{ident}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0,
                                                     "organ": 1}, "numTraining": len(cases),
                                                     "file_ending": ".nii.gz", "name": name}))
    return folder


def test_dataset_command_writes_the_channel_and_keeps_everything_else(private_nnunet_dirs):
    raw = private_nnunet_dirs["nnUNet_raw"]
    source = _write_raw(raw)
    report = run_conversion(SlicePositionConverter(str(source)), 971, num_processes=1)
    target = raw / "Dataset971_TinySlicePosition"
    assert report.written and report.converted["train"] == ["a", "b"] and report.converted["test"] == ["t"]
    dataset_json = json.loads((target / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "CT", "1": "noNorm"} and dataset_json[CHANNEL_KEY] == 1
    assert dataset_json["labels"] == {"background": 0, "organ": 1} and dataset_json["numTraining"] == 2
    for sub, ident in (("imagesTr", "a"), ("imagesTs", "t")):
        name = f"{ident}_0000.nii.gz"
        assert (target / sub / name).read_bytes() == (source / sub / name).read_bytes()
        channel = sitk.GetArrayFromImage(sitk.ReadImage(str(target / sub / f"{ident}_0001.nii.gz")))
        np.testing.assert_array_equal(channel[:, 0, 0], np.float32([0.875, 0.625, 0.375, 0.125]))
    assert (target / "labelsTr" / "b.nii.gz").read_bytes() == (source / "labelsTr" / "b.nii.gz").read_bytes()
    with pytest.raises(ConversionError, match="already has a slice-position channel"):
        SlicePositionConverter(str(target))


def test_dataset_command_reports_bad_cases_and_writes_nothing(private_nnunet_dirs, tmp_path):
    raw = private_nnunet_dirs["nnUNet_raw"]
    source = _write_raw(tmp_path, "Dataset972_Bad", cases=("good", "side", "lost"), sagittal=("side",))
    (source / "imagesTr" / "good_0001.nii.gz").write_bytes(b"")  # a channel the dataset does not have
    (source / "labelsTr" / "lost.nii.gz").unlink()
    with pytest.raises(BadCasesError) as e:
        run_conversion(SlicePositionConverter(str(source)), 972, num_processes=1)
    text = e.value.report.format()
    assert "good: imagesTr: expected channels 0..0; missing [], unexpected [1]" in text
    assert "side: the slices are not axial" in text and "lost: imagesTr: no label lost.nii.gz" in text
    assert not list(raw.glob("Dataset972_*")) and not [p for p in raw.iterdir() if p.name.startswith(".")]


def test_images_command_adds_the_channel_for_prediction(private_nnunet_dirs, tmp_path, capsys):
    raw = private_nnunet_dirs["nnUNet_raw"]
    _write_raw(raw, "Dataset973_Pred")
    run_conversion(SlicePositionConverter(str(raw / "Dataset973_Pred")), 974, num_processes=1)
    images = raw / "Dataset973_Pred" / "imagesTs"
    out = tmp_path / "with_position"
    assert images_main(["-i", str(images), "-o", str(out), "-d", "974"]) == 0
    assert "Wrote 1 cases" in capsys.readouterr().out
    trained = raw / "Dataset974_PredSlicePosition" / "imagesTs"
    for name in ("t_0000.nii.gz", "t_0001.nii.gz"):  # exactly what the dataset command wrote for the same case
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / name))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(trained / name))))
    assert images_main(["-i", str(images), "-o", str(out), "-d", "974"]) == 2  # written before: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert images_main(["-i", str(images), "-o", str(tmp_path / "x"), "-d", "973"]) == 2  # a model without channel
    assert "no slice-position channel" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    sitk.WriteImage(_volume(direction=SAGITTAL), str(bad / "s_0000.nii.gz"))
    with pytest.raises(ConversionError, match="s: the slices are not axial"):
        add_to_images(str(bad), str(tmp_path / "y"), {"channel_names": {"0": "CT", "1": "noNorm"}, CHANNEL_KEY: 1})
    assert not (tmp_path / "y").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    with pytest.raises(OutputFolderError):
        add_to_images(str(images), str(foreign), {"channel_names": {"0": "CT", "1": "noNorm"}, CHANNEL_KEY: 1},
                      overwrite=True)
    assert (foreign / "mine.txt").read_text() == "x"
