"""PNSS/HESS end to end through nnU-Net's own commands, with 2 augmentation workers.

- 2d, the paper's epochs (passes over D^r) with a neutral budget: the training kills itself between the sampling
  state and nnU-Net's checkpoint and is continued with --c; the log is checked against an independently computed
  epoch plan, and what was sampled in every phase against it and the published hard sets (far negatives included);
  find_best_configuration, ensembling and predict work;
- 3d_fullres with region-based labels and an ignore label (nnUNetTrainerPNSSTiny);
- the real abdominal CT with its pancreas label (nnUNetTrainerHESSExactTiny: the paper's scoring pass);
- bad parameters and data without foreground fail before training.
"""
import json
import os
import signal

import numpy as np
import pytest
import torch

from conftest import (PHANTOM_ID, export_install_predict, make_trainer, plan_and_preprocess, run_cmd, run_process,
                      user_trainers)

from nnunetv2_ext.sampling.epoch_plan import build_epoch_plan
from nnunetv2_ext.sampling.slice_table import SliceTable


def _trace(fold_dir):
    """Records of the last training start (a killed run's partial epoch is superseded by the resumed run)."""
    recs = [json.loads(line) for line in open(fold_dir / "sampling_trace.jsonl")]
    starts = [i for i, r in enumerate(recs) if r["phase"] == "start"]
    return recs, recs[starts[-1] + 1:]


def _slice_table(nnunet_dirs, dataset_name, configuration, ids, ignore=None):
    """The slice table of the training cases ``ids``, rebuilt independently from the cache file."""
    pre = nnunet_dirs["nnUNet_preprocessed"] / dataset_name
    info = json.load(open(pre / f"nnunetv2_ext_slice_info_nnUNetPlans_{configuration}.json"))
    e = [info[f"{i}|ignore={ignore}"] for i in ids]
    return SliceTable(list(ids), [x["num_slices"] for x in e], [x["first"] for x in e], [x["k"] for x in e],
                      [x["positive"] for x in e])


def _fold_ids(nnunet_dirs, dataset_name, fold=0):
    return json.load(open(nnunet_dirs["nnUNet_preprocessed"] / dataset_name / "splits_final.json"))[fold]["train"]


def _check_trace(records, log, table, first_epoch, last_epoch):
    """Against the sampling log: main batches are in D^{r(e)} except the flagged far negatives (which are outside
    it), mini batches are the epoch's hard units, and main + mini iterations are those the log reports. Returns the
    far negatives and main samples of the epochs with r < 1 (at r = 1 nothing is dropped, so none is far)."""
    by_epoch = {}
    for r in records:
        by_epoch.setdefault(r["epoch"], []).append(r)
    assert sorted(by_epoch) == list(range(first_epoch, last_epoch + 1))
    n_far = n_main_samples = 0
    for epoch, recs in by_epoch.items():
        rec = log[epoch]
        main = [r for r in recs if r["phase"] == "main"]
        mini = [r for r in recs if r["phase"] == "mini"]
        hard = [r for r in recs if r["phase"] == "hard_set"]
        assert len(main) == rec["main_iterations"] and len(mini) == rec["mini_epoch_iterations"]
        assert [r["batch_index"] for r in main + mini] == sorted(r["batch_index"] for r in main + mini)
        selected = table.selected_mask(rec["r"])
        assert selected.sum() == rec["n_selected"]
        for r in main:
            units, far = np.array(r["units"]), np.array(r["far"], bool)
            assert selected[units[~far]].all(), f"epoch {epoch}: sampled a slice outside D^r"
            assert not selected[units[far]].any(), f"epoch {epoch}: a 'far negative' inside D^r"
            if rec["r"] < 1:
                n_far += int(far.sum())
                n_main_samples += len(units)
            else:
                assert not far.any(), f"epoch {epoch}: a far negative at r = 1"
        assert len(hard) == int(rec["hess_round"])
        if hard:
            assert set(hard[0]["selected"]) == set(np.flatnonzero(selected).tolist())
            hard_units = set(hard[0]["units"])
            assert all(set(r["units"]) <= hard_units for r in mini), f"epoch {epoch}: replayed a non-hard unit"
        else:
            assert not mini
    return n_far, n_main_samples


# ------------------------------------------------------------------------------------------------- 2d
# A tiny network trained for a few CPU iterations scores every slice 0 or 1, so Eq. 8 finds no hard slice and no mini
# epoch would run. This trainer, found through the user's own nnUNet_extTrainer folder (which our start-up hook must
# keep), replaces only the *source* of the scores: the exact pass gives every 5th selected unit DSC 0.6 and the rest
# 0.9, so the hard set is known. It also kills its whole process group right after writing the sampling state of the
# checkpoint at the end of epoch 1, before nnU-Net writes the checkpoint itself (the worst moment for --c).
INJECTED_SCORES_TRAINER = """
import os, signal
import numpy as np
from nnunetv2_ext.trainers import nnUNetTrainerPNSSHESSPassTiny


class nnUNetTrainerPNSSHESSPassTinyInjected(nnUNetTrainerPNSSHESSPassTiny):
    def score_units(self, units):
        return units, np.where(np.arange(len(units)) % 5 == 0, 0.6, 0.9).astype(np.float32)

    def write_sampling_sidecar(self, filename):
        super().write_sampling_sidecar(filename)
        if os.environ.get("KILL_AT_EPOCH") == str(self.current_epoch) and filename.endswith("checkpoint_latest.pth"):
            os.killpg(os.getpgid(0), signal.SIGKILL)
"""


@pytest.mark.e2e
def test_pnsshess_2d_paper_epochs_kill_resume_find_best_ensemble_predict(phantom_2d, nnunet_dirs, tmp_path):
    from nnunetv2_ext.trainers import nnUNetTrainerPNSSHESSPassTiny as T
    user_env = user_trainers(tmp_path / "user_trainers", INJECTED_SCORES_TRAINER, "injected")
    name = "nnUNetTrainerPNSSHESSPassTinyInjected"
    results = nnunet_dirs["nnUNet_results"] / phantom_2d.name
    fold = results / f"{name}__nnUNetPlans__2d" / "fold_0"
    cmd = ["nnUNetv2_train", str(PHANTOM_ID), "2d", "0", "-tr", name, "-device", "cpu", "--npz"]

    # 1) train; the trainer kills itself between the sampling state and nnU-Net's checkpoint at the end of epoch 1
    p = run_process(cmd, env=dict(user_env, KILL_AT_EPOCH="1"))
    assert p.returncode == -signal.SIGKILL, p.stdout[-3000:]
    before = json.load(open(fold / "sampling_log.json"))
    ckpt = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 1 and len(before) == 1  # nnU-Net's checkpoint is still the one of epoch 0
    sidecar = torch.load(fold / "checkpoint_latest_sampling.pt", weights_only=False)["states"]
    assert sorted(sidecar) == [1, 2]  # the state for the checkpoint that was never written, and the one on disk

    # 2) continue
    run_cmd(cmd + ["--c"], env=user_env)
    log = json.load(open(fold / "sampling_log.json"))
    assert [r["epoch"] for r in log] == list(range(T.tiny_num_epochs))
    assert log[:1] == before  # history restored exactly
    table = _slice_table(nnunet_dirs, phantom_2d.name, "2d", _fold_ids(nnunet_dirs, phantom_2d.name))
    plan = build_epoch_plan(T.sampling, T.tiny_num_epochs, T.tiny_iterations_per_epoch * T.tiny_batch_size,
                            lambda r: int(table.selected_mask(r).sum()))
    assert [r["r"] for r in log] == pytest.approx(plan.r.tolist())
    assert [r["passes"] for r in log] == pytest.approx(plan.passes_before[1:].tolist(), abs=1e-3)
    assert [r["hess_round"] for r in log] == plan.hess_round.tolist() == [False, True, True, False]
    assert log[0]["r"] == 1 and log[-1]["r"] == 0  # the paper's epochs reach r = 0 within the 4 epochs
    # equal budget: every mini epoch is paid for by the next epoch
    assert sum(r["main_iterations"] + r["mini_epoch_iterations"] for r in log) == \
        T.tiny_num_epochs * T.tiny_iterations_per_epoch
    assert log[1]["mini_epoch_iterations"] > 0
    assert log[2]["main_iterations"] == T.tiny_iterations_per_epoch - log[1]["mini_epoch_iterations"]
    assert all(r["n_hard"] == len(range(0, r["n_selected"], 5)) for r in log if r["hess_round"])
    train_log = "".join(open(f).read() for f in fold.glob("training_log_*.txt"))
    assert "PNSS/HESS: restored from checkpoint" in train_log and "continuing at epoch 1" in train_log
    assert "PNSS/HESS: r=0.00" in train_log and "passes over D^r" in train_log
    assert (fold / "sampling_progress.png").stat().st_size > 1000
    assert not (fold / "checkpoint_latest_sampling.pt").exists() and (fold / "checkpoint_final_sampling.pt").exists()

    _, resumed = _trace(fold)
    n_far, n_main = _check_trace(resumed, log, table, 1, T.tiny_num_epochs - 1)
    # the far-negative share is really drawn: at r < 1 (epochs 2-3 here) a share of 0.5 of the 8 non-oversampled draws
    # of a batch of 12 (nnU-Net oversamples the last 4) gives about a third of the main samples
    assert T.sampling.far_negative_share == 0.5 and T.tiny_batch_size == 12
    assert 0.2 * n_main < n_far < 0.47 * n_main, (n_far, n_main)

    # 3) baseline, find_best_configuration (ensembles the two trainers), predict
    run_cmd(["nnUNetv2_train", PHANTOM_ID, "2d", "0", "-tr", "nnUNetTrainerTiny", "-device", "cpu", "--npz"])
    out = run_cmd(["nnUNetv2_find_best_configuration", PHANTOM_ID, "-c", "2d", "-tr", "nnUNetTrainerTiny",
                   name, "-f", "0", "-np", "1"], env=user_env)
    assert "ensemble" in out.lower()
    assert list((results / "ensembles").glob("ensemble___*"))
    pred = tmp_path / "pred"
    run_cmd(["nnUNetv2_predict", "-i", phantom_2d / "imagesTs", "-o", pred, "-d", PHANTOM_ID, "-c", "2d", "-f", "0",
             "-tr", name, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env=user_env)
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == ["case_010.nii.gz", "case_011.nii.gz"]
    # shared as a zip and installed into an empty results folder, the model predicts the same (issue 20 item 16)
    export_install_predict(PHANTOM_ID, "2d", name, 0, phantom_2d / "imagesTs", pred, tmp_path / "shared", user_env,
                           ["--disable_tta"])


# ------------------------------------------------------------------------------------------------- 3d, regions, ignore
@pytest.mark.e2e
def test_pnss_3d_fullres_regions_and_ignore_label(nnunet_dirs, tmp_path):
    from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
    from nnunetv2_ext.trainers import nnUNetTrainerPNSSTiny as T
    did = 902
    raw = write_phantom_dataset(did, PhantomConfig(num_cases=6, num_test=1, shape=(20, 40, 40), lesions=True,
                                                   regions=True, ignore_label=True, dataset_name="PhantomRegions"),
                                str(nnunet_dirs["nnUNet_raw"]))
    plan_and_preprocess(did, ["3d_fullres"])
    run_cmd(["nnUNetv2_train", did, "3d_fullres", "0", "-tr", T.__name__, "-device", "cpu"])
    name = "Dataset902_PhantomRegions"
    fold = nnunet_dirs["nnUNet_results"] / name / f"{T.__name__}__nnUNetPlans__3d_fullres" / "fold_0"
    log = json.load(open(fold / "sampling_log.json"))
    assert [r["r"] for r in log] == pytest.approx([1, 0.5, 0, 0])
    _, recs = _trace(fold)
    table = _slice_table(nnunet_dirs, name, "3d_fullres", _fold_ids(nnunet_dirs, name), ignore=3)
    _check_trace(recs, log, table, 0, T.tiny_num_epochs - 1)
    # with the ignore label, the slab is built from real labels only (ignore band at z < 3 is not foreground)
    assert (table.first >= 3).all()
    pred = tmp_path / "pred"
    run_cmd(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", pred, "-d", did, "-c", "3d_fullres",
             "-f", "0", "-tr", T.__name__, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"])
    assert (pred / "case_006.nii.gz").is_file()


# ------------------------------------------------------------------------------------------------- real CT
@pytest.mark.e2e
def test_hess_on_real_ct_pancreas(nnunet_dirs, shared_data, tmp_path):
    import SimpleITK as sitk
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2_ext.trainers import nnUNetTrainerHESSExactTiny as T
    did = 903
    raw = nnunet_dirs["nnUNet_raw"] / "Dataset903_RealCTPancreas"
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    img = sitk.ReadImage(str(shared_data / "real_ct" / "ct_abdomen_3mm.nii.gz"))
    organs = sitk.ReadImage(str(shared_data / "real_ct" / "ct_abdomen_3mm_organs.nii.gz"))
    pancreas = sitk.Cast(organs == 10, sitk.sitkUInt8)  # TotalSegmentator v1: 10 = pancreas
    assert 200 < sitk.GetArrayViewFromImage(pancreas).sum() < 400
    for i, flip in enumerate((False, True)):  # the scan and its left-right mirror: two training cases
        im, lab = (sitk.Flip(x, [True, False, False]) if flip else x for x in (img, pancreas))
        sitk.WriteImage(im, str(raw / "imagesTr" / f"ct_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(lab, str(raw / "labelsTr" / f"ct_{i:03d}.nii.gz"))
    generate_dataset_json(str(raw), {0: "CT"}, {"background": 0, "pancreas": 1}, 2, ".nii.gz")
    plan_and_preprocess(did, ["2d"])
    run_cmd(["nnUNetv2_train", did, "2d", "all", "-tr", T.__name__, "-device", "cpu"])
    fold = nnunet_dirs["nnUNet_results"] / raw.name / f"{T.__name__}__nnUNetPlans__2d" / "fold_all"
    log = json.load(open(fold / "sampling_log.json"))
    assert all(r["r"] == 1 and r["n_selected"] == r["n_total"] for r in log)  # HESS alone keeps every slice
    rounds = [r for r in log if r["hess_round"]]
    assert len(rounds) == T.tiny_num_epochs - 1  # after every epoch but the last (neutral budget)
    assert all(r["n_scored"] == r["n_selected"] and r["scoring"] == "exact" for r in rounds)  # every slice scored
    _, recs = _trace(fold)
    _check_trace(recs, log, _slice_table(nnunet_dirs, raw.name, "2d", ["ct_000", "ct_001"]), 0, T.tiny_num_epochs - 1)
    pred = tmp_path / "pred"
    run_cmd(["nnUNetv2_predict", "-i", raw / "imagesTr", "-o", pred, "-d", did, "-c", "2d", "-f", "all", "-tr",
             T.__name__, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"])
    out = sitk.ReadImage(str(pred / "ct_000.nii.gz"))
    assert out.GetSize() == img.GetSize() and np.allclose(out.GetOrigin(), img.GetOrigin())


# ------------------------------------------------------------------------------------------------- bad input
def test_bad_parameters_fail_before_training(phantom_2d_plans):
    from nnunetv2_ext.sampling.parameters import SamplingParameters
    from nnunetv2_ext.trainers import nnUNetTrainerPNSSHESS
    for attrs, message in (({"sampling": {"alpha": 0.1}}, "must be a SamplingParameters"),
                           ({"pnss_alpha": 0.1}, r"pnss_alpha.*no longer read.*SamplingParameters")):
        bad = type("nnUNetTrainerBad", (nnUNetTrainerPNSSHESS,), attrs)
        with pytest.raises(ValueError, match=message):
            make_trainer(bad, phantom_2d_plans.plans, phantom_2d_plans.dataset_json)
    with pytest.raises(ValueError, match="epoch_unit"):  # a bad value fails where the trainer class is written
        type("nnUNetTrainerBad", (nnUNetTrainerPNSSHESS,), {"sampling": SamplingParameters(epoch_unit="weeks")})


@pytest.mark.e2e
def test_fold_without_foreground_is_refused(nnunet_dirs):
    """PNSS with r reaching 0 on training cases without any foreground would train on nothing: refuse before
    training. (nnU-Net itself refuses to plan a dataset without any foreground, so the empty cases are one fold's
    training set, set by splits_final.json.)"""
    import SimpleITK as sitk
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    did = 904
    raw = nnunet_dirs["nnUNet_raw"] / "Dataset904_Empty"
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        lab = np.zeros((8, 32, 32), np.uint8)
        if i == 0:
            lab[3:5, 10:20, 10:20] = 1
        sitk.WriteImage(sitk.GetImageFromArray((rng.normal(0, 100, lab.shape) + 200 * lab).astype(np.int16)),
                        str(raw / "imagesTr" / f"e_{i}_0000.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(lab), str(raw / "labelsTr" / f"e_{i}.nii.gz"))
    generate_dataset_json(str(raw), {0: "CT"}, {"background": 0, "organ": 1}, 3, ".nii.gz")
    plan_and_preprocess(did, ["2d"])
    with open(nnunet_dirs["nnUNet_preprocessed"] / raw.name / "splits_final.json", "w") as f:
        json.dump([{"train": ["e_1", "e_2"], "val": ["e_0"]}], f)
    p = run_process(["nnUNetv2_train", did, "2d", "0", "-tr", "nnUNetTrainerPNSSTiny", "-device", "cpu"])
    assert p.returncode != 0
    assert "PNSS would select no slice" in p.stdout and "fold 0" in p.stdout
    fold = nnunet_dirs["nnUNet_results"] / raw.name / "nnUNetTrainerPNSSTiny__nnUNetPlans__2d" / "fold_0"
    assert not (fold / "checkpoint_final.pth").exists() and not (fold / "sampling_log.json").exists()
