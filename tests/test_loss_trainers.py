"""Trainers with boundary-aware losses: parameter/dataset checks before training, the worker pipelines, and a tiny
end-to-end run of each trainer through nnUNetv2_train and nnUNetv2_predict on the phantom (organ + tumour + ignore
label, so multi-class, deep supervision and the ignore label are all exercised)."""
import glob
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import LESION_PHANTOM_ID, make_trainer, run_cmd

from nnunetv2_ext.losses import StepUpWeight
from nnunetv2_ext.trainers import (nnUNetTrainerBoundary, nnUNetTrainerHausdorff, nnUNetTrainerMLL,
                                   nnUNetTrainerSharedBoundary)
from nnunetv2_ext.transforms import SignedDistanceMapTransform

# the session's lesion phantom (conftest): organ (1) + tumour (2) + ignore band (3), 8 training and 2 test cases
DATASET_ID = LESION_PHANTOM_ID
SHAPE = (24, 48, 48)


def _train_and_predict(dirs, dataset, trainer: str, configuration: str, tmp_path, predict: bool = True):
    run_cmd(["nnUNetv2_train", DATASET_ID, configuration, "0", "-tr", trainer, "-device", "cpu"])
    out = dirs["nnUNet_results"] / dataset.name / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"
    assert (out / "checkpoint_final.pth").is_file()
    log = "".join(open(p).read() for p in glob.glob(str(out / "training_log_*.txt")))
    if not predict:
        return log
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(dataset.raw / "imagesTs" / "case_008_0000.nii.gz", inp)
    run_cmd(["nnUNetv2_predict", "-i", inp, "-o", tmp_path / "pred", "-d", DATASET_ID, "-c", configuration,
             "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"])
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / "case_008.nii.gz")))
    assert pred.shape == SHAPE
    assert set(np.unique(pred)) <= {0, 1, 2}
    return log


@pytest.mark.e2e
@pytest.mark.parametrize("trainer, active", [
    ("nnUNetTrainerBoundaryTiny", "boundary=0.5"),
    ("nnUNetTrainerHausdorffTiny", "hausdorff=0.5"),
    ("nnUNetTrainerMLLTiny", "boundary=0.5, pixelwise=1"),
    ("nnUNetTrainerPNSSHESS_MLLTiny", "boundary=0.5, pixelwise=1"),
])
def test_e2e_2d_trainers(lesion_phantom, nnunet_dirs, tmp_path, trainer, active):
    # these trainers change the loss only, so their networks and nnUNetv2_predict are nnU-Net's: one predicts (the
    # end-of-training validation of each already runs nnU-Net's predictor on the trained network)
    predict = trainer == "nnUNetTrainerBoundaryTiny"
    log = _train_and_predict(nnunet_dirs, lesion_phantom, trainer, "2d", tmp_path, predict)
    # the weights follow the epoch: off in epoch 0, the structural terms were computed in epoch 1
    assert "Structural loss weights: " + active.replace("=0.5", "=0").replace("=1", "=0") in log
    assert "Structural loss weights: " + active in log


@pytest.mark.e2e
def test_e2e_shared_boundary_3d(lesion_phantom, nnunet_dirs, tmp_path):
    log = _train_and_predict(nnunet_dirs, lesion_phantom, "nnUNetTrainerSharedBoundaryTiny", "3d_fullres", tmp_path)
    assert "Structural loss weights: shared_boundary=1" in log


def test_region_based_dataset_rejected_before_training(lesion_phantom_plans):
    dataset_json = lesion_phantom_plans.dataset_json
    dataset_json["labels"] = {"background": 0, "organ_and_tumour": [1, 2], "tumour": 2, "ignore": 3}
    dataset_json["regions_class_order"] = [1, 2]
    for trainer in (nnUNetTrainerBoundary, nnUNetTrainerHausdorff, nnUNetTrainerMLL, nnUNetTrainerSharedBoundary):
        with pytest.raises(ValueError, match="region-based"):
            make_trainer(trainer, lesion_phantom_plans.plans, dataset_json)


@pytest.mark.parametrize("attributes, match", [
    ({"num_points": 0}, "num_points"),
    ({"importance_ratio": 1.2}, "importance_ratio"),
    ({"hausdorff_exponent": -1.0}, "exponent"),
])
def test_bad_parameters_rejected_before_training(lesion_phantom_plans, attributes, match):
    base = nnUNetTrainerHausdorff if "hausdorff_exponent" in attributes else nnUNetTrainerMLL
    bad = type("nnUNetTrainerBad", (base,), attributes)
    with pytest.raises(ValueError, match=match):
        make_trainer(bad, lesion_phantom_plans.plans, lesion_phantom_plans.dataset_json)


def test_bad_schedule_rejected_when_the_trainer_is_defined():
    with pytest.raises(ValueError, match="increment"):
        type("nnUNetTrainerBad", (nnUNetTrainerBoundary,), {"boundary_weight": StepUpWeight(increment=1.5)})


def test_sdm_only_in_deep_supervision_pipelines(lesion_phantom_plans):
    trainer = make_trainer(nnUNetTrainerBoundary, lesion_phantom_plans.plans, lesion_phantom_plans.dataset_json,
                           "3d_fullres")
    ds_scales = trainer._get_deep_supervision_scales()
    tr = trainer.get_training_transforms(trainer.configuration_manager.patch_size, 0.0, ds_scales, (1, 2), False)
    val = trainer.get_validation_transforms(ds_scales)
    for pipeline in (tr, val):
        sdm_transform = pipeline.transforms[-1]
        assert isinstance(sdm_transform, SignedDistanceMapTransform)
        assert sdm_transform.spacing == [3.0, 1.0, 1.0] and sdm_transform.classes == [1, 2]
        assert sdm_transform.ignore_label == 3
    # a pipeline without deep supervision (e.g. the PNSS/HESS scoring pass) stays nnU-Net's
    assert not isinstance(trainer.get_validation_transforms(None).transforms[-1], SignedDistanceMapTransform)
    seg = torch.zeros((1,) + SHAPE, dtype=torch.int16)
    seg[0, 8:16, 10:30, 10:30] = 1
    out = val(image=torch.zeros((1,) + SHAPE), segmentation=seg)["segmentation"]
    assert len(out) == len(ds_scales) + 1 and out[-1].shape == (2,) + SHAPE
