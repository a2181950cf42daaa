"""Phantom B (nnunetv2_ext.phantom_b): determinism, organ size and organ-free slices, hard cases, false-positive
material on organ-free slices, an nnU-Net-readable dataset, refusal of bad input (nothing written), overwrite and
interruption, command line. Quick (no nnU-Net training or preprocessing); every dataset goes to pytest's tmp_path."""
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext import phantom_b as pb

N_CASES = 16  # every hard kind once (cases 3, 7, 11, 15)
SMALL = (16, 32, 32)


@pytest.fixture(scope="module")
def cases():
    return [pb.generate_case(0, i) for i in range(N_CASES)]


def _tree(folder: Path):
    """{relative path: sha256} of every file under folder (hidden ones included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ the cases
def test_deterministic_and_seed_dependent():
    for i in (0, 3, 7):
        a_img, a_lab, a_info = pb.generate_case(0, i)
        b_img, b_lab, b_info = pb.generate_case(0, i)
        assert a_img.dtype == np.int16 and a_lab.dtype == np.uint8
        assert a_img.shape == a_lab.shape == pb.DEFAULT_SHAPE
        assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab) and a_info == b_info
        c_img, c_lab, _ = pb.generate_case(1, i)
        assert not np.array_equal(a_img, c_img) and not np.array_equal(a_lab, c_lab)
    # cases of one seed differ from each other
    assert not np.array_equal(pb.generate_case(0, 0)[0], pb.generate_case(0, 1)[0])


def test_organ_small_and_organ_free_slices_at_both_ends(cases):
    Z = pb.DEFAULT_SHAPE[0]
    margin = max(2, math.ceil(0.1 * Z))
    for i, (img, lab, info) in enumerate(cases):
        assert set(np.unique(lab)) == {0, 1}, i
        frac = lab.mean()
        assert 0 < frac < 0.01, (i, frac)
        assert info["organ_fraction"] == pytest.approx(frac)
        zs = np.flatnonzero(lab.reshape(Z, -1).any(1))
        assert list(zs) == list(range(zs[0], zs[-1] + 1)), f"case {i}: organ slices not contiguous"
        assert (info["first_slice"], info["last_slice"]) == (zs[0], zs[-1])
        assert zs[0] >= margin and zs[-1] <= Z - 1 - margin, (i, zs[0], zs[-1])
        assert info["positive_slices"] == len(zs) >= 5
        assert -1024 <= img.min() and img.max() <= 3071
    fr = [c[2]["organ_fraction"] for c in cases]
    sl = [c[2]["positive_slices"] for c in cases]
    assert max(fr) > 1.3 * min(fr) and max(sl) > min(sl)  # natural variation


def test_hard_cases_flagged_and_of_the_documented_kinds(cases):
    assert [pb.case_kind(i) for i in range(8)] == ["normal"] * 3 + ["fatty_atrophic"] + ["normal"] * 3 + [
        "bowel_contact"]
    for i, (_, _, info) in enumerate(cases):
        assert info["hard"] == (i % 4 == 3) and info["kind"] == pb.case_kind(i)
        assert info["kind"] in pb.HARD_KINDS if info["hard"] else info["kind"] == "normal"
    by_kind = {c[2]["kind"]: c[2] for c in cases if c[2]["hard"]}
    assert set(by_kind) == set(pb.HARD_KINDS)
    normal = [c[2] for c in cases if not c[2]["hard"]]
    normal_hu = np.median([n["organ_mean_hu"] for n in normal])
    # fatty/atrophic: a fatty gland, much darker than usual
    assert by_kind["fatty_atrophic"]["organ_mean_hu"] < min(60.0, normal_hu - 25)
    # bowel contact: a long stretch of the organ touches bowel of the organ's HU (no fat plane)
    assert by_kind["bowel_contact"]["organ_voxels_touching_bowel"] >= 40
    assert by_kind["bowel_contact"]["organ_voxels_touching_similar_hu"] >= 40
    # streaks and low dose
    assert by_kind["streak_lowdose"]["noise_sd_hu"] >= 24 > max(n["noise_sd_hu"] for n in normal)
    assert by_kind["streak_lowdose"]["streak_sources"] >= 2
    # displaced: strongly rotated
    assert abs(by_kind["displaced"]["organ_rotation_deg"]) >= 25 > max(abs(n["organ_rotation_deg"]) for n in normal)


def test_organ_free_slices_hold_organ_like_intensities(cases):
    """False positives are possible: the slices without organ hold many voxels in the organ's HU range."""
    for i, (img, lab, info) in enumerate(cases):
        lo, hi = np.percentile(img[lab > 0], [25, 75])
        for block in (img[:info["first_slice"]], img[info["last_slice"] + 1:]):
            n = int(((block >= lo) & (block <= hi)).sum())
            assert n >= 30, (i, lo, hi, n)


# ------------------------------------------------------------------------------------------------ the dataset
def test_dataset_layout_readable_by_nnunet(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    raw = tmp_path / "raw"
    path = pb.write_dataset(990, 4, 2, seed=0, raw_folder=str(raw))
    folder = raw / "Dataset990_PhantomB"
    assert Path(path) == folder and sorted(os.listdir(raw)) == ["Dataset990_PhantomB"]  # no temporary left
    names = [f"PhantomB_{i:03d}" for i in range(6)]
    assert sorted(os.listdir(folder / "imagesTr")) == [f"{n}_0000.nii.gz" for n in names[:4]]
    assert sorted(os.listdir(folder / "labelsTr")) == [f"{n}.nii.gz" for n in names[:4]]
    assert sorted(os.listdir(folder / "imagesTs")) == [f"{n}_0000.nii.gz" for n in names[4:]]
    assert sorted(os.listdir(folder / "labelsTs")) == [f"{n}.nii.gz" for n in names[4:]]
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"} and ds["labels"] == {"background": 0, "organ": 1}
    assert ds["numTraining"] == 4 and ds["file_ending"] == ".nii.gz"
    meta = json.loads((folder / "phantom_cases.json").read_text())
    assert meta["seed"] == 0 and meta["shape"] == list(pb.DEFAULT_SHAPE) and meta["hard_kinds"] == list(pb.HARD_KINDS)
    assert [c["name"] for c in meta["cases"]] == names
    assert [c["split"] for c in meta["cases"]] == ["train"] * 4 + ["test"] * 2
    for c in meta["cases"]:
        i = c["index"]
        assert c["hard"] == (i % 4 == 3) and c["kind"] == pb.case_kind(i)
        sub = "Tr" if c["split"] == "train" else "Ts"
        img = sitk.ReadImage(str(folder / f"images{sub}" / f"{c['name']}_0000.nii.gz"))
        lab = sitk.ReadImage(str(folder / f"labels{sub}" / f"{c['name']}.nii.gz"))
        assert img.GetPixelID() == sitk.sitkInt16 and lab.GetPixelID() == sitk.sitkUInt8
        assert img.GetSize() == (64, 64, 40)  # (x, y, z)
        assert img.GetSpacing() == pytest.approx((1.0, 1.0, 3.0)) == lab.GetSpacing()
        arr = sitk.GetArrayFromImage(lab)
        zs = np.flatnonzero(arr.reshape(arr.shape[0], -1).any(1))
        assert (c["first_slice"], c["last_slice"]) == (zs[0], zs[-1])
        assert c["organ_fraction"] == pytest.approx(arr.mean(), abs=1e-6) and c["organ_fraction"] < 0.01
        ref_img, ref_lab, _ = pb.generate_case(0, i)
        assert np.array_equal(sitk.GetArrayFromImage(img), ref_img) and np.array_equal(arr, ref_lab)
    verify_dataset_integrity(str(folder), num_processes=1)  # raises on problems


def test_dataset_bytes_deterministic(tmp_path):
    kw = dict(shape=SMALL, spacing=(2.5, 0.8, 0.8))
    a = pb.write_dataset(991, 2, 1, seed=3, raw_folder=str(tmp_path / "a"), **kw)
    b = pb.write_dataset(991, 2, 1, seed=3, raw_folder=str(tmp_path / "b"), **kw)
    c = pb.write_dataset(991, 2, 1, seed=4, raw_folder=str(tmp_path / "c"), **kw)
    ta, tb, tc = _tree(Path(a)), _tree(Path(b)), _tree(Path(c))
    assert ta == tb and len(ta) == 8
    assert ta["imagesTr/PhantomB_000_0000.nii.gz"] != tc["imagesTr/PhantomB_000_0000.nii.gz"]
    img = sitk.ReadImage(str(Path(a) / "imagesTs" / "PhantomB_002_0000.nii.gz"))
    assert img.GetSize() == (32, 32, 16) and img.GetSpacing() == pytest.approx((0.8, 0.8, 2.5))


BAD = [
    (dict(dataset_id=0), "dataset_id"),
    (dict(dataset_id=1000), "dataset_id"),
    (dict(dataset_id="5"), "dataset_id"),
    (dict(dataset_id=True), "dataset_id"),
    (dict(num_cases=1), "num_cases"),
    (dict(num_cases=2.0), "num_cases"),
    (dict(num_test=-1), "num_test"),
    (dict(seed=-1), "seed"),
    (dict(shape=(8, 64, 64)), "shape"),
    (dict(shape=(40, 16, 64)), "shape"),
    (dict(shape=(40, 64)), "shape"),
    (dict(spacing=(3.0, 0.0, 1.0)), "spacing"),
    (dict(spacing=(3.0, 1.0, -1.0)), "spacing"),
    (dict(spacing=(float("nan"), 1.0, 1.0)), "spacing"),
    (dict(spacing=(3.0, 1.0)), "spacing"),
    (dict(name="a/b"), "name"),
    (dict(name="a\\b"), "name"),
    (dict(name=".."), "name"),
    (dict(name="x..y"), "name"),
    (dict(name=""), "name"),
    (dict(overwrite="yes"), "overwrite"),
]


@pytest.mark.parametrize("override,param", BAD, ids=[f"{p}={o[p]!r}" for o, p in BAD])
def test_bad_input_refused_naming_the_parameter(tmp_path, override, param):
    raw = tmp_path / "raw"
    kw = dict(dataset_id=992, num_cases=2, num_test=0, shape=SMALL, raw_folder=str(raw))
    kw.update(override)
    with pytest.raises(pb.PhantomBInputError, match=param):
        pb.write_dataset(**kw)
    assert not raw.exists() and os.listdir(tmp_path) == []


def test_missing_raw_folder_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pb.PhantomBInputError, match="raw_folder.*nnUNet_raw"):
        pb.write_dataset(992, 2, 0, shape=SMALL)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(pb.PhantomBInputError, match="raw_folder"):
        pb.write_dataset(992, 2, 0, shape=SMALL, raw_folder=str(tmp_path / "afile"))
    assert sorted(os.listdir(tmp_path)) == ["afile"]
    # the environment variable is used when raw_folder is not given
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "env_raw"))
    assert pb.write_dataset(992, 2, 0, shape=SMALL) == str(tmp_path / "env_raw" / "Dataset992_PhantomB")


def test_existing_dataset_and_overwrite(tmp_path):
    raw = tmp_path / "raw"
    kw = dict(shape=SMALL, raw_folder=str(raw))
    first = Path(pb.write_dataset(993, 2, 0, seed=0, **kw))
    before = _tree(first)
    # same id and name: refused without overwrite
    with pytest.raises(FileExistsError, match="overwrite"):
        pb.write_dataset(993, 2, 0, seed=1, **kw)
    # same id, another name: refused even with overwrite, and the old dataset is untouched
    with pytest.raises(FileExistsError, match="dataset_id"):
        pb.write_dataset(993, 2, 0, seed=1, name="Other", overwrite=True, **kw)
    assert _tree(first) == before and sorted(os.listdir(raw)) == ["Dataset993_PhantomB"]
    # same id and name with overwrite: replaced
    again = Path(pb.write_dataset(993, 3, 1, seed=1, overwrite=True, **kw))
    assert again == first and _tree(first) != before
    meta = json.loads((first / "phantom_cases.json").read_text())
    assert meta["seed"] == 1 and len(meta["cases"]) == 4
    assert sorted(os.listdir(raw)) == ["Dataset993_PhantomB"]  # no temporary or old copy left
    # another dataset with the same id blocks every other name, overwrite or not; a folder of the same name that
    # phantom_b did not write is not replaced either
    (raw / "Dataset994_Real").mkdir()
    (raw / "Dataset994_Real" / "keep.txt").write_text("data")
    with pytest.raises(FileExistsError, match="Dataset994_Real"):
        pb.write_dataset(994, 2, 0, overwrite=True, **kw)
    with pytest.raises(FileExistsError, match="not written by phantom_b"):
        pb.write_dataset(994, 2, 0, name="Real", overwrite=True, **kw)
    assert os.listdir(raw / "Dataset994_Real") == ["keep.txt"]
    assert sorted(os.listdir(raw)) == ["Dataset993_PhantomB", "Dataset994_Real"]


def test_interrupted_write_leaves_nothing_and_keeps_the_old_dataset(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    kw = dict(shape=SMALL, raw_folder=str(raw))
    real = pb.generate_case

    def interrupted(seed, index, shape):
        if index == 1:
            raise KeyboardInterrupt
        return real(seed, index, shape)

    monkeypatch.setattr(pb, "generate_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pb.write_dataset(995, 3, 0, **kw)
    assert os.listdir(raw) == []
    monkeypatch.setattr(pb, "generate_case", real)
    first = Path(pb.write_dataset(995, 2, 0, **kw))
    before = _tree(first)
    monkeypatch.setattr(pb, "generate_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pb.write_dataset(995, 3, 0, seed=5, overwrite=True, **kw)
    assert sorted(os.listdir(raw)) == ["Dataset995_PhantomB"] and _tree(first) == before


# ------------------------------------------------------------------------------------------------ command line
def test_cli(tmp_path, capsys):
    raw = tmp_path / "raw"
    assert pb.main(["-d", "996", "--num-cases", "2", "--num-test", "1", "--shape", "16", "32", "32",
                    "--raw-folder", str(raw)]) == 0
    assert capsys.readouterr().out.strip() == str(raw / "Dataset996_PhantomB")
    for argv, param in [(["-d", "0"], "dataset_id"), (["-d", "997", "--num-cases", "1"], "num_cases"),
                        (["-d", "997", "--num-test", "-2"], "num_test"), (["-d", "997", "--name", "../x"], "name"),
                        (["-d", "997", "--spacing", "3", "0", "1"], "spacing"),
                        (["-d", "997", "--shape", "4", "64", "64"], "shape"),
                        (["-d", "996", "--shape", "16", "32", "32"], "overwrite")]:
        assert pb.main(argv + ["--raw-folder", str(raw)]) == 2, argv
        err = capsys.readouterr().err
        assert param in err, (argv, err)
    assert pb.main(["--num-cases", "x"]) == 2  # malformed command line (argparse)
    assert sorted(os.listdir(raw)) == ["Dataset996_PhantomB"]


def test_cli_as_module(tmp_path):
    raw = tmp_path / "raw"
    cmd = [sys.executable, "-m", "nnunetv2_ext.phantom_b", "-d", "998", "--num-cases", "2", "--num-test", "0",
           "--seed", "0", "--shape", "16", "32", "32", "--raw-folder", str(raw)]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (raw / "Dataset998_PhantomB" / "dataset.json").is_file()
    bad = subprocess.run(cmd[:-2] + ["--raw-folder", str(raw), "--name", "a/b"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "name" in bad.stderr
