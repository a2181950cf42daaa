"""Folder evaluation, comparison, reports and command lines on small synthetic cases written as NIfTI files;
and the 12-loss pancreas predictions of ../shared/data on a subset (6 cases, 3 methods)."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext.evaluation import (EvaluationInputError, compare_folders, evaluate_folders,
                                     format_markdown_table, mask_metrics)
from nnunetv2_ext.evaluation.cli import compare_main, evaluate_main
from nnunetv2_ext.evaluation.sitk_reference import reference_metrics
from nnunetv2_ext.evaluation.summary import bootstrap_interval, compare_paired, describe, worst_fraction_mean

SPACING_XYZ = (0.8, 0.9, 2.5)  # ITK order; array (z, y, x) spacing is (2.5, 0.9, 0.8)
SHAPE = (16, 24, 28)


def _write(array, path, spacing=SPACING_XYZ, origin=(10.0, -5.0, 3.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def _case(seed):
    """Label map with a kidney-like blob (1) and a small lesion (2) inside it."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE)
    centre = np.array(SHAPE) / 2 + rng.uniform(-2, 2, 3)
    radius = ((z - centre[0]) * 2.5) ** 2 + ((y - centre[1]) * 0.9) ** 2 + ((x - centre[2]) * 0.8) ** 2
    seg = np.zeros(SHAPE, np.uint8)
    seg[radius < rng.uniform(30, 60) ** 2 / 9] = 1
    seg[radius < 4.0 ** 2] = 2
    return seg


def _prediction(seg, shift, drop_lesion=False):
    pred = np.roll(seg, shift, axis=2)
    if drop_lesion:
        pred[pred == 2] = 1
    return pred


@pytest.fixture()
def folders(tmp_path):
    """references/ and two prediction folders (good: shift 1 voxel; bad: shift 3 and a missed lesion in case_2)."""
    ref, good, bad = (tmp_path / n for n in ("references", "good", "bad"))
    for f in (ref, good, bad):
        f.mkdir()
    for i in range(4):
        seg = _case(i)
        _write(seg, ref / f"case_{i}.nii.gz")
        _write(_prediction(seg, 1), good / f"case_{i}.nii.gz")
        _write(_prediction(seg, 3, drop_lesion=i == 2), bad / f"case_{i}.nii.gz")
    dataset_json = {"labels": {"background": 0, "organ": 1, "lesion": 2}, "file_ending": ".nii.gz",
                    "channel_names": {"0": "CT"}, "numTraining": 4}
    (tmp_path / "dataset.json").write_text(json.dumps(dataset_json))
    return tmp_path


def test_evaluate_folders_matches_per_mask_metrics(folders):
    result = evaluate_folders(folders / "references", folders / "bad", folders / "dataset.json", num_processes=1,
                              progress=False)
    assert result.cases == [f"case_{i}" for i in range(4)]
    assert [s.name for s in result.labels] == ["organ", "lesion"]
    seg = _case(2)
    pred = _prediction(seg, 3, drop_lesion=True)
    expected = mask_metrics(seg == 2, pred == 2, (2.5, 0.9, 0.8))
    assert result.per_case["case_2"]["2"]["DSC"] == 0.0 == expected["DSC"]
    assert math.isnan(result.per_case["case_2"]["2"]["HD95"])  # missed lesion: distance undefined
    for i in range(4):  # the files' geometry reaches the metrics in array order (z, y, x) = (2.5, 0.9, 0.8) mm
        seg = _case(i)
        expected = mask_metrics(seg == 1, _prediction(seg, 3, drop_lesion=i == 2) == 1, (2.5, 0.9, 0.8))
        for metric in ("DSC", "HD95", "ASSD", "NSD", "vol_ref_ml"):
            assert result.per_case[f"case_{i}"]["1"][metric] == pytest.approx(expected[metric])
    summary = result.summary()
    assert summary["2"]["HD95"]["n_undefined"] == 1 and summary["2"]["HD95"]["undefined_cases"] == ["case_2"]
    assert summary["2"]["DSC"]["worst_cases"][0] == ["case_2", 0.0]
    table = format_markdown_table({"bad": result}, metrics=("DSC", "HD95"))
    assert "| bad | organ | 4 |" in table and "(1 missed)" in table
    # the missed lesion heads the HD95 worst cases although its HD95 is undefined
    assert summary["2"]["HD95"]["missed_cases"] == ["case_2"] and summary["2"]["HD95"]["worst_cases"][0] == ["case_2",
                                                                                                           None]


def test_regions_ignore_label_and_inferred_labels(folders, tmp_path):
    dj = {"labels": {"background": 0, "whole": [1, 2], "lesion": 2, "ignore": 3}, "regions_class_order": [1, 2],
          "file_ending": ".nii.gz"}
    ref_dir = tmp_path / "ref_ignore"
    ref_dir.mkdir()
    seg = _case(0)
    seg_ignored = seg.copy()
    seg_ignored[:, :, :4] = 3
    _write(seg_ignored, ref_dir / "case_0.nii.gz")
    pred_dir = tmp_path / "pred_ignore"
    pred_dir.mkdir()
    pred = seg.copy()
    pred[:, :, :4] = 1  # wrong only where the reference is ignored
    _write(pred, pred_dir / "case_0.nii.gz")
    result = evaluate_folders(ref_dir, pred_dir, dj, num_processes=1, progress=False)
    assert [s.key for s in result.labels] == ["(1, 2)", "2"]
    assert result.per_case["case_0"]["(1, 2)"]["DSC"] == 1.0
    assert result.settings["ignore_label"] == 3
    os.remove(folders / "dataset.json")  # nothing to find: labels come from the references
    inferred = evaluate_folders(folders / "references", folders / "good", num_processes=2, progress=False)
    assert inferred.settings["labels_inferred"] and [s.key for s in inferred.labels] == ["1", "2"]


def test_errors_name_the_case(folders):
    bad_geometry = folders / "bad_geometry"
    shutil.copytree(folders / "good", bad_geometry)
    _write(_case(1), bad_geometry / "case_1.nii.gz", spacing=(0.8, 0.9, 3.0))
    with pytest.raises(EvaluationInputError, match="case_1.*spacing"):
        evaluate_folders(folders / "references", bad_geometry, num_processes=1, progress=False)
    result = evaluate_folders(folders / "references", bad_geometry, num_processes=1, skip_bad_cases=True,
                              progress=False)
    assert result.cases == ["case_0", "case_2", "case_3"] and "spacing" in result.skipped["case_1"]

    missing = folders / "missing"
    shutil.copytree(folders / "good", missing)
    os.remove(missing / "case_3.nii.gz")
    with pytest.raises(EvaluationInputError, match="case_3: no prediction"):
        evaluate_folders(folders / "references", missing, num_processes=1, progress=False)

    unknown = folders / "unknown"
    shutil.copytree(folders / "good", unknown)
    seg = _case(0)
    seg[0, 0, 0] = 7
    _write(seg, unknown / "case_0.nii.gz")
    with pytest.raises(EvaluationInputError, match="case_0: the prediction holds labels \\[7\\]"):
        evaluate_folders(folders / "references", unknown, folders / "dataset.json", num_processes=1, progress=False)
    with pytest.raises(EvaluationInputError, match="labels \\[5\\] are not in dataset.json"):
        evaluate_folders(folders / "references", folders / "good", folders / "dataset.json", labels=[5],
                         num_processes=1, progress=False)


def test_nnunet_result_folders(folders):
    """A trainer folder pools its folds' validation predictions; a fold folder is evaluated on its cases only."""
    trainer = folders / "nnUNetTrainerX__nnUNetPlans__3d_fullres"
    for fold, cases in ((0, (0, 1)), (1, (2, 3))):
        (trainer / f"fold_{fold}" / "validation").mkdir(parents=True)
        for i in cases:
            shutil.copy(folders / "good" / f"case_{i}.nii.gz", trainer / f"fold_{fold}" / "validation")
    shutil.copy(folders / "dataset.json", trainer)
    (trainer / "fold_all" / "validation").mkdir(parents=True)  # trained on all cases: never pooled
    shutil.copy(folders / "bad" / "case_0.nii.gz", trainer / "fold_all" / "validation")
    pooled = evaluate_folders(folders / "references", trainer, num_processes=1, progress=False)
    assert pooled.cases == [f"case_{i}" for i in range(4)] and pooled.labels[1].name == "lesion"
    fold = evaluate_folders(folders / "references", trainer / "fold_1", num_processes=1, progress=False)
    assert fold.cases == ["case_2", "case_3"] and fold.settings["single_fold_folder"]
    results = compare_folders(folders / "references", [trainer, folders / "bad"], num_processes=1, progress=False)
    assert list(results) == ["nnUNetTrainerX", "bad"]


def test_2d_png_images_through_nnunet_reader(tmp_path):
    """nnU-Net reads PNG label maps as 1 x H x W with a dummy spacing; they are evaluated as 2D images."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    ref = np.zeros((40, 50), np.uint8)
    ref[10:30, 10:30] = 1
    pred = np.roll(ref, 2, axis=1)
    sitk.WriteImage(sitk.GetImageFromArray(ref), str(ref_dir / "img_0.png"))
    sitk.WriteImage(sitk.GetImageFromArray(pred), str(pred_dir / "img_0.png"))
    result = evaluate_folders(ref_dir, pred_dir, num_processes=1, progress=False)
    assert result.settings["reader"] == "NaturalImage2DIO"
    metrics = result.per_case["img_0"]["1"]
    assert metrics["DSC"] == pytest.approx(2 * 18 * 20 / 800) and metrics["HD95"] == pytest.approx(2.0)
    assert metrics["vol_ref_ml"] == pytest.approx(400 / 1000)  # 2D: pixel area 1 x 1, not the dummy 999 slice


def test_summary_statistics_by_hand():
    values = [0.9, 0.5, float("nan"), 0.7, 0.8]
    d = describe(values, ["a", "b", "c", "d", "e"], "DSC", worst_k=2, worst_fraction=0.5)
    assert d["mean"] == pytest.approx(0.725) and d["std"] == pytest.approx(np.std([0.9, 0.5, 0.7, 0.8], ddof=1))
    assert (d["min"], d["max"], d["median"]) == (0.5, 0.9, 0.75)
    assert d["worst_cases"] == [["b", 0.5], ["d", 0.7]] and d["undefined_cases"] == ["c"]
    assert d["worst_fraction_mean"] == pytest.approx(0.6)  # worst 2 of 4
    assert worst_fraction_mean([1.0, 9.0, 3.0], "HD95", 0.5) == pytest.approx(6.0)  # HD95: the largest are worst
    assert worst_fraction_mean([-5.0, 1.0, 2.0], "vol_diff_ml", 0.1) == pytest.approx(-5.0)


def test_paired_comparison_and_bootstrap():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.9, 40)
    better = base + 0.05
    better[:3] -= 0.1  # three cases got worse
    cases = [f"c{i}" for i in range(40)]
    p = compare_paired(base, better, cases, "DSC", n_resamples=500)
    assert (p["n_improved"], p["n_worse"], p["n_equal"]) == (37, 3, 0)
    assert p["most_worsened"][0][1] == pytest.approx(-0.05) and p["most_worsened"][0][0] in cases[:3]
    lo, hi = p["mean_diff_ci95"]
    assert lo < p["mean_diff"] < hi and lo > 0
    assert bootstrap_interval(lambda x, axis: x.mean(axis=axis), base, n_resamples=500) == \
        bootstrap_interval(lambda x, axis: x.mean(axis=axis), base, n_resamples=500)  # seeded
    hd = compare_paired([2.0, 4.0], [1.0, 5.0], ["a", "b"], "HD95", n_resamples=100)
    assert hd["n_improved"] == 1 and hd["most_improved"] == [["a", -1.0]]


def test_command_lines_write_reports(folders, tmp_path, capsys):
    out = tmp_path / "eval_report"
    assert evaluate_main([str(folders / "references"), str(folders / "bad"), "-djfile", str(folders / "dataset.json"),
                          "-o", str(out), "-np", "1", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["2"]["HD95"]["n_undefined"] == 1
    assert summary["per_case"]["case_2"]["2"]["HD95"] is None  # NaN -> null in JSON
    assert (out / "per_case.csv").read_text().count("\n") == 1 + 4 * 2
    assert "mean ± std [min, max]" in (out / "summary.md").read_text()

    cmp_out = tmp_path / "cmp_report"
    assert compare_main([str(folders / "references"), str(folders / "good"), str(folders / "bad"), "--names", "A", "B",
                         "-o", str(cmp_out), "-np", "1", "--no-progress", "--n-bootstrap", "200"]) == 0
    comparison = json.loads((cmp_out / "comparison.json").read_text())["comparison"]
    dsc = comparison["labels"]["1"]["metrics"]["DSC"]
    assert dsc["vs_baseline"]["B"]["n_worse"] == 4 and dsc["methods"]["A"]["mean"] > dsc["methods"]["B"]["mean"]
    differences = [r.split(",") for r in (cmp_out / "paired_differences.csv").read_text().splitlines()]
    dsc_rows = [r for r in differences[1:] if r[1] == "1" and r[2] == "DSC"]
    assert len(dsc_rows) == 4 and all(r[0] == "B" and r[7] == "worse" for r in dsc_rows)
    assert float(dsc_rows[0][6]) == pytest.approx(float(dsc_rows[0][5]) - float(dsc_rows[0][4]))
    summary_rows = (cmp_out / "summary.csv").read_text().splitlines()
    assert summary_rows[0].startswith("method,label,label_name,metric,n,n_undefined,mean,std")
    assert any(r.startswith("B,2,2,HD95,3,1,") for r in summary_rows)  # B misses the lesion of case_2
    png = cmp_out / "comparison_1.png"
    assert png.stat().st_size > 10000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "| B |" in capsys.readouterr().out

    # bad input: clear message, exit code 2, nothing written
    err_out = tmp_path / "not_written"
    assert compare_main([str(folders / "references"), str(folders / "good"), "-o", str(err_out)]) == 2
    assert evaluate_main([str(folders / "references"), str(tmp_path / "nope"), "-o", str(err_out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not err_out.exists()


def test_pancreas_predictions_subset(shared_data, tmp_path):
    """Real data: 6 of the 48 MSD pancreas cases, 3 of the 12 losses, through the compare command; per-case values
    cross-checked against the SimpleITK reference implementation."""
    source = shared_data / "msd_pancreas_predictions"
    cases = sorted(os.listdir(source / "ground_truth"))[:6]
    folders = {}
    for name in ("ground_truth", "predictions/DiceCE", "predictions/DiceHD", "predictions/WCE"):
        folders[name] = tmp_path / name.replace("/", "_")
        folders[name].mkdir()
        for c in cases:
            os.symlink(source / name / c, folders[name] / c)
    out = tmp_path / "report"
    methods = [str(folders[f"predictions/{m}"]) for m in ("DiceCE", "DiceHD", "WCE")]
    assert compare_main([str(folders["ground_truth"]), *methods, "--names", "DiceCE", "DiceHD", "WCE", "-o", str(out),
                         "-np", "2", "--no-progress", "--n-bootstrap", "200", "--nsd-method", "voxel"]) == 0
    report = json.loads((out / "comparison.json").read_text())["comparison"]["labels"]["1"]["metrics"]
    wce, dice_ce = report["DSC"]["methods"]["WCE"], report["DSC"]["methods"]["DiceCE"]
    assert wce["mean"] < dice_ce["mean"] - 0.2  # WCE is the clearly worst loss (data README: mean DSC 0.48)
    assert report["DSC"]["vs_baseline"]["WCE"]["n_worse"] == 6
    case = cases[0]
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(source / "ground_truth" / case))) == 1
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(source / "predictions" / "WCE" / case))) == 1
    spacing = sitk.ReadImage(str(source / "ground_truth" / case)).GetSpacing()[::-1]
    expected = reference_metrics(ref, pred, spacing)
    rows = [r.split(",") for r in (out / "per_case.csv").read_text().splitlines()]
    header = rows[0]
    row = next(r for r in rows if r[0] == "WCE" and r[1] == case.replace(".nii.gz", ""))
    for metric in ("DSC", "IoU", "HD95", "ASSD", "NSD"):
        assert float(row[header.index(metric)]) == pytest.approx(expected[metric], rel=1e-4), metric
