"""Slice-position encoding end to end through nnU-Net's own commands (issue 19 item 2), workers on.

One module-scoped set-up: the session's 2d organ phantom (conftest ``phantom_2d``, 10 training + 2 held-out cases,
24x48x48) -> ``nnunetv2_ext_add_slice_position`` -> ``nnUNetv2_plan_and_preprocess`` -> ``nnUNetv2_train`` fold 0
with nnUNetTrainerSlicePositionTiny -> ``nnunetv2_ext_add_slice_position_to_images`` on the held-out images ->
``nnUNetv2_predict``. Checked: the preprocessed training data and the batches the augmentation workers deliver carry
each slice's position; the network sees, in prediction, every slice at the position it was trained with; a dataset
without the channel is refused before anything is written.
"""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import PHANTOM_ID, plan_and_preprocess, run_cmd, run_process

from nnunetv2_ext.slice_position.encoding import positions_for_image

pytestmark = pytest.mark.e2e

DATASET_ID = 962
TRAINER = "nnUNetTrainerSlicePositionTiny"


@pytest.fixture(scope="module")
def position_run(phantom_2d, nnunet_dirs, tmp_path_factory):
    out = run_cmd(["nnunetv2_ext_add_slice_position", "-i", phantom_2d, "-d", DATASET_ID, "-np", "1"])
    planned = plan_and_preprocess(DATASET_ID)
    train_log = run_cmd(["nnUNetv2_train", DATASET_ID, "2d", "0", "-tr", TRAINER, "-device", "cpu"], timeout=900)
    images = tmp_path_factory.mktemp("position_images")
    run_cmd(["nnunetv2_ext_add_slice_position_to_images", "-i", phantom_2d / "imagesTs", "-o", images / "in",
             "-d", DATASET_ID])
    pred = images / "pred"
    run_cmd(["nnUNetv2_predict", "-i", images / "in", "-o", pred, "-d", DATASET_ID, "-c", "2d", "-f", "0",
             "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"])
    fold = next(nnunet_dirs["nnUNet_results"].glob(f"Dataset{DATASET_ID}_*/{TRAINER}__nnUNetPlans__2d/fold_0"))
    return {"source": phantom_2d, "planned": planned, "images": images / "in", "pred": pred, "fold": fold,
            "convert_output": out, "train_output": train_log}


def _expected(raw_image_path):
    return positions_for_image(sitk.ReadImage(str(raw_image_path))).astype(np.float32)


def test_preprocessed_cases_carry_each_slices_position(position_run):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    planned = position_run["planned"]
    assert json.loads((planned.raw / "dataset.json").read_text())["slice_position_channel"] == 1
    folder = str(planned.preprocessed / "nnUNetPlans_2d")
    dataset = infer_dataset_class(folder)(folder)
    for identifier in sorted(dataset.identifiers)[:3]:
        data, _, _, properties = dataset.load_case(identifier)
        expected = _expected(position_run["source"] / "imagesTr" / f"{identifier}_0000.nii.gz")
        lo, hi = properties["bbox_used_for_cropping"][0]  # nnU-Net's crop along the slice axis
        channel = np.asarray(data[1])
        for z in range(channel.shape[0]):
            assert np.all(channel[z] == expected[lo + z]), (identifier, z)


def test_training_batches_from_the_workers_carry_positions(position_run, monkeypatch):
    """The trainer's own loaders (2 augmentation workers): every sample's position channel is one constant, a
    position of the data set, whatever the augmentation did to the CT channel."""
    from nnunetv2.run.run_training import get_trainer_from_args
    monkeypatch.setenv("nnUNet_n_proc_DA", "2")
    trainer = get_trainer_from_args(str(DATASET_ID), "2d", 0, TRAINER, device=torch.device("cpu"))
    trainer.initialize()
    positions = {float(v) for case in (position_run["source"] / "imagesTr").glob("*_0000.nii.gz")
                 for v in _expected(case)}
    train_loader, val_loader = trainer.get_dataloaders()
    try:
        for _ in range(3):
            batch = next(train_loader)
            images = batch["data"]
            assert images.shape[1] == 2
            for sample in images[:, 1]:
                values = torch.unique(sample)
                assert values.numel() == 1 and float(values[0]) in positions, values
    finally:
        for loader in (train_loader, val_loader):
            getattr(loader, "_finish", lambda: None)()
    assert "slice position: channel 1 (p = (k + 1/2) / Z" in position_run["train_output"]


def test_prediction_sees_each_slice_at_its_training_position(position_run):
    """nnUNetv2_predict wrote every held-out case; predicting in-process from the same model with a hook on the
    network: each input tile's position channel is one constant, and over a case the tiles' values are exactly
    the case's slice positions as the dataset command encoded them for training."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    images, pred = position_run["images"], position_run["pred"]
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(position_run["fold"].parent), (0,))
    seen = []
    predictor.network.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 1].clone()))
    for case in cases:
        seen.clear()
        files = [str(images / f"{case}_0000.nii.gz"), str(images / f"{case}_0001.nii.gz")]
        predictor.predict_single_npy_array(*_read(files), None, None, False)
        values = set()
        for tile in seen:
            for sample in tile:
                unique = torch.unique(sample)
                assert unique.numel() == 1, unique
                values.add(float(unique[0]))
        assert values == {float(v) for v in _expected(position_run["source"] / "imagesTs" / f"{case}_0000.nii.gz")}


def _read(files):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    data, properties = SimpleITKIO().read_images(files)
    return data, properties


def test_a_dataset_without_the_channel_is_refused_before_anything_is_written(position_run, nnunet_dirs):
    p = run_process(["nnUNetv2_train", PHANTOM_ID, "2d", "0", "-tr", TRAINER, "-device", "cpu"])
    assert p.returncode != 0 and "no slice-position channel (slice_position_channel missing" in p.stdout
    assert not list(nnunet_dirs["nnUNet_results"].glob(f"Dataset{PHANTOM_ID}_*/{TRAINER}__*"))
