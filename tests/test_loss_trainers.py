"""Trainers with boundary-aware losses: parameter/dataset checks before training, the worker pipelines, and a tiny
end-to-end run of each trainer through nnUNetv2_train and nnUNetv2_predict on the phantom (organ + tumour + ignore
label, so multi-class, deep supervision and the ignore label are all exercised)."""
import glob
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunetv2_ext.losses import StepUpWeight
from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
from nnunetv2_ext.trainers import (nnUNetTrainerBoundary, nnUNetTrainerHausdorff, nnUNetTrainerMLL,
                                   nnUNetTrainerSharedBoundary)
from nnunetv2_ext.transforms import SignedDistanceMapTransform

DATASET_ID = 951
DATASET = f"Dataset{DATASET_ID:03d}_Phantom"
SHAPE = (24, 48, 48)


def _env():
    env = dict(os.environ)
    env.update(nnUNet_n_proc_DA="2", nnUNet_def_n_proc="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _run(cmd, timeout=600):
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def phantom_dataset(nnunet_dirs):
    """Organ (1) + tumour (2) + ignore band (3), 8 training and 2 test cases, preprocessed for 2d and 3d_fullres."""
    write_phantom_dataset(DATASET_ID, PhantomConfig(num_cases=8, num_test=2, shape=SHAPE, lesions=True,
                                                    ignore_label=True))
    _run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "3d_fullres", "-np", "1"])
    return nnunet_dirs


def _load_plans_and_dataset_json(dirs):
    folder = dirs["nnUNet_preprocessed"] / DATASET
    with open(folder / "nnUNetPlans.json") as f:
        plans = json.load(f)
    with open(folder / "dataset.json") as f:
        dataset_json = json.load(f)
    return plans, dataset_json


def _make_trainer(cls, dirs, configuration="2d", dataset_json=None):
    """In-process trainer as nnUNetv2_train builds it (nothing is trained)."""
    plans, default_json = _load_plans_and_dataset_json(dirs)
    plans["continue_training"] = False  # nnUNetv2_train adds this key
    return cls(plans, configuration, 0, dataset_json or default_json, device=torch.device("cpu"))


def _train_and_predict(dirs, trainer: str, configuration: str, tmp_path):
    _run(["nnUNetv2_train", str(DATASET_ID), configuration, "0", "-tr", trainer, "-device", "cpu"])
    out = dirs["nnUNet_results"] / DATASET / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"
    assert (out / "checkpoint_final.pth").is_file()
    log = "".join(open(p).read() for p in glob.glob(str(out / "training_log_*.txt")))
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(dirs["nnUNet_raw"] / DATASET / "imagesTs" / "case_008_0000.nii.gz", inp)
    _run(["nnUNetv2_predict", "-i", str(inp), "-o", str(tmp_path / "pred"), "-d", str(DATASET_ID), "-c",
          configuration, "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"])
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
def test_e2e_2d_trainers(phantom_dataset, tmp_path, trainer, active):
    log = _train_and_predict(phantom_dataset, trainer, "2d", tmp_path)
    # the weights follow the epoch: off in epoch 0, the structural terms were computed in epoch 1
    assert "Structural loss weights: " + active.replace("=0.5", "=0").replace("=1", "=0") in log
    assert "Structural loss weights: " + active in log


@pytest.mark.e2e
def test_e2e_shared_boundary_3d(phantom_dataset, tmp_path):
    log = _train_and_predict(phantom_dataset, "nnUNetTrainerSharedBoundaryTiny", "3d_fullres", tmp_path)
    assert "Structural loss weights: shared_boundary=1" in log


def test_region_based_dataset_rejected_before_training(phantom_dataset):
    _, dataset_json = _load_plans_and_dataset_json(phantom_dataset)
    dataset_json["labels"] = {"background": 0, "organ_and_tumour": [1, 2], "tumour": 2, "ignore": 3}
    dataset_json["regions_class_order"] = [1, 2]
    for trainer in (nnUNetTrainerBoundary, nnUNetTrainerHausdorff, nnUNetTrainerMLL, nnUNetTrainerSharedBoundary):
        with pytest.raises(ValueError, match="region-based"):
            _make_trainer(trainer, phantom_dataset, dataset_json=dataset_json)


@pytest.mark.parametrize("attributes, match", [
    ({"num_points": 0}, "num_points"),
    ({"importance_ratio": 1.2}, "importance_ratio"),
    ({"hausdorff_exponent": -1.0}, "exponent"),
])
def test_bad_parameters_rejected_before_training(phantom_dataset, attributes, match):
    base = nnUNetTrainerHausdorff if "hausdorff_exponent" in attributes else nnUNetTrainerMLL
    bad = type("nnUNetTrainerBad", (base,), attributes)
    with pytest.raises(ValueError, match=match):
        _make_trainer(bad, phantom_dataset)


def test_bad_schedule_rejected_when_the_trainer_is_defined():
    with pytest.raises(ValueError, match="increment"):
        type("nnUNetTrainerBad", (nnUNetTrainerBoundary,), {"boundary_weight": StepUpWeight(increment=1.5)})


def test_sdm_only_in_deep_supervision_pipelines(phantom_dataset):
    trainer = _make_trainer(nnUNetTrainerBoundary, phantom_dataset, "3d_fullres")
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
