"""Dataset converters (issue 3): geometry check, splits, NIH/LiTS/MSD/FLARE22 on synthetic source layouts, bad-input
reports, idempotence, and the real DICOM series whose label is stored y-flipped (../shared/data/real_ct).
The converters write into this module's own nnU-Net folders (``private_nnunet_dirs``): their many dataset ids cannot
clash with other modules'."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext.dataset_conversion import synthetic
from nnunetv2_ext.dataset_conversion.common import (MANIFEST_NAME, BadCasesError, ConversionError, holdout_split,
                                                    kfold_test_folds, run_conversion)
from nnunetv2_ext.dataset_conversion.flare22 import UNLABELED_LIST, FLARE22Converter
from nnunetv2_ext.dataset_conversion.flare22 import main as flare22_main
from nnunetv2_ext.dataset_conversion.geometry import Geometry, grid_mismatch, label_on_image_grid
from nnunetv2_ext.dataset_conversion.lits import LiTSConverter
from nnunetv2_ext.dataset_conversion.msd import MSDConverter
from nnunetv2_ext.dataset_conversion.nih_pancreas import NIHPancreasConverter
from nnunetv2_ext.dataset_conversion.nih_pancreas import main as nih_main


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _no_leftovers(raw: Path):
    return not [p.name for p in raw.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ geometry
def test_grid_mismatch_accepts_flips_and_permutations_and_resamples_exactly():
    image = synthetic.to_image(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    flipped = synthetic.flipped_y(image)
    assert grid_mismatch(Geometry.from_image(image), Geometry.from_image(flipped)) is None
    permuted = sitk.PermuteAxes(flipped, [2, 0, 1])  # keeps physical positions, changes index order
    assert grid_mismatch(Geometry.from_image(image), Geometry.from_image(permuted)) is None
    back = label_on_image_grid(permuted, Geometry.from_image(image))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    resampled = sitk.Resample(permuted, image, sitk.Transform(), sitk.sitkNearestNeighbor, -1, permuted.GetPixelID())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(resampled))
    assert back.GetDirection() == image.GetDirection() and back.GetOrigin() == image.GetOrigin()


@pytest.mark.parametrize("change, message", [
    (lambda im: im.SetOrigin((0.0, 5.0, 0.0)), "different physical regions"),
    (lambda im: im.SetSpacing((1.0, 1.3, 1.0)), "spacing differs"),
    (lambda im: im.SetDirection((0.8, -0.6, 0, 0.6, 0.8, 0, 0, 0, 1)), "not parallel"),
])
def test_grid_mismatch_refuses_other_spaces(change, message):
    image = sitk.Image([6, 5, 4], sitk.sitkUInt8)
    other = sitk.Image(image)
    change(other)
    assert message in grid_mismatch(Geometry.from_image(image), Geometry.from_image(other))
    assert "size differs" in grid_mismatch(Geometry.from_image(image),
                                           Geometry.from_image(sitk.Image([6, 5, 3], sitk.sitkUInt8)))


# ------------------------------------------------------------------ splits
def test_kfold_and_holdout_splits():
    ids = [f"PANCREAS_{i:04d}" for i in range(1, 83)]
    folds = kfold_test_folds(ids, 4, 12345)
    assert [len(f) for f in folds] == [21, 21, 20, 20]
    assert sorted(sum(folds, [])) == ids
    assert folds == kfold_test_folds(list(reversed(ids)), 4, 12345)  # order of the input does not matter
    assert folds != kfold_test_folds(ids, 4, 1)
    train, test = holdout_split([f"LiTS_{i:03d}" for i in range(131)], 26, 12345)
    assert len(train) == 105 and len(test) == 26 and not set(train) & set(test)
    train, test = holdout_split([f"BRATS_{i:03d}" for i in range(1, 485)], 48, 12345)
    assert (len(train), len(test)) == (436, 48)


def test_nih_paper_folds_are_drawn_over_all_82_label_files(tmp_path):
    converter = NIHPancreasConverter(str(tmp_path), str(tmp_path), paper_splits=True)
    converter.protocol_cases = [f"PANCREAS_{i:04d}" for i in range(1, 83)]
    available = [c for c in converter.protocol_cases if c not in ("PANCREAS_0025", "PANCREAS_0070")]
    splits = converter.splits({"train": available})
    assert [len(s["val"]) for s in splits] == [20, 21, 19, 20]  # 21/21/20/20 before removing the two scans
    assert sorted(sum((s["val"] for s in splits), [])) == available
    assert all(not set(s["train"]) & set(s["val"]) and len(s["train"]) + len(s["val"]) == 80 for s in splits)


# ------------------------------------------------------------------ NIH Pancreas-CT, synthetic DICOM
@pytest.fixture(scope="module")
def nih_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    dicom, labels = synthetic.make_nih_pancreas(root, case_numbers=(1, 2, 3), withdrawn=(25,))
    return root, dicom, labels


def test_nih_converts_flipped_labels_onto_series_keeps_hu_and_writes_paper_splits(private_nnunet_dirs, nih_source):
    root, dicom, labels = nih_source
    converter = NIHPancreasConverter(str(root), str(labels), paper_splits=True)
    report = run_conversion(converter, 930, num_processes=2)  # through the worker pool
    target = private_nnunet_dirs["nnUNet_raw"] / "Dataset930_NIHPancreas"
    assert report.written and report.converted["train"] == ["PANCREAS_0001", "PANCREAS_0002", "PANCREAS_0003"]
    assert any("PANCREAS_0025" in n and "no longer serves" in n for n in report.notes) and not report.problems
    for n in (1, 2, 3):
        expected_image, expected_label = synthetic.phantom((16, 48, 40), 1, n)
        np.testing.assert_array_equal(_array(target / "imagesTr" / f"PANCREAS_{n:04d}_0000.nii.gz"), expected_image)
        label = sitk.ReadImage(str(target / "labelsTr" / f"PANCREAS_{n:04d}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label), expected_label)
        assert label.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    dataset_json = json.loads((target / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "CT"} and dataset_json["numTraining"] == 3
    assert dataset_json["labels"] == {"background": 0, "pancreas": 1} and dataset_json["file_ending"] == ".nii.gz"
    splits = json.loads((target / "splits_final.json").read_text())
    assert len(splits) == 4
    assert sorted(sum((s["val"] for s in splits), [])) == report.converted["train"]
    for s in splits:
        assert sorted(s["train"] + s["val"]) == report.converted["train"]
    assert _no_leftovers(private_nnunet_dirs["nnUNet_raw"])


def test_rerun_is_idempotent_and_existing_target_needs_overwrite(private_nnunet_dirs, nih_source):
    root, dicom, labels = nih_source
    target = private_nnunet_dirs["nnUNet_raw"] / "Dataset931_NIHPancreas"
    run_conversion(NIHPancreasConverter(str(root), str(labels)), 931, num_processes=1)
    stamp = (target / "imagesTr" / "PANCREAS_0001_0000.nii.gz").stat().st_mtime_ns
    again = run_conversion(NIHPancreasConverter(str(root), str(labels)), 931, num_processes=1)
    assert again.up_to_date and not again.written
    assert (target / "imagesTr" / "PANCREAS_0001_0000.nii.gz").stat().st_mtime_ns == stamp
    with pytest.raises(ConversionError, match="--overwrite"):  # other options: not the same dataset any more
        run_conversion(NIHPancreasConverter(str(root), str(labels), paper_splits=True), 931, num_processes=1)
    assert not (target / "splits_final.json").exists()
    report = run_conversion(NIHPancreasConverter(str(root), str(labels), paper_splits=True), 931,
                            overwrite=True, num_processes=1)
    assert report.written and (target / "splits_final.json").is_file()
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == [f"PANCREAS_{n:04d}_0000.nii.gz"
                                                                        for n in (1, 2, 3)]
    with pytest.raises(ConversionError, match="already used"):  # same id, other dataset name
        run_conversion(LiTSConverter(str(root)), 931, num_processes=1)
    assert _no_leftovers(private_nnunet_dirs["nnUNet_raw"])


@pytest.fixture(scope="module")
def nih_bad_source(tmp_path_factory):
    """Two good cases and one case of each kind of bad input."""
    root = tmp_path_factory.mktemp("nih_bad")
    dicom, labels = synthetic.make_nih_pancreas(root, case_numbers=(1, 2, 3, 4, 5, 6, 7, 8), withdrawn=(70,))
    (labels / "label0003.nii.gz").unlink()                                            # image without label
    for f in (dicom / "PANCREAS_0004").rglob("*.dcm"):                                # label without image
        f.unlink()
    series_folder = next(p.parent for p in (dicom / "PANCREAS_0005").rglob("1-001.dcm"))
    (series_folder / "1-007.dcm").write_bytes(b"not a dicom file")                    # corrupt DICOM
    truncated = (series_folder / "1-010.dcm").read_bytes()
    (series_folder / "1-010.dcm").write_bytes(truncated[:len(truncated) // 2])        # truncated DICOM
    next((dicom / "PANCREAS_0008").rglob("1-008.dcm")).unlink()                       # missing slice
    synthetic.write_dicom_series(synthetic.to_image(synthetic.phantom((4, 48, 40), 1, 9)[0]),
                                 dicom / "PANCREAS_0006" / "study" / "scout")         # several series
    shifted = sitk.ReadImage(str(labels / "label0007.nii.gz"))                        # geometry mismatch
    shifted.SetOrigin(np.add(shifted.GetOrigin(), (0, 0, 30.0)).tolist())
    sitk.WriteImage(shifted, str(labels / "label0007.nii.gz"))
    return root, dicom, labels


EXPECTED_PROBLEMS = {"PANCREAS_0003": "image without label", "PANCREAS_0004": "label without image",
                     "PANCREAS_0005": "not readable DICOM", "PANCREAS_0006": "several DICOM series",
                     "PANCREAS_0007": "different physical regions", "PANCREAS_0008": "size differs"}


def test_bad_cases_stop_before_writing_and_skip_bad_converts_the_rest(private_nnunet_dirs, nih_bad_source):
    root, dicom, labels = nih_bad_source
    raw = private_nnunet_dirs["nnUNet_raw"]
    with pytest.raises(BadCasesError) as err:
        run_conversion(NIHPancreasConverter(str(root), str(labels)), 932, num_processes=1)
    problems = {p.identifier: p.reason for p in err.value.report.problems}
    assert sorted(problems) == sorted(EXPECTED_PROBLEMS)
    for case_id, reason in EXPECTED_PROBLEMS.items():
        assert reason in problems[case_id], (case_id, problems[case_id])
    assert "origin" in problems["PANCREAS_0007"] and problems["PANCREAS_0007"].count("size (40, 48, 16)") == 2
    assert "1-007.dcm" in problems["PANCREAS_0005"] and "1-010.dcm" in problems["PANCREAS_0005"]
    assert "scout" in problems["PANCREAS_0006"]
    text = err.value.report.format()
    assert "Nothing was written" in text and "PANCREAS_0070 skipped as expected" in text
    assert not list(raw.glob("Dataset932_*")) and _no_leftovers(raw)

    report = run_conversion(NIHPancreasConverter(str(root), str(labels)), 932, skip_bad=True, num_processes=1)
    assert report.converted["train"] == ["PANCREAS_0001", "PANCREAS_0002"]
    assert sorted(p.identifier for p in report.problems) == sorted(EXPECTED_PROBLEMS)
    manifest = json.loads((raw / "Dataset932_NIHPancreas" / MANIFEST_NAME).read_text())
    assert sorted(case for case, reason in manifest["skipped"]) == sorted(EXPECTED_PROBLEMS)
    assert "Skipped cases (6)" in report.format()


def test_nih_cli_exit_codes(private_nnunet_dirs, nih_source, nih_bad_source, capsys):
    root, dicom, labels = nih_source
    args = ["-i", str(root), "--labels", str(labels), "-d", "933", "-np", "1"]
    assert nih_main(args) == 0
    assert nih_main(args) == 0 and "up to date" in capsys.readouterr().out
    assert nih_main(args + ["--paper-splits"]) == 2 and "--overwrite" in capsys.readouterr().err
    bad_root, _, bad_labels = nih_bad_source
    assert nih_main(["-i", str(bad_root), "--labels", str(bad_labels), "-d", "934", "-np", "1"]) == 1
    assert "PANCREAS_0005" in capsys.readouterr().err
    assert nih_main(args + ["--geometry-tolerance", "0.7"]) == 2


# ------------------------------------------------------------------ real DICOM series + y-flipped organ label
def _independently_resampled(label: sitk.Image, image: sitk.Image) -> np.ndarray:
    """Label value at each image voxel centre, by mapping index -> world -> label index with plain numpy."""
    size = image.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1).reshape(-1, 3).astype(float)
    world = np.asarray(image.GetOrigin()) + (idx * image.GetSpacing()) @ np.reshape(image.GetDirection(), (3, 3)).T
    to_label = np.linalg.inv(np.reshape(label.GetDirection(), (3, 3)) * np.asarray(label.GetSpacing()))
    label_idx = np.rint((world - label.GetOrigin()) @ to_label.T).astype(int)  # (x, y, z) indices
    values = sitk.GetArrayFromImage(label)[label_idx[:, 2], label_idx[:, 1], label_idx[:, 0]]
    return values.reshape(size).transpose(2, 1, 0)  # back to numpy (z, y, x)


@pytest.fixture(scope="module")
def real_nih_layout(shared_data, tmp_path_factory):
    """The real series as PANCREAS_0001 (symlink, no copy) and a binary label from the flipped organ map."""
    root = tmp_path_factory.mktemp("real_nih")
    (root / "Pancreas-CT" / "PANCREAS_0001").mkdir(parents=True)
    os.symlink(shared_data / "real_ct" / "dicom_series", root / "Pancreas-CT" / "PANCREAS_0001" / "series")
    organs = sitk.ReadImage(str(shared_data / "real_ct" / "dicom_series_organs.nii.gz"))
    assert organs.GetDirection()[4] == -1  # the situation under test: y stored flipped
    binary = sitk.Cast(organs > 0, sitk.sitkUInt8)
    (root / "labels").mkdir()
    sitk.WriteImage(binary, str(root / "labels" / "label0001.nii.gz"))
    return root, binary


def test_real_series_label_overlays_image(private_nnunet_dirs, shared_data, real_nih_layout):
    root, binary = real_nih_layout
    report = run_conversion(NIHPancreasConverter(str(root), str(root / "labels")), 935, num_processes=1)
    target = private_nnunet_dirs["nnUNet_raw"] / "Dataset935_NIHPancreas"
    assert report.converted["train"] == ["PANCREAS_0001"]
    image = sitk.ReadImage(str(target / "imagesTr" / "PANCREAS_0001_0000.nii.gz"))
    label = sitk.ReadImage(str(target / "labelsTr" / "PANCREAS_0001.nii.gz"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(shared_data / "real_ct" / "dicom_series")))
    plain = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(plain))  # HU kept
    assert image.GetPixelID() == sitk.sitkInt16 and sitk.GetArrayViewFromImage(image).min() < -900
    for key in ("GetOrigin", "GetSpacing", "GetDirection", "GetSize"):
        np.testing.assert_allclose(getattr(label, key)(), getattr(image, key)(), atol=1e-4)
    expected = _independently_resampled(binary, image)
    converted = sitk.GetArrayFromImage(label)
    assert expected.sum() > 1000
    np.testing.assert_array_equal(converted, expected)
    # the raw flipped array does NOT overlay: the check above is meaningful
    assert (sitk.GetArrayFromImage(binary) != converted).sum() > 1000


def test_real_series_refuses_label_from_other_space(private_nnunet_dirs, real_nih_layout, tmp_path):
    root, binary = real_nih_layout
    moved = sitk.Image(binary)
    moved.SetOrigin(np.add(binary.GetOrigin(), (0, 0, 10.0)).tolist())
    (tmp_path / "labels").mkdir()
    sitk.WriteImage(moved, str(tmp_path / "labels" / "label0001.nii.gz"))
    with pytest.raises(BadCasesError) as err:
        run_conversion(NIHPancreasConverter(str(root), str(tmp_path / "labels")), 936, num_processes=1)
    (problem,) = err.value.report.problems
    assert problem.identifier == "PANCREAS_0001" and "different physical regions" in problem.reason
    assert "image: size (512, 512, 20)" in problem.reason and "label label0001.nii.gz: size" in problem.reason


# ------------------------------------------------------------------ LiTS
def test_lits_tumour_only_and_paper_split(private_nnunet_dirs, tmp_path):
    synthetic.make_lits(tmp_path, case_numbers=(0, 1, 2, 3))
    (tmp_path / "Training Batch 1" / "volume-9.nii").write_bytes(
        (tmp_path / "Training Batch 1" / "volume-0.nii").read_bytes())  # image without label
    with pytest.raises(BadCasesError, match="LiTS_009: image without label"):
        run_conversion(LiTSConverter(str(tmp_path)), 937, num_processes=1)
    report = run_conversion(LiTSConverter(str(tmp_path), tumor_only=True, paper_split=True, num_test_cases=2),
                            937, skip_bad=True, num_processes=1)
    target = private_nnunet_dirs["nnUNet_raw"] / "Dataset937_LiTSTumour"
    assert len(report.converted["train"]) + len(report.converted["test"]) == 4
    assert sorted(report.converted["train"] + report.converted["test"]) == [f"LiTS_{i:03d}" for i in range(4)]
    assert json.loads((target / "dataset.json").read_text())["labels"] == {"background": 0, "tumour": 1}
    for case in report.converted["test"]:
        assert (target / "imagesTs" / f"{case}_0000.nii.gz").is_file()
        n = int(case[-3:])
        np.testing.assert_array_equal(_array(target / "labelsTs" / f"{case}.nii.gz"),
                                      (synthetic.phantom((12, 40, 40), 2, n)[1] == 2).astype(np.uint8))
    assert len(list((target / "imagesTr").iterdir())) == len(report.converted["train"])


def test_lits_full_labels_and_bad_label_values(private_nnunet_dirs, tmp_path):
    synthetic.make_lits(tmp_path, case_numbers=(0, 1))
    seg = sitk.ReadImage(str(tmp_path / "Training Batch 1" / "segmentation-1.nii"))
    sitk.WriteImage(seg * 3, str(tmp_path / "Training Batch 1" / "segmentation-1.nii"))  # values 0, 3, 6
    raw = private_nnunet_dirs["nnUNet_raw"]
    with pytest.raises(BadCasesError, match="LiTS_001: label values"):  # found while writing: all rolled back
        run_conversion(LiTSConverter(str(tmp_path)), 938, num_processes=1)
    assert not list(raw.glob("Dataset938_*")) and _no_leftovers(raw)
    with pytest.raises(ConversionError, match="tolerance"):
        LiTSConverter(str(tmp_path), geometry_tolerance=0.6)
    report = run_conversion(LiTSConverter(str(tmp_path)), 938, skip_bad=True, num_processes=1)
    assert report.converted["train"] == ["LiTS_000"]
    assert "label values [3, 6] are not among the expected [0, 1, 2]" in report.problems[0].reason
    target = private_nnunet_dirs["nnUNet_raw"] / "Dataset938_LiTS"
    np.testing.assert_array_equal(_array(target / "labelsTr" / "LiTS_000.nii.gz"),
                                  synthetic.phantom((12, 40, 40), 2, 0)[1])


# ------------------------------------------------------------------ MSD
def test_msd_brain_tumour_all_channels_and_edema_setting(private_nnunet_dirs, tmp_path):
    task = synthetic.make_msd(tmp_path, "Task01_BrainTumour", case_numbers=(1, 2, 3), test_numbers=(4,))
    report = run_conversion(MSDConverter(str(task)), 939, num_processes=1)
    target = private_nnunet_dirs["nnUNet_raw"] / "Dataset939_BrainTumour"
    assert report.converted["test"] == ["BRATS_004"]
    assert len(list((target / "imagesTr").iterdir())) == 12 and len(list((target / "imagesTs").iterdir())) == 4
    dataset_json = json.loads((target / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    image, label = synthetic.phantom((12, 32, 32), 3, 2)
    np.testing.assert_array_equal(_array(target / "imagesTr" / "BRATS_002_0002.nii.gz"), image + 200)

    report = run_conversion(MSDConverter(str(task), brats_edema_t1gd=True, paper_split=True, num_test_cases=1),
                            940, num_processes=1)
    target = private_nnunet_dirs["nnUNet_raw"] / "Dataset940_BrainTumourEdemaT1Gd"
    assert len(report.converted["train"]) == 2 and len(report.converted["test"]) == 1  # MSD imagesTs left out
    dataset_json = json.loads((target / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "t1gd"}
    assert dataset_json["labels"] == {"background": 0, "edema": 1}
    case = report.converted["train"][0]
    image, label = synthetic.phantom((12, 32, 32), 3, int(case[-3:]))
    np.testing.assert_array_equal(_array(target / "imagesTr" / f"{case}_0000.nii.gz"), image + 200)
    np.testing.assert_array_equal(_array(target / "labelsTr" / f"{case}.nii.gz"), (label == 1).astype(np.uint8))
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz"
                                                                        for c in report.converted["train"]]


def test_msd_ct_tasks_and_wrong_options(private_nnunet_dirs, tmp_path):
    for i, task in enumerate(("Task03_Liver", "Task07_Pancreas", "Task09_Spleen")):
        folder = synthetic.make_msd(tmp_path, task, case_numbers=(1, 2), test_numbers=())
        report = run_conversion(MSDConverter(str(folder)), 941 + i, num_processes=1)
        target = private_nnunet_dirs["nnUNet_raw"] / f"Dataset{941 + i}_{task.split('_')[1]}"
        dataset_json = json.loads((target / "dataset.json").read_text())
        assert dataset_json["channel_names"] == {"0": "CT"} and dataset_json["numTraining"] == 2
        prefix = synthetic.MSD_TASKS[task]["prefix"]
        np.testing.assert_array_equal(_array(target / "labelsTr" / f"{prefix}_001.nii.gz"),
                                      synthetic.phantom((12, 32, 32), len(dataset_json["labels"]) - 1, 1)[1])
    with pytest.raises(ConversionError, match="Task01_BrainTumour"):
        MSDConverter(str(tmp_path / "Task07_Pancreas"), brats_edema_t1gd=True)
    with pytest.raises(ConversionError, match="--paper-split"):
        MSDConverter(str(tmp_path / "Task03_Liver"), paper_split=True)
    with pytest.raises(ConversionError, match="not an MSD task folder"):
        MSDConverter(str(tmp_path))


# ------------------------------------------------------------------ FLARE22
def test_flare22_labelled_unlabelled_and_validation(private_nnunet_dirs, tmp_path):
    synthetic.make_flare22(tmp_path, labeled=(1, 2), unlabeled=(1, 2, 3), validation=(1, 2))
    assert flare22_main(["-i", str(tmp_path), "-d", "944", "-np", "1", "--write-unlabeled"]) == 0
    target = private_nnunet_dirs["nnUNet_raw"] / "Dataset944_FLARE22"
    dataset_json = json.loads((target / "dataset.json").read_text())
    assert len(dataset_json["labels"]) == 14 and dataset_json["labels"]["left kidney"] == 13
    assert dataset_json["numTraining"] == 2
    assert sorted(p.name for p in (target / "imagesTs").iterdir()) == ["FLARE22_Ts_0001_0000.nii.gz",
                                                                       "FLARE22_Ts_0002_0000.nii.gz"]
    unlabeled = json.loads((target / UNLABELED_LIST).read_text())
    assert unlabeled["num_unlabeled"] == 3
    for case_id, entry in unlabeled["cases"].items():
        assert (target / entry["file"]).is_file() and Path(entry["source"]).is_file()
    np.testing.assert_array_equal(_array(target / "labelsTr" / "FLARE22_Tr_0002.nii.gz"),
                                  synthetic.phantom((12, 32, 32), 13, 2)[1])

    report = run_conversion(FLARE22Converter(str(tmp_path)), 945, num_processes=1)  # list only
    target = private_nnunet_dirs["nnUNet_raw"] / "Dataset945_FLARE22"
    assert not (target / "imagesUnlabeled").exists() and len(report.converted["unlabeled"]) == 3
    entries = json.loads((target / UNLABELED_LIST).read_text())["cases"]
    assert all(e["file"] is None for e in entries.values()) and "FLARE22_Un_00002" in entries


def test_flare22_refuses_rgb_images_before_writing(private_nnunet_dirs, tmp_path):
    """An RGB (3-component) file given as CT would be written as a vector image: refused, naming the case."""
    synthetic.make_flare22(tmp_path, labeled=(1, 2), unlabeled=(1,), validation=())
    image_path = next(tmp_path.rglob("FLARE22_Tr_0002_0000.nii.gz"))
    grey = sitk.ReadImage(str(image_path))
    rgb = sitk.Compose([sitk.Cast(grey, sitk.sitkUInt8)] * 3)
    rgb.CopyInformation(grey)
    sitk.WriteImage(rgb, str(image_path))
    raw = private_nnunet_dirs["nnUNet_raw"]
    with pytest.raises(BadCasesError) as err:
        run_conversion(FLARE22Converter(str(tmp_path)), 946, num_processes=1)
    problems = {p.identifier: p.reason for p in err.value.report.problems}
    assert list(problems) == ["FLARE22_Tr_0002"] and "3 components per voxel" in problems["FLARE22_Tr_0002"]
    assert not list(raw.glob("Dataset946_*")) and _no_leftovers(raw)


# ------------------------------------------------------------------ interruptions
def test_truncated_msd_json_killed_conversion_and_stale_temporaries(private_nnunet_dirs, tmp_path):
    """A cut dataset.json is a clear error; SIGTERM during a conversion leaves no temporary folder (exit 130);
    a temporary folder of a process that no longer runs (SIGKILL) is removed by the next conversion."""
    import signal
    import subprocess
    import sys
    import time
    folder = synthetic.make_msd(tmp_path, "Task09_Spleen", case_numbers=(1, 2), test_numbers=())
    good = (folder / "dataset.json").read_text()
    (folder / "dataset.json").write_text(good[:len(good) // 2])
    with pytest.raises(ConversionError, match="not valid JSON"):
        MSDConverter(str(folder))
    (folder / "dataset.json").write_text(good)
    raw = private_nnunet_dirs["nnUNet_raw"]
    stale = raw / ".Dataset946_Spleen.tmp-999999999"  # no such process
    (stale / "imagesTr").mkdir(parents=True)
    run_conversion(MSDConverter(str(folder)), 946, num_processes=1)
    assert not stale.exists() and _no_leftovers(raw)
    # SIGTERM while converting: a slow converter (sleeps per case) in a subprocess
    code = ("import sys, time; from nnunetv2_ext.dataset_conversion import msd\n"
            "orig = msd.MSDConverter.convert_case\n"
            "def slow(self, case, folder):\n    orig(self, case, folder); time.sleep(30)\n"
            "msd.MSDConverter.convert_case = slow\n"
            f"sys.exit(msd.main(['-i', {str(folder)!r}, '-d', '947', '-np', '1']))\n")
    p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, nnUNet_raw=str(raw)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(raw.glob(".Dataset947_*")) and time.time() < deadline:
        time.sleep(0.2)
    assert list(raw.glob(".Dataset947_*")), "the conversion did not start"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Interrupted" in err and "Traceback" not in err, err
    assert not list(raw.glob("*Dataset947*"))
