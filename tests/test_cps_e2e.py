"""Cross pseudo supervision end to end through nnU-Net's own commands (issue 10, part 3), split from
``test_semisupervised_e2e.py`` so that the two long modules run on different test workers.

A module-scoped phantom (6 labelled, 6 unlabelled in imagesUnlabeled/, 2 test cases; 24 x 48 x 48; 2d):
``nnUNetTrainerCPSTiny`` with 2 augmentation workers, a run that crashes in epoch 2, ``--c`` resumes it, then
``nnUNetv2_predict`` predicts the test cases (the saved probabilities are the mean of the two networks' softmax), the
model shared as a zip predicts the same, and a dataset without unlabelled cases is refused before anything is
written.
"""
import os
import re
import signal

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import (KILL_DURING_EPOCH, check_killed_and_resumed, export_install_predict, make_trainer,
                      semisupervised_phantom, run_cmd, run_process, user_trainers)

pytestmark = pytest.mark.e2e

LABELLED_ID = 963
TEST_TRAINERS = KILL_DURING_EPOCH + '''
from nnunetv2_ext.trainers.small_variants import nnUNetTrainerCPSTiny


class nnUNetTrainerCPSTinyCrash(KillDuringEpoch, nnUNetTrainerCPSTiny):
    """Killed during epoch $KILL_IN_EPOCH (checkpoint_latest of the epoch before is on disk)."""
'''


@pytest.fixture(scope="module")
def trainer_env(tmp_path_factory):
    return user_trainers(tmp_path_factory.mktemp("cps_trainers"), TEST_TRAINERS, "cps_test_trainers")


@pytest.fixture(scope="module")
def semi_phantom(nnunet_dirs):
    return semisupervised_phantom(LABELLED_ID, nnunet_dirs["nnUNet_raw"])


# ------------------------------------------------------------------------------------------------ CPS
@pytest.fixture(scope="module")
def cps_run(semi_phantom, nnunet_dirs, tmp_path_factory, trainer_env):
    env = trainer_env
    train = ["nnUNetv2_train", LABELLED_ID, "2d", "0", "-tr", "nnUNetTrainerCPSTinyCrash", "-device", "cpu"]
    killed = run_process(train, timeout=900, env=dict(env, KILL_IN_EPOCH="2"))
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    resumed = run_cmd(train + ["--c"], timeout=900, env=env)
    pred = tmp_path_factory.mktemp("cps_pred")
    run_cmd(["nnUNetv2_predict", "-i", semi_phantom / "imagesTs", "-o", pred, "-d", LABELLED_ID, "-c", "2d", "-f",
             "0", "-tr", "nnUNetTrainerCPSTinyCrash", "-device", "cpu", "--disable_tta", "--save_probabilities",
             "-npp", "1", "-nps", "1"], env=env)
    fold = next(nnunet_dirs["nnUNet_results"].glob(
        f"Dataset{LABELLED_ID}_*/nnUNetTrainerCPSTinyCrash__nnUNetPlans__2d/fold_0"))
    return {"fold": fold, "pred": pred, "resumed": resumed, "env": env}


def _log(fold):
    return "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))


def test_cps_resumes_with_c_and_samples_unlabelled_cases_in_two_workers(cps_run, semi_phantom):
    from nnunetv2_ext.trainers.small_variants import nnUNetTrainerCPSTiny as T
    log = _log(cps_run["fold"])
    check_killed_and_resumed(cps_run["fold"], T.tiny_num_epochs, kill_epoch=2)  # killed in 2, --c went on at 2
    unlabelled = {p.name[:-12] for p in (semi_phantom / "imagesUnlabeled").iterdir()}
    lines = re.findall(r"CPS: L_sup\(A\) .*? (\d+) unlabelled patches from (\d+) of (\d+) unlabelled cases, built by "
                       r"worker pids \[([\d, ]+)\]", log)
    assert len(lines) == T.tiny_num_epochs
    for patches, cases, total, pids in lines:
        assert int(patches) == T.tiny_iterations_per_epoch * T.tiny_batch_size and int(total) == len(unlabelled)
        assert len(pids.split(",")) == 2  # nnUNet_n_proc_DA=2 workers built the batches
    weights = [float(w) for w in re.findall(r"CPS weight lambda = ([\d.]+)", log)]  # killed run: 0, 1, 2; resumed 2, 3
    assert weights == pytest.approx([T.cps_weight(e, T.tiny_num_epochs) for e in (0, 1, 2, 2, 3)], abs=1e-4)
    assert "PlainConvUNet + ResidualEncoderUNet" in log


def test_cps_model_shared_as_zip_predicts_the_same(cps_run, semi_phantom, tmp_path):
    """Issue 20 item 16: export, install into an empty results folder, predict (both networks from the installed
    checkpoint): the same label maps."""
    export_install_predict(LABELLED_ID, "2d", "nnUNetTrainerCPSTinyCrash", 0, semi_phantom / "imagesTs",
                           cps_run["pred"], tmp_path, env=cps_run["env"], extra=["--disable_tta"])


def test_cps_prediction_is_the_mean_of_both_softmaxes(cps_run, semi_phantom):
    """nnUNetv2_predict (no TTA; one tile per 48 x 48 slice) saved probabilities = mean of each network's softmax,
    each network run alone through nnU-Net's predictor on the same image."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2_ext.trainers.small_variants import nnUNetTrainerCPSTiny
    fold, pred = cps_run["fold"], cps_run["pred"]
    cases = sorted(p.name[:-12] for p in (semi_phantom / "imagesTs").iterdir())
    assert sorted(p.name[:-7] for p in pred.glob("*.nii.gz")) == cases
    plans_manager = PlansManager(load_json(fold.parent / "plans.json"))
    configuration = plans_manager.get_configuration("2d")
    dataset_json = load_json(fold.parent / "dataset.json")
    pair = nnUNetTrainerCPSTiny.build_network_architecture(plans_manager, configuration, 1, 2, False)
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    pair.load_state_dict(checkpoint["network_weights"])
    image, props = SimpleITKIO().read_images([str(semi_phantom / "imagesTs" / f"{cases[0]}_0000.nii.gz")])
    probabilities = []
    for member in (pair.net_a, pair.net_b):
        predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False,
                                    device=torch.device("cpu"), allow_tqdm=False)
        predictor.manual_initialization(member, plans_manager, configuration, [member.state_dict()], dataset_json,
                                        "member", None)
        probabilities.append(predictor.predict_single_npy_array(image, props, None, None, True)[1])
    saved = np.load(pred / f"{cases[0]}.npz")["probabilities"]
    difference = np.abs(saved - (probabilities[0] + probabilities[1]) / 2)
    # nnU-Net accumulates the sliding window in float16: a few 1e-3 at the image corners, where the Gaussian weight
    # of the single tile is tiny; elsewhere equal
    assert difference.max() < 1e-2 and difference.mean() < 1e-4, (difference.max(), difference.mean())
    assert not np.allclose(probabilities[0], probabilities[1], atol=1e-3)  # two different networks
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / f"{cases[0]}.nii.gz")))
    assert seg.shape == image.shape[1:] and set(np.unique(seg)) <= {0, 1}


def test_cps_refuses_a_dataset_without_unlabelled_cases(semi_phantom, nnunet_dirs, tmp_path):
    """A labelled-only dataset: clear error before nnU-Net writes anything (no output folder, no log)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2_ext.trainers.small_variants import nnUNetTrainerCPSTiny
    pre = nnunet_dirs["nnUNet_preprocessed"]
    raw = semi_phantom  # with its unlabelled cases hidden for a moment
    plans = load_json(pre / raw.name / "nnUNetPlans.json")
    dataset_json = load_json(pre / raw.name / "dataset.json")
    stored = pre / raw.name / "nnUNetPlans_2d_unlabelled"
    hidden = [(raw / "imagesUnlabeled", tmp_path / "u"), (stored, tmp_path / "s")]
    for src, dst in hidden:
        if src.exists():
            os.rename(src, dst)
    try:
        with pytest.raises(ValueError, match="no unlabelled cases.*imagesUnlabeled"):
            make_trainer(nnUNetTrainerCPSTiny, plans, dataset_json, "2d", 3)
        assert not list(nnunet_dirs["nnUNet_results"].glob("*/nnUNetTrainerCPSTiny__*/fold_3"))  # nothing written
    finally:
        for src, dst in hidden:
            if dst.exists():
                os.rename(dst, src)
