"""Semi-supervised learning end to end through nnU-Net's own commands (issue 10, parts 3, 4 and 6).

One module-scoped phantom (6 labelled, 6 unlabelled in imagesUnlabeled/, 2 test cases; 24 x 48 x 48; 2d), planned
and preprocessed once, then:

- two self-training rounds with ``nnUNetv2_ext_self_train`` and the CPS trainer (the pseudo-label -> CPS loop,
  issue 19 item 1): round 0 trains 2 models (folds 0 and 1), predicts the unlabelled images, scores, selects (top
  half) and writes D_1 (the cases not selected stay unlabelled); the command is then killed (SIGKILL, its whole
  process group) between the rounds; the same command resumes with round 1 (preprocess D_1, 2 models, predict,
  select, D_2) and the final CPS model on D_2 (fold 0), without redoing round 0; a third call runs nothing;
- ``nnUNetTrainerCPSTiny`` with 2 augmentation workers: a run that crashes after epoch 1, ``--c`` resumes it, then
  ``nnUNetv2_predict -tr nnUNetTrainerCPSTiny`` predicts the test cases; the saved probabilities are the mean of
  the two networks' softmax.
"""
import json
import os
import pathlib
import re
import signal

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import (KILL_DURING_EPOCH, check_killed_and_resumed, export_install_predict, make_trainer,
                      plan_and_preprocess, run_cmd, run_process, run_until_then_kill, user_trainers)

pytestmark = pytest.mark.e2e

LABELLED_ID, ROUND1_ID, ROUND2_ID = 948, 949, 950
#: seeded and long enough that both CPS networks find the organ (its docstring): the round needs scores
SELF_TRAIN_TRAINER = "nnUNetTrainerCPSTinySeeded"
TEST_TRAINERS = KILL_DURING_EPOCH + '''
from nnunetv2_ext.trainers.small_variants import nnUNetTrainerCPSTiny


class nnUNetTrainerCPSTinyCrash(KillDuringEpoch, nnUNetTrainerCPSTiny):
    """Killed during epoch $KILL_IN_EPOCH (checkpoint_latest of the epoch before is on disk)."""
'''


@pytest.fixture(scope="module")
def trainer_env(tmp_path_factory):
    """nnUNet_extTrainer with the test trainers, for the subprocesses (self-training passes it on)."""
    return user_trainers(tmp_path_factory.mktemp("semi_trainers"), TEST_TRAINERS, "semi_test_trainers")


@pytest.fixture(scope="module")
def semi_phantom(nnunet_dirs):
    from nnunetv2_ext.semisupervised.phantom import write_semisupervised_phantom
    raw = pathlib.Path(write_semisupervised_phantom(LABELLED_ID, 6, 6, 2, str(nnunet_dirs["nnUNet_raw"]),
                                                    shape=(24, 48, 48)))
    plan_and_preprocess(LABELLED_ID, ["2d"])
    return raw


# ------------------------------------------------------------------------------------------------ self-training
@pytest.fixture(scope="module")
def self_train_run(semi_phantom, nnunet_dirs, tmp_path_factory, trainer_env):
    work = tmp_path_factory.mktemp("self_train")
    # the CPS trainer, so that the same run also tests the pseudo-label -> CPS loop (Pham et al., Table 5 rows 3-4;
    # issue 19, item 1): D_1 keeps the cases not accepted as unlabelled input of the final CPS model
    args = ["nnUNetv2_ext_self_train", "-d", LABELLED_ID, "-c", "2d", "-o", ROUND1_ID, ROUND2_ID, "-f", "0", "1",
            "--final-folds", "0", "-tr", SELF_TRAIN_TRAINER, "--top-fraction", "0.5", "--work-dir", work,
            "--no-stop-when-no-new", "-device", "cpu", "-np", "1", "-npp", "1", "-nps", "1"]
    state = work / "self_train_state.json"

    def round_0_selected():
        try:
            return "selected" in json.loads(state.read_text())["rounds"].get("0", {})
        except (OSError, ValueError):
            return False
    killed = run_until_then_kill(args, round_0_selected, timeout=1800, env=trainer_env)
    resumed = run_cmd(args, timeout=1800, env=trainer_env)
    third = run_cmd(args, timeout=600, env=trainer_env)
    return {"work": work, "killed": killed, "first": killed.stdout, "resumed": resumed, "second": third,
            "args": args}


def test_round_trains_predicts_selects_and_retrains(self_train_run, nnunet_dirs, semi_phantom):
    out = self_train_run["first"]
    assert self_train_run["killed"].returncode == -signal.SIGKILL, out[-3000:]
    assert out.count("$ nnUNetv2_train") == 2 and out.count("$ nnUNetv2_predict") == 2  # round 0, then killed
    assert f"$ nnUNetv2_train {ROUND1_ID}" not in out  # killed before round 1 (right after round 0's selection was saved)
    work = self_train_run["work"]
    unlabelled = sorted(p.name[:-12] for p in (semi_phantom / "imagesUnlabeled").iterdir())
    for fold in (0, 1):
        pred = work / "round_0" / "predictions" / f"{SELF_TRAIN_TRAINER}__fold_{fold}"
        assert sorted(p.name[:-7] for p in pred.glob("*.nii.gz")) == unlabelled
    scores = (work / "round_0" / "pseudolabels" / "scores.csv").read_text().splitlines()
    assert len(scores) == 1 + len(unlabelled) and scores[0].startswith("case,score,score_organ")
    raw1 = next(nnunet_dirs["nnUNet_raw"].glob(f"Dataset{ROUND1_ID}_*"))
    manifest = json.loads((raw1 / "pseudo_labels.json").read_text())
    selected = [s["case"] for s in manifest["selected"]]
    assert len(selected) == 3  # top half of 6
    assert sorted(p.name for p in (raw1 / "labelsTr").iterdir()) == sorted(
        [p.name for p in (semi_phantom / "labelsTr").iterdir()] + [c + ".nii.gz" for c in selected])
    # validation stays on the labelled cases; the pseudo-labelled ones are training cases of every fold
    splits = json.loads((nnunet_dirs["nnUNet_preprocessed"] / raw1.name / "splits_final.json").read_text())
    assert all(set(selected) <= set(f["train"]) and not set(selected) & set(f["val"]) for f in splits)
    # D_1 reuses D_0's plans (same network and normalisation)
    plans0 = json.loads((nnunet_dirs["nnUNet_preprocessed"] / semi_phantom.name / "nnUNetPlans.json").read_text())
    plans1 = json.loads((nnunet_dirs["nnUNet_preprocessed"] / raw1.name / "nnUNetPlans.json").read_text())
    assert plans1["configurations"]["2d"] == plans0["configurations"]["2d"]
    state = json.loads((work / "self_train_state.json").read_text())
    assert state["rounds"]["0"]["selected"] == selected


def test_killed_between_rounds_resumes_with_round_1_and_trains_the_final_model(self_train_run, nnunet_dirs):
    """The resumed call redoes nothing of round 0: it preprocesses D_1, trains round 1's 2 models on it, predicts,
    selects (D_2) and trains the final model on D_2."""
    out = self_train_run["resumed"]
    assert "round 0: selection done before (3 cases)" in out
    assert out.count("$ nnUNetv2_train") == 3 and out.count("$ nnUNetv2_predict") == 2, out[-3000:]
    trains = [line for line in out.splitlines() if line.startswith("$ nnUNetv2_train")]
    assert [line.split()[2] for line in trains] == [str(ROUND1_ID), str(ROUND1_ID), str(ROUND2_ID)], trains
    work = self_train_run["work"]
    state = json.loads((work / "self_train_state.json").read_text())
    raw2 = next(nnunet_dirs["nnUNet_raw"].glob(f"Dataset{ROUND2_ID}_*"))
    assert state["final"]["dataset"] == raw2.name and state["final"]["round"] == 2
    assert len(state["rounds"]["1"]["selected"]) == 3
    final = nnunet_dirs["nnUNet_results"] / raw2.name / f"{SELF_TRAIN_TRAINER}__nnUNetPlans__2d" / "fold_0"
    assert (final / "checkpoint_final.pth").exists()


def test_self_training_with_cps_goes_past_round_0(self_train_run, nnunet_dirs, semi_phantom):
    """The pseudo-label -> CPS loop over two rounds: CPS models on D_0 (its imagesUnlabeled), then on D_1 and D_2,
    whose accepted cases are labelled and whose other unlabelled cases are the CPS models' unlabelled input."""
    unlabelled = sorted(p.name[:-12] for p in (semi_phantom / "imagesUnlabeled").iterdir())
    for round_id, fold in ((ROUND1_ID, "fold_0"), (ROUND2_ID, "fold_0")):
        raw = next(nnunet_dirs["nnUNet_raw"].glob(f"Dataset{round_id}_*"))
        selected = sorted(s["case"] for s in json.loads((raw / "pseudo_labels.json").read_text())["selected"])
        rest = sorted(set(unlabelled) - set(selected))
        assert len(selected) == 3 and sorted(p.name[:-12] for p in (raw / "imagesUnlabeled").iterdir()) == rest
        model = nnunet_dirs["nnUNet_results"] / raw.name / f"{SELF_TRAIN_TRAINER}__nnUNetPlans__2d" / fold
        assert (model / "checkpoint_final.pth").exists()
        assert f"CPS: {len(rest)} unlabelled cases" in _log(model)  # trained with its remaining unlabelled cases


def test_second_call_resumes_without_redoing_anything(self_train_run):
    out = self_train_run["second"]
    assert "$ nnUNetv2_" not in out, out[-2000:]
    assert "selection done before" in out


def test_self_train_bad_input_exit_2(semi_phantom, nnunet_dirs, tmp_path):
    from nnunetv2_ext.semisupervised.self_train import main
    base = ["-d", str(LABELLED_ID), "-c", "2d", "-o", "947", "--work-dir", str(tmp_path), "--threshold", "0.5"]
    assert main(base + ["-f", "0"]) == 2  # one model: no consensus
    assert main(["-d", "939", "-c", "2d", "-o", "947", "-f", "0", "1", "--threshold", "0.5"]) == 2
    assert main(base[:-2] + ["--threshold", "1.5", "-f", "0", "1"]) == 2
    assert main(base + ["-f", "0", "1", "--images", str(tmp_path / "none")]) == 2
    assert not list(tmp_path.iterdir())  # nothing written


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
