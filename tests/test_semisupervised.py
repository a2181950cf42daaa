"""Semi-supervised tools (issue 10): consensus score (Eq. 1) by hand, pseudo-label selection and dataset writing,
bad input (exit code 2, nothing written), and the MSD figures of the issue on the real predictions."""
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext.semisupervised.cli import pseudolabel_main
from nnunetv2_ext.semisupervised.consensus import (AgreementCounts, agreement_counts, averaged_from_probabilities,
                                                   consensus_score, soft_vote)
from nnunetv2_ext.semisupervised.errors import PseudoLabelError
from nnunetv2_ext.semisupervised.pseudolabel import CaseScore
from nnunetv2_ext.semisupervised.pseudolabel_run import run_pseudolabel
from nnunetv2_ext.semisupervised.selection import select_cases


# ------------------------------------------------------------------------------------------------ Eq. 1 by hand
def _maps(*masks):
    return np.stack([np.asarray(m, dtype=np.uint8) for m in masks])


def test_slice_score_hand_computed():
    # 2 slices of 1 x 4 voxels, M = 2; averaged = mean >= 0.5 -> union here
    m1 = [[[1, 1, 0, 0]], [[0, 0, 0, 0]]]
    m2 = [[[1, 0, 0, 0]], [[0, 0, 1, 0]]]
    res = consensus_score(_maps(m1, m2), [1])
    np.testing.assert_array_equal(res.averaged, [[[1, 1, 0, 0]], [[0, 0, 1, 0]]])
    # slice 0: DSC(m1, A) = 1, DSC(m2, A) = 2*1/(1+2) = 2/3; slice 1: m1 empty vs A {2} -> 0, m2 = A -> 1
    assert res.score == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)
    assert res.class_scores == {1: pytest.approx((1 + 2 / 3 + 0 + 1) / 4)}
    # volume level: DSC(m1, A) = 2*2/(2+3) = 0.8, DSC(m2, A) = 2*2/(2+3) = 0.8
    assert consensus_score(_maps(m1, m2), [1], "volume").score == pytest.approx(0.8)


def test_pairs_where_both_are_empty_are_left_out():
    # slice 1 is empty for model 1 and for A: that pair does not count; model 2 has a voxel there alone
    m1 = [[[1, 1]], [[0, 0]]]
    m2 = [[[1, 1]], [[0, 1]]]
    m3 = [[[1, 1]], [[0, 0]]]
    res = consensus_score(_maps(m1, m2, m3), [1])
    np.testing.assert_array_equal(res.averaged, [[[1, 1]], [[0, 0]]])
    # informative pairs: slice 0 x 3 models (DSC 1), slice 1 x model 2 (DSC 0); (model 1, slice 1) and
    # (model 3, slice 1) are both-empty pairs
    assert res.score == pytest.approx(3 / 4)
    counts = agreement_counts(_maps(m1, m2, m3), res.averaged, [1])[1]
    np.testing.assert_array_equal(counts.model, [[2, 0], [2, 1], [2, 0]])
    np.testing.assert_array_equal(counts.averaged, [2, 0])


def test_ties_go_to_foreground_and_to_the_lower_label():
    # M = 2: 1 vs 0 -> 1 (mean 0.5 counts as foreground); 1 vs 2 -> 1; 2 vs 0 -> 2
    m1 = [[[1, 1, 2, 0]]]
    m2 = [[[0, 2, 0, 0]]]
    np.testing.assert_array_equal(soft_vote(_maps(m1, m2), [1, 2]), [[[1, 1, 2, 0]]])
    # plurality: 2 votes for label 3 beat 1 + 1 + 1 (M = 5)
    maps = _maps([[[3]]], [[[3]]], [[[1]]], [[[2]]], [[[0]]])
    np.testing.assert_array_equal(soft_vote(maps, [1, 2, 3]), [[[3]]])


def test_multiclass_scores_per_class_and_mean():
    m1 = [[[1, 1, 2, 2]]]
    m2 = [[[1, 1, 2, 0]]]
    m3 = [[[1, 0, 2, 2]]]
    res = consensus_score(_maps(m1, m2, m3), [1, 2, 3])
    np.testing.assert_array_equal(res.averaged, [[[1, 1, 2, 2]]])
    # label 1: A = {0,1}: DSC 1, 1, 2/3 ; label 2: A = {2,3}: 1, 2/3, 1 ; label 3: nobody -> NaN
    assert res.class_scores[1] == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert res.class_scores[2] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert math.isnan(res.class_scores[3])
    assert res.score == pytest.approx((res.class_scores[1] + res.class_scores[2]) / 2)


def test_nothing_predicted_has_no_score():
    res = consensus_score(np.zeros((3, 4, 5, 6), np.uint8), [1])
    assert math.isnan(res.score) and not res.averaged.any()


def test_box_search_matches_brute_force_on_random_label_maps():
    rng = np.random.default_rng(0)
    for trial in range(20):
        num_models, labels = rng.integers(2, 6), list(range(1, rng.integers(2, 6)))
        maps = np.zeros((num_models, 7, 9, 8), np.uint8)
        for c in labels:  # blobs of each class in jittered boxes, so that boxes differ per class
            z, y, x = rng.integers(0, 5), rng.integers(0, 7), rng.integers(0, 6)
            region = (slice(None), slice(z, z + 3), slice(y, y + 3), slice(x, x + 3))
            maps[region] = np.where(rng.random(maps[region].shape) < 0.6, c, maps[region])
        votes = np.stack([(maps == c).sum(0) for c in [0] + labels])
        votes[0] = votes[0] * 2 - 1  # background loses ties: compare 2*votes_c against 2*votes_0 - 1
        votes[1:] *= 2
        expected = np.array([0] + labels)[np.argmax(votes, axis=0)]
        averaged = soft_vote(maps, labels)
        np.testing.assert_array_equal(averaged, expected, err_msg=f"trial {trial}")
        for c, counts in agreement_counts(maps, averaged, labels).items():
            pairs = [(maps[m, k] == c, averaged[k] == c) for m in range(num_models) for k in range(7)]
            dscs = [2 * (p & a).sum() / (p.sum() + a.sum()) for p, a in pairs if p.sum() + a.sum() > 0]
            assert counts.slice_score() == pytest.approx(np.mean(dscs) if dscs else float("nan"), nan_ok=True)


def test_averaged_from_probabilities():
    p = np.zeros((3, 1, 2, 2), np.float32)
    p[0] = 0.5
    p[1, 0, 0, 0], p[2, 0, 1, 1] = 0.9, 0.8
    np.testing.assert_array_equal(averaged_from_probabilities(p, [1, 2]), [[[1, 0], [0, 2]]])
    with pytest.raises(ValueError, match="channels"):
        averaged_from_probabilities(p, [1])


def test_bad_inputs_of_the_core():
    with pytest.raises(ValueError, match="level"):
        consensus_score(np.zeros((2, 3, 3), np.uint8), [1], "case")
    with pytest.raises(ValueError, match="integer"):
        consensus_score(np.zeros((2, 3, 3), np.float32), [1])
    with pytest.raises(ValueError, match="foreground"):
        consensus_score(np.zeros((2, 3, 3), np.uint8), [0, 1])
    assert math.isnan(AgreementCounts(np.zeros((2, 0)), np.zeros((2, 0)), np.zeros(0)).slice_score())


# ------------------------------------------------------------------------------------------------ selection
def test_selection_by_threshold_and_top_fraction():
    scores = [CaseScore(c, s, {}, (1,)) for c, s in (("a", 0.9), ("b", 0.5), ("c", float("nan")), ("d", 0.9),
                                                     ("e", 0.7))]
    assert select_cases(scores, threshold=0.7) == ["a", "d", "e"]
    assert select_cases(scores, top_fraction=0.5) == ["a", "d", "e"]  # ceil(0.5 * 5 cases) = 3, ties by name
    assert select_cases(scores, top_fraction=0.3) == ["a", "d"]
    assert select_cases(scores, top_fraction=1.0) == ["a", "d", "e", "b"]  # NaN never
    for kwargs in ({"threshold": 1.5}, {"threshold": -0.1}, {"top_fraction": 0}, {"top_fraction": 1.2},
                   {"threshold": 0.5, "top_fraction": 0.5}, {}):
        with pytest.raises(PseudoLabelError):
            select_cases(scores, **kwargs)


# ------------------------------------------------------------------------------------------------ CLI on files
def _write(path, array, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(np.asarray(array, dtype=np.uint8))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def predictions(tmp_path):
    """3 model folders x 3 cases (8 x 10 x 10), model masks a shifted cube; case_2 disagrees strongly."""
    folders = []
    for m in range(3):
        folder = tmp_path / f"model_{m}"
        folder.mkdir()
        for i in range(3):
            seg = np.zeros((8, 10, 10), np.uint8)
            shift = m * (1 + 2 * (i == 2))
            seg[2:6, 2 + shift:6 + shift, 3:7] = 1
            _write(folder / f"case_{i}.nii.gz", seg)
        folders.append(folder)
    return folders


def test_cli_scores_plain_folders_labels_inferred(predictions, tmp_path):
    out = tmp_path / "out"
    assert pseudolabel_main([*map(str, predictions), "-o", str(out), "-np", "1", "--no-progress"]) == 0
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0].startswith("case,score,score_1")
    scores = {r.split(",")[0]: float(r.split(",")[1]) for r in rows[1:]}
    assert scores["case_0"] == pytest.approx(scores["case_1"]) and scores["case_2"] < scores["case_0"]
    assert (out / "scores_histogram.png").stat().st_size > 0


def _labelled_dataset(raw, dataset_id, cases=("lab_0", "lab_1")):
    folder = raw / f"Dataset{dataset_id:03d}_Lab"
    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled"):
        (folder / sub).mkdir(parents=True)
    for c in cases:
        _write(folder / "imagesTr" / f"{c}_0000.nii.gz", np.ones((8, 10, 10)))
        _write(folder / "labelsTr" / f"{c}.nii.gz", np.zeros((8, 10, 10)))
    for i in range(3):
        _write(folder / "imagesUnlabeled" / f"case_{i}_0000.nii.gz", np.ones((8, 10, 10)))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0,
                                                     "organ": 1}, "numTraining": len(cases),
                                                     "file_ending": ".nii.gz"}))
    return folder


def test_cli_writes_dataset_with_selected_pseudo_labels(predictions, tmp_path, nnunet_dirs):
    labelled = _labelled_dataset(nnunet_dirs["nnUNet_raw"], 940)
    out = tmp_path / "out"
    args = [*map(str, predictions), "-o", str(out), "--labelled-dataset", "940", "--output-dataset", "941", "-np",
            "1", "--no-progress"]
    assert pseudolabel_main(args + ["--top-fraction", "0.6"]) == 0
    target = nnunet_dirs["nnUNet_raw"] / "Dataset941_LabPseudo"
    assert sorted(p.name for p in (target / "labelsTr").iterdir()) == ["case_0.nii.gz", "case_1.nii.gz",
                                                                       "lab_0.nii.gz", "lab_1.nii.gz"]
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 4
    manifest = json.loads((target / "pseudo_labels.json").read_text())
    assert [s["case"] for s in manifest["selected"]] == ["case_0", "case_1"] and manifest["top_fraction"] == 0.6
    # the pseudo-label is the averaged mask, on the prediction's grid; labelled files are hard links
    label = sitk.ReadImage(str(target / "labelsTr" / "case_0.nii.gz"))
    assert label.GetSpacing() == (1.0, 1.0, 2.0)
    expected = np.zeros((8, 10, 10), np.uint8)
    expected[2:6, 3:7, 3:7] = 1  # models at shifts 0, 1, 2: majority = shift 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), expected)
    assert os.path.samefile(target / "labelsTr" / "lab_0.nii.gz", labelled / "labelsTr" / "lab_0.nii.gz")
    assert (labelled / "imagesUnlabeled" / "case_0_0000.nii.gz").exists()  # linked, not moved
    # the case not selected stays unlabelled input of the new dataset (CPS on it: Pham et al., Table 5 rows 3-4)
    assert sorted(p.name for p in (target / "imagesUnlabeled").iterdir()) == ["case_2_0000.nii.gz"]
    assert manifest["unlabelled_cases"] == ["case_2"]
    assert json.loads((target / "dataset.json").read_text())["pseudo_labels"]["num_unlabelled"] == 1
    from nnunetv2_ext.semisupervised.unlabelled import find_unlabelled_cases
    assert list(find_unlabelled_cases(str(target), json.loads((target / "dataset.json").read_text()),
                                      ["lab_0", "lab_1", "case_0", "case_1"])) == ["case_2"]  # what CPS reads
    # existing output id: refused without --overwrite (exit 2, nothing changed), replaced with it
    before = (target / "pseudo_labels.json").stat().st_mtime_ns
    assert pseudolabel_main(args + ["--top-fraction", "0.6"]) == 2
    assert (target / "pseudo_labels.json").stat().st_mtime_ns == before
    assert pseudolabel_main(args + ["--threshold", "0.8", "--overwrite"]) == 0
    manifest = json.loads((target / "pseudo_labels.json").read_text())
    assert [s["case"] for s in manifest["selected"]] == ["case_0", "case_1"] and manifest["threshold"] == 0.8


@pytest.mark.parametrize("problem, message", [
    ("missing_case", "different cases"), ("geometry", "origin"), ("threshold", "threshold"),
    ("no_labelled", "does not exist"), ("exists", "exists"), ("one_folder", "at least two"),
    ("unknown_label", "labels"), ("no_rule", "threshold or --top-fraction"),
    ("image_size", "image shape (8, 10, 11)"), ("image_spacing", "spacing")])
def test_cli_bad_input_exit_2_nothing_written(predictions, tmp_path, nnunet_dirs, capsys, problem, message):
    raw = nnunet_dirs["nnUNet_raw"]
    if not (raw / "Dataset942_Lab").exists():
        _labelled_dataset(raw, 942)
    folders = list(map(str, predictions))
    extra = ["--labelled-dataset", "942", "--output-dataset", "943", "--threshold", "0.5"]
    if problem == "missing_case":
        os.remove(predictions[1] / "case_1.nii.gz")
    elif problem == "geometry":
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions[2] / "case_2.nii.gz")))
        _write(predictions[2] / "case_2.nii.gz", seg, origin=(5.0, 0.0, 0.0))
    elif problem == "threshold":
        extra[-1] = "1.5"
    elif problem == "no_labelled":
        extra[1] = "948"
    elif problem == "exists":
        (raw / "Dataset943_Other").mkdir(exist_ok=True)
    elif problem == "one_folder":
        folders = folders[:1]
    elif problem == "unknown_label":
        dj = tmp_path / "dataset.json"
        dj.write_text(json.dumps({"labels": {"background": 0, "x": 2}, "file_ending": ".nii.gz"}))
        extra = ["-djfile", str(dj)]
    elif problem == "no_rule":
        extra = extra[:4]
    elif problem in ("image_size", "image_spacing"):  # --images whose grid is not the predictions'
        (tmp_path / "images").mkdir()
        for i in range(3):
            _write(tmp_path / "images" / f"case_{i}_0000.nii.gz",
                   np.ones((8, 10, 11 if problem == "image_size" else 10)),
                   spacing=(1.0, 1.0, 3.0 if problem == "image_spacing" else 2.0))
        extra += ["--images", str(tmp_path / "images")]
    out = tmp_path / "out"
    try:
        assert pseudolabel_main(folders + ["-o", str(out), "-np", "1", "--no-progress"] + extra) == 2
    finally:
        if problem == "exists":
            os.rmdir(raw / "Dataset943_Other")
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert not any(p.name.startswith(("Dataset943", ".Dataset943")) for p in raw.iterdir())


def test_labelled_case_in_predictions_is_refused(predictions, tmp_path, nnunet_dirs):
    _labelled_dataset(nnunet_dirs["nnUNet_raw"], 946, cases=("case_0", "lab_1"))
    with pytest.raises(PseudoLabelError, match="never replaced"):
        run_pseudolabel(list(map(str, predictions)), str(tmp_path / "o"), labelled_dataset=946,
                        output_dataset=947, top_fraction=1.0)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ real data
@pytest.mark.e2e  # reads 12 x 48 real NIfTI files (about 25 s CPU)
def test_msd_figures_of_the_issue(shared_data):
    """Issue 10: on the 48 MSD pancreas cases (12 loss variants = 12 models), slice-wise Eq. 1 ranks the cases by the
    true DSC of the averaged mask with rho 0.43, the volume variant with 0.64; cases above the median slice-wise
    score have true DSC mean/min 0.872/0.738, below 0.831/0.506."""
    from nnunetv2_ext.semisupervised.ranking import ranking_check, summarize
    root = shared_data / "msd_pancreas_predictions"
    models = sorted(p for p in (root / "predictions").iterdir() if p.is_dir())
    assert len(models) == 12
    checks = ranking_check([str(m) for m in models], str(root / "ground_truth"), num_processes=2)
    s = summarize(checks, "slice")
    assert s.n == 48
    assert round(s.spearman_slice, 2) == 0.43 and round(s.spearman_volume, 2) == 0.64
    assert (round(s.above_median_mean, 3), round(s.above_median_min, 3)) == (0.872, 0.738)
    assert (round(s.below_median_mean, 3), round(s.below_median_min, 3)) == (0.831, 0.506)


# ------------------------------------------------------------------------------------------------ self-training plan
def test_self_train_dry_run_prints_the_scale_out_commands(nnunet_dirs, tmp_path, capsys):
    """--dry-run runs nothing and prints nnU-Net's commands: -num_gpus for DDP training, -num_parts/-part_id per GPU
    for the prediction of the unlabelled images."""
    from nnunetv2_ext.semisupervised.self_train import main
    labelled = _labelled_dataset(nnunet_dirs["nnUNet_raw"], 947, cases=("lab_0", "lab_1"))
    base = ["-d", "947", "-c", "3d_fullres", "-o", "949", "-f", "0", "1", "--top-fraction", "0.5", "--work-dir",
            str(tmp_path / "work"), "--dry-run"]
    try:
        assert main(base + ["--gpus", "0", "1"]) == 0
        out = capsys.readouterr().out
        assert "$ nnUNetv2_plan_and_preprocess -d 947 -c 3d_fullres" in out
        assert out.count("$ nnUNetv2_train 947 3d_fullres") == 2
        assert "-num_parts 2 -part_id 0" in out and "-num_parts 2 -part_id 1" in out
        assert "$ nnUNetv2_move_plans_between_datasets -s 947 -t 949" in out
        assert main(base + ["-num_gpus", "4"]) == 0
        assert "-num_gpus 4" in capsys.readouterr().out
        assert main(base + ["-num_gpus", "4", "--gpus", "0"]) == 2  # exclusive
        # checked before any preprocessing (the reliability issue's item 9): a misspelled trainer, a configuration
        # nnU-Net does not have, a fold outside 0-4
        for wrong, message in ((["-tr", "nnUNetTrainr"], "unknown trainer 'nnUNetTrainr'"),
                               (["-c", "2D"], "-c 2D is not a configuration"), (["-f", "0", "9"], "folds ['9']")):
            args = list(base)
            if wrong[0] in args:  # replace the option's value(s)
                i = args.index(wrong[0])
                del args[i:i + (3 if wrong[0] == "-f" else 2)]
            assert main(args + wrong) == 2
            assert message in capsys.readouterr().err
        assert not (tmp_path / "work").exists() and not list(nnunet_dirs["nnUNet_raw"].glob("Dataset949_*"))
    finally:
        import shutil
        shutil.rmtree(labelled)
