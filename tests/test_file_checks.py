"""Truncated NIfTI files are refused, naming the file (reliability issue, item 3): SimpleITK reads a cut file with
zeros for the missing part, and before the check the converters, the evaluation and the pseudo-labels used it."""
import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext.file_checks import TruncatedFileError, check_complete


def _write(path, array):
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def _cut(path, fraction):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_cut_files_are_refused_and_whole_ones_pass(tmp_path, ending):
    a = (np.arange(20 * 30 * 40) % 97).astype(np.int16).reshape(20, 30, 40)
    f = tmp_path / f"x{ending}"
    _write(f, a)
    check_complete(str(f))
    _cut(f, 0.9)
    if ending == ".nii":  # what the check prevents: SimpleITK reads the cut file without an error, with zeros
        assert (sitk.GetArrayFromImage(sitk.ReadImage(str(f))) != a).sum() > 0
    with pytest.raises(TruncatedFileError, match=r"x\.nii"):
        check_complete(str(f))


def test_gzip_with_a_complete_stream_but_cut_nifti_and_trailing_bytes(tmp_path):
    a = np.ones((10, 10, 10), np.uint8)
    whole = tmp_path / "w.nii"
    _write(whole, a)
    cut = tmp_path / "c.nii.gz"  # compressed after cutting: the gzip stream is intact, the NIfTI data is not
    cut.write_bytes(gzip.compress(whole.read_bytes()[:-300]))
    with pytest.raises(TruncatedFileError, match="header declares"):
        check_complete(str(cut))
    extra = tmp_path / "e.nii.gz"
    extra.write_bytes(gzip.compress(whole.read_bytes()) + b"garbage")
    with pytest.raises(TruncatedFileError, match="after the end"):
        check_complete(str(extra))
    check_complete(str(tmp_path / "not_nifti.png"))  # other formats are left to their readers


def test_evaluate_and_converter_refuse_a_cut_file(tmp_path, private_nnunet_dirs, capsys):
    from nnunetv2_ext.dataset_conversion import synthetic
    from nnunetv2_ext.dataset_conversion.common import BadCasesError, run_conversion
    from nnunetv2_ext.dataset_conversion.lits import LiTSConverter
    from nnunetv2_ext.evaluation.cli import evaluate_main
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    a = np.zeros((8, 24, 24), np.uint8)
    a[2:6, 5:15, 5:15] = 1
    for d in (ref, pred):
        _write(d / "c0.nii.gz", a)
    _cut(pred / "c0.nii.gz", 0.7)
    assert evaluate_main([str(ref), str(pred), "-o", str(tmp_path / "r"), "-np", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "c0" in err and "cut" in err and not (tmp_path / "r").exists()
    src = tmp_path / "lits"
    synthetic.make_lits(src, case_numbers=(0, 1))
    _cut(src / "Training Batch 1" / "segmentation-1.nii", 0.6)
    with pytest.raises(BadCasesError, match=r"LiTS_001: .*segmentation-1\.nii: .*cut"):
        run_conversion(LiTSConverter(str(src)), 939, num_processes=1)
    assert not list(private_nnunet_dirs["nnUNet_raw"].glob("Dataset939_*"))
