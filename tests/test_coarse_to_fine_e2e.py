"""Coarse-to-fine end to end through nnU-Net's own commands (issue 12), augmentation workers on (nnUNet_n_proc_DA=2).

One module-scoped set-up on the session's phantom (conftest ``phantom_2d``: 10 training + 2 held-out cases, 24x48x48,
2d):

- ``nnUNetv2_train`` fold 0 with nnUNetTrainerCoarseToFineTiny (10 epochs x 25 iterations: steps S, I, J), the
  validation at the end with the iterative test, ``nnUNetv2_predict`` with the iterative test and its per-case log;
- fold 1 with the MLN variant (2 iterations per epoch), killed during epoch 2 and resumed with
  ``nnUNetv2_train --c`` (it continues in step I, then J, and the MLN's boundary/pixel terms switch on at epoch 5);
  its end-of-training validation runs the MLN's iterative test.

(The bad-input checks, which need only plans, are in test_coarse_to_fine.py.)
"""
import json
import re
import signal

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import (KILL_DURING_EPOCH, PHANTOM_ID, check_killed_and_resumed, export_install_predict, run_cmd,
                      run_process, user_trainers)

pytestmark = pytest.mark.e2e

C2F_ID = PHANTOM_ID
TRAINER = "nnUNetTrainerCoarseToFineTiny"
RESUME_TRAINER = "nnUNetTrainerC2FMLNResumeTest"
RESUME_TRAINER_CODE = KILL_DURING_EPOCH + '''
from nnunetv2_ext.trainers.small_variants import nnUNetTrainerCoarseToFineMLLTiny, nnUNetTrainerCoarseToFineMLNTiny


class nnUNetTrainerC2FMLNResumeTest(KillDuringEpoch, nnUNetTrainerCoarseToFineMLNTiny):
    """10 epochs (S 1, I 3, J 6) of 2 iterations; $KILL_IN_EPOCH kills the run during that epoch."""
    tiny_iterations_per_epoch = 2
    tiny_val_iterations_per_epoch = 1


class nnUNetTrainerC2FMLLFastTest(nnUNetTrainerCoarseToFineMLLTiny):
    """The MLL model, 10 epochs of 2 iterations: β and the learning-rate restart at epoch 6."""
    tiny_iterations_per_epoch = 2
    tiny_val_iterations_per_epoch = 1
'''


def _fold_dir(nnunet_dirs, trainer, fold):
    return next((nnunet_dirs["nnUNet_results"]).glob(f"Dataset{C2F_ID}_*/{trainer}__nnUNetPlans__2d/fold_{fold}"))


@pytest.fixture(scope="module")
def c2f_run(phantom_2d, nnunet_dirs, tmp_path_factory):
    raw = phantom_2d
    train_log = run_cmd(["nnUNetv2_train", C2F_ID, "2d", "0", "-tr", TRAINER, "-device", "cpu"], timeout=1200)
    pred = tmp_path_factory.mktemp("c2f_pred")
    predict_out = run_cmd(["nnUNetv2_predict", "-i", f"{raw}/imagesTs", "-o", pred, "-d", C2F_ID, "-c", "2d",
                           "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"])
    return {"raw": raw, "pred": pred, "fold": _fold_dir(nnunet_dirs, TRAINER, 0), "train_output": train_log,
            "predict_output": predict_out}


@pytest.fixture(scope="module")
def mln_resumed_run(c2f_run, nnunet_dirs, tmp_path_factory):
    """Fold 1 of the MLN variant, killed during epoch 2 (its checkpoint_latest.pth is the one of epoch 1), then
    ``nnUNetv2_train --c`` (the trainer found through nnUNet_extTrainer, as a user's own subclass would be)."""
    env = user_trainers(tmp_path_factory.mktemp("c2f_trainers"), RESUME_TRAINER_CODE, "c2f_resume_test")
    train = ["nnUNetv2_train", C2F_ID, "2d", "1", "-tr", RESUME_TRAINER, "-device", "cpu"]
    first = run_process(train, timeout=900, env=dict(env, KILL_IN_EPOCH="2"))
    fold = _fold_dir(nnunet_dirs, RESUME_TRAINER, 1)
    assert first.returncode == -signal.SIGKILL and not (fold / "checkpoint_final.pth").exists(), first.stdout[-3000:]
    resumed = run_cmd(train + ["--c"], timeout=900, env=env)
    return {"fold": fold, "train_output": resumed}


@pytest.fixture(scope="module")
def mll_run(c2f_run, nnunet_dirs, tmp_path_factory):
    """Fold 2 of the paper's MLL model (issue 18, item 2), then nnUNetv2_predict of the held-out cases."""
    env = user_trainers(tmp_path_factory.mktemp("c2f_mll_trainers"), RESUME_TRAINER_CODE, "c2f_mll_test")
    trainer = "nnUNetTrainerC2FMLLFastTest"
    run_cmd(["nnUNetv2_train", C2F_ID, "2d", "2", "-tr", trainer, "-device", "cpu"], timeout=900, env=env)
    pred = tmp_path_factory.mktemp("c2f_mll_pred")
    run_cmd(["nnUNetv2_predict", "-i", c2f_run["raw"] / "imagesTs", "-o", pred, "-d", C2F_ID, "-c", "2d", "-f", "2",
             "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1"], env=env)
    return {"fold": _fold_dir(nnunet_dirs, trainer, 2), "pred": pred, "raw": c2f_run["raw"]}


def _log(fold):
    return "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))


def test_three_steps_logged_per_epoch(c2f_run):
    log = _log(c2f_run["fold"])
    steps = re.findall(r"Coarse-to-fine step ([SIJ]):", log)
    assert steps == ["S"] + ["I"] * 3 + ["J"] * 6
    assert "steps S epochs [0, 1), I [1, 4), J [4, 10)" in log
    assert "crop margin K = (4, 4) voxels" in log and "iterative test tol 0.99, T_max 3" in log
    # seeded weights and workers (SeededRunMixin): the learning checks below do not depend on the machine's luck
    assert "seed 2024: training augmentation restarted: 2 ordered workers with seeds [2024000, 2024001]" in log
    terms = re.findall(r"Coarse-to-fine loss terms: E_coarse (-?[0-9.]+), E_fine (-?[0-9.]+)", log)
    assert len(terms) == 10 and all(np.isfinite(float(v)) for t in terms for v in t)
    # step J trains on predicted boxes: by then the coarse stage finds the organ in most organ patches
    fallbacks = [int(v) for v in re.findall(r"replaced by reference boxes \(empty coarse mask\): (\d+)", log)]
    assert len(fallbacks) == 10 and fallbacks[:4] == [0] * 4  # S and I use reference boxes anyway
    assert sum(fallbacks[-3:]) < 3 * 25 * 4 * 0.75  # fewer fallbacks than organ-centred samples


def test_validation_runs_the_iterative_test_and_logs_it_per_case(c2f_run):
    fold = c2f_run["fold"]
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1"}
    it = json.loads((fold / "validation" / "coarse_to_fine_iterations.json").read_text())
    val_cases = sorted(p.name[:-len(".nii.gz")] for p in (fold / "validation").glob("*.nii.gz"))
    assert sorted(c["case"] for c in it["per_case"]) == val_cases  # named, one entry per validation case
    assert it["tol"] == 0.99 and it["max_iterations"] == 3 and it["cases"] == len(val_cases)
    for c in it["per_case"]:
        assert c["inputs"] == 24  # 24 slices (the tiny trainers switch test-time mirroring off)
        assert 0 <= c["iterations"] <= 3 and len(c["rdsc"]) == c["iterations"]
    assert any(c["iterations"] >= 1 for c in it["per_case"]), it  # the fine stage ran on found organs
    assert "summary: 2 cases, mean iterations" in _log(fold)
    records = [json.loads(line) for line in (fold / "validation" / "coarse_to_fine_iterations.jsonl").open()]
    assert sorted(r["case"] for r in records) == val_cases
    for case in val_cases:
        assert f"Coarse-to-fine: case {case}: iterations" in _log(fold)


def test_model_shared_as_zip_predicts_the_same(c2f_run, tmp_path):
    """Issue 20 item 16: export, install into an empty results folder, predict (the iterative test runs from the
    installed model): the same label maps."""
    export_install_predict(C2F_ID, "2d", TRAINER, 0, c2f_run["raw"] / "imagesTs", c2f_run["pred"], tmp_path)


def test_prediction_with_iterations_and_per_case_log(c2f_run):
    raw, pred = c2f_run["raw"], c2f_run["pred"]
    cases = sorted(p.name for p in (raw / "labelsTs").glob("*.nii.gz"))
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == cases
    for name in cases:
        ref, out = sitk.ReadImage(str(raw / "labelsTs" / name)), sitk.ReadImage(str(pred / name))
        assert out.GetSize() == ref.GetSize() and np.allclose(out.GetSpacing(), ref.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(out))) <= {0, 1}
    text = c2f_run["predict_output"]
    names = [c[:-len(".nii.gz")] for c in cases]
    for name in names:  # one line per case, named by its output file (no more numbering at exit)
        assert f"Coarse-to-fine: case {name}: iterations" in text
    records = [json.loads(line) for line in (pred / "coarse_to_fine_iterations.jsonl").open()]
    assert sorted(r["case"] for r in records) == names and all(r["inputs"] == 24 for r in records)
    assert any(r["iterations"] >= 1 for r in records)
    organ_dice = []
    for name in cases:
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTs" / name))) == 1
        out = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / name))) == 1
        organ_dice.append(2 * (ref & out).sum() / max(ref.sum() + out.sum(), 1))
    # the tiny CPU model is weak (Dice 0.3-0.5 seen), but a fine stage pasted at the wrong place gives ~0
    assert max(organ_dice) > 0.15, organ_dice


def test_resume_continues_in_the_right_step_with_the_mln(mln_resumed_run):
    check_killed_and_resumed(mln_resumed_run["fold"], 10, kill_epoch=2)
    first, resumed = (p.read_text() for p in sorted(mln_resumed_run["fold"].glob("training_log_*.txt")))
    assert re.findall(r"Coarse-to-fine step ([SIJ]):", first) == ["S", "I", "I"]
    steps = re.findall(r"Coarse-to-fine step ([SIJ]):", resumed)
    assert steps == ["I"] * 2 + ["J"] * 6, steps  # epochs 2..9 after --c: I [1, 4), J [4, 10)
    weights = re.findall(r"loss weights coarse 1, fine 0.666667, region 1, boundary 1, pixel (\d), fusion (\d)",
                         resumed)
    assert weights == [("0", "0")] * 4 + [("1", "1")] * 4  # the paper's: pixel branch and fusion from 60 % (epoch 6)
    terms = re.findall(r"E_region (-?[0-9.a-z]+), E_boundary (-?[0-9.a-z]+), E_pixel (-?[0-9.a-z]+)", resumed)
    # the boundary term from the start, the pixel term only once its weight is on
    assert len(terms) == 8 and terms[0][1] != "nan" and terms[0][2] == "nan" and "nan" not in terms[-1]


def test_mln_runs_the_iterative_test_in_validation(mln_resumed_run):
    """The end-of-training validation predicts with the MLN head in eval mode (inference point selection, iterative
    test), exactly as nnUNetv2_predict does."""
    fold = mln_resumed_run["fold"]
    it = json.loads((fold / "validation" / "coarse_to_fine_iterations.json").read_text())
    val_cases = sorted(p.name[:-len(".nii.gz")] for p in (fold / "validation").glob("*.nii.gz"))
    assert sorted(c["case"] for c in it["per_case"]) == val_cases and len(val_cases) == 2
    assert all(c["inputs"] == 24 for c in it["per_case"])
    assert "Mean Validation Dice" in _log(fold)


def test_mll_model_trains_eq_11_on_the_fine_stage_with_the_papers_schedule(mll_run):
    log = _log(mll_run["fold"])
    assert "learning rate: poly schedule restarted at epoch 6 of 10 (lr_restart_fraction 0.6)" in log
    rates = [float(v) for v in re.findall(r"Current learning rate: ([0-9.e-]+)", log)]
    assert len(rates) == 10 and rates[0] == rates[6] == 0.01 and rates[5] < rates[6] and rates[9] < rates[6]
    assert re.findall(r"Coarse-to-fine step ([SIJ]):", log) == ["S"] + ["I"] * 3 + ["J"] * 6  # J from 40 %
    terms = re.findall(r"Coarse-to-fine loss terms: E_coarse (\S+), E_fine (\S+), E_boundary (\S+), "
                       r"E_pixelwise (\S+);", log)
    assert len(terms) == 10
    pixel = [float(t[3].rstrip(",")) for t in terms]
    assert all(np.isnan(pixel[:6])) and np.isfinite(pixel[6:]).all()  # β = 0 before epoch 6: not computed
    boundary = [float(t[2].rstrip(",")) for t in terms]
    assert np.isnan(boundary[0]) and np.isfinite(boundary[1:]).all()  # α = 0 in epoch 0, then +0.2 per epoch
    cases = sorted(p.name for p in (mll_run["raw"] / "labelsTs").glob("*.nii.gz"))
    assert sorted(p.name for p in mll_run["pred"].glob("*.nii.gz")) == cases
