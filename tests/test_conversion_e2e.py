"""End to end: a converted (synthetic NIH Pancreas-CT) dataset passes nnU-Net's own integrity check and planning,
and the paper split written into the raw folder reaches nnUNet_preprocessed (about 1 minute on 2 cores)."""
import json

import pytest

from conftest import run_cmd

from nnunetv2_ext.dataset_conversion import synthetic
from nnunetv2_ext.dataset_conversion.nih_pancreas import main as nih_main


@pytest.mark.e2e
def test_converted_dataset_passes_nnunet_verify_dataset_integrity(private_nnunet_dirs, tmp_path):
    dicom, labels = synthetic.make_nih_pancreas(tmp_path, case_numbers=(1, 2, 3, 4), shape_zyx=(12, 40, 40),
                                                withdrawn=(25,))
    assert nih_main(["-i", str(tmp_path), "--labels", str(labels), "-d", "946", "-np", "1", "--paper-splits"]) == 0
    run_cmd(["nnUNetv2_plan_and_preprocess", "-d", "946", "--verify_dataset_integrity", "--no_pp", "-npfp", "1",
             "-c", "3d_fullres"])
    name = "Dataset946_NIHPancreas"
    raw_splits = json.loads((private_nnunet_dirs["nnUNet_raw"] / name / "splits_final.json").read_text())
    preprocessed = private_nnunet_dirs["nnUNet_preprocessed"] / name
    assert json.loads((preprocessed / "splits_final.json").read_text()) == raw_splits
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["CTNormalization"]


@pytest.mark.e2e
def test_lits_msd_flare22_outputs_pass_nnunet_verify_dataset_integrity(private_nnunet_dirs, tmp_path, monkeypatch):
    """nnU-Net's own integrity check (labels, channels, geometry) on one tiny dataset per converter/setting."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    from nnunetv2_ext.dataset_conversion.common import run_conversion
    from nnunetv2_ext.dataset_conversion.flare22 import FLARE22Converter
    from nnunetv2_ext.dataset_conversion.lits import LiTSConverter
    from nnunetv2_ext.dataset_conversion.msd import MSDConverter

    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))  # own raw folder: ids cannot clash with other tests
    brain = synthetic.make_msd(tmp_path / "msd", "Task01_BrainTumour", case_numbers=(1, 2, 3), test_numbers=(4,))
    converters = {
        930: LiTSConverter(str(synthetic.make_lits(tmp_path / "lits", case_numbers=(0, 1, 2))), tumor_only=True,
                           paper_split=True, num_test_cases=1),
        931: MSDConverter(str(brain)),
        932: MSDConverter(str(brain), brats_edema_t1gd=True, paper_split=True, num_test_cases=1),
        933: FLARE22Converter(str(synthetic.make_flare22(tmp_path / "flare", labeled=(1, 2), unlabeled=(1,))),
                              write_unlabeled=True),
    }
    for dataset_id, converter in converters.items():
        report = run_conversion(converter, dataset_id, num_processes=1)
        verify_dataset_integrity(str(report.dataset_folder), num_processes=1)  # raises on any problem
