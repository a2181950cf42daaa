"""PNSS/HESS end to end through nnU-Net's own commands, with 2 augmentation workers.

- 2d: nnUNetTrainerPNSSHESSTiny is killed after two epochs and continued with --c; what was sampled in every phase is
  checked against the schedule and the published hard sets; find_best_configuration, ensembling and predict work;
- 3d_fullres with region-based labels and an ignore label (nnUNetTrainerPNSSTiny);
- the real abdominal CT with its pancreas label (nnUNetTrainerHESSExactTiny: the paper's scoring pass);
- bad parameters and data without foreground fail before training.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import PHANTOM_ID, REPO_ROOT, TEST_ENV, run_cmd

from nnunetv2_ext.sampling.pnss import PNSSSchedule


def _trace(fold_dir):
    """Records of the last training start (a killed run's partial epoch is superseded by the resumed run)."""
    recs = [json.loads(line) for line in open(fold_dir / "sampling_trace.jsonl")]
    starts = [i for i, r in enumerate(recs) if r["phase"] == "start"]
    return recs, recs[starts[-1] + 1:]


def _check_trace(records, trainer_cls, first_epoch, last_epoch):
    """Main batches inside the PNSS selection of their epoch, mini batches = the epoch's hard units."""
    by_epoch = {}
    for r in records:
        by_epoch.setdefault(r["epoch"], []).append(r)
    assert sorted(by_epoch) == list(range(first_epoch, last_epoch + 1))
    n_mini_total = 0
    for epoch, recs in by_epoch.items():
        main = [r for r in recs if r["phase"] == "main"]
        mini = [r for r in recs if r["phase"] == "mini"]
        hard = [r for r in recs if r["phase"] == "hard_set"]
        assert len(main) == trainer_cls.tiny_iterations_per_epoch
        assert [r["batch_index"] for r in main + mini] == sorted(r["batch_index"] for r in main + mini)
        if trainer_cls.hess_enabled:
            assert len(hard) == 1
            selected = set(hard[0]["selected"])
            assert all(set(r["units"]) <= selected for r in main), f"epoch {epoch}: unit outside the PNSS slab"
            hard_units = set(hard[0]["units"])
            assert all(set(r["units"]) <= hard_units for r in mini), f"epoch {epoch}: replayed a non-hard unit"
            bs = len(main[0]["units"])
            cap = int((trainer_cls.hess_max_epoch_cost - 1) * trainer_cls.tiny_iterations_per_epoch + 1e-9)
            assert len(mini) == min(-(-len(hard_units) // bs), cap)
            if len(hard_units) <= cap * bs:
                assert set(u for r in mini for u in r["units"]) == hard_units  # every hard unit replayed once
            n_mini_total += len(mini)
        else:
            assert not mini and not hard
    return n_mini_total


# ------------------------------------------------------------------------------------------------- 2d
# A tiny network trained for a few CPU iterations scores every slice 0 or 1, so Eq. 8 finds no hard slice and no mini
# epoch would run. This trainer, found through the user's own nnUNet_extTrainer folder (which our start-up hook must
# keep), replaces only the *source* of the scores: after the real update, every 5th selected unit gets DSC 0.6 and the
# rest 0.9, so the hard set is known. Plan publication, worker sampling, ordering and training are the real ones.
INJECTED_SCORES_TRAINER = """
import numpy as np
from nnunetv2_ext.trainers import nnUNetTrainerPNSSHESSTiny


class nnUNetTrainerPNSSHESSTinyInjected(nnUNetTrainerPNSSHESSTiny):
    def _update_hardness(self, epoch, selected):
        super()._update_hardness(epoch, selected)
        units = np.flatnonzero(selected)
        self.hardness.update(units, np.where(np.arange(len(units)) % 5 == 0, 0.6, 0.9), epoch)
"""


@pytest.mark.e2e
def test_pnsshess_2d_kill_resume_find_best_ensemble_predict(phantom_2d, nnunet_dirs, tmp_path):
    from nnunetv2_ext.trainers import nnUNetTrainerPNSSHESSTiny as T
    user_trainers = tmp_path / "user_trainers"
    user_trainers.mkdir()
    (user_trainers / "injected.py").write_text(INJECTED_SCORES_TRAINER)
    name = "nnUNetTrainerPNSSHESSTinyInjected"
    results = nnunet_dirs["nnUNet_results"] / phantom_2d.name
    fold = results / f"{name}__nnUNetPlans__2d" / "fold_0"
    user_env = {"nnUNet_extTrainer": str(user_trainers)}
    env = dict(os.environ, **TEST_ENV, **user_env)
    cmd = ["nnUNetv2_train", str(PHANTOM_ID), "2d", "0", "-tr", name, "-device", "cpu", "--npz"]

    # 1) train, kill hard once two epochs are on disk
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    log_file = fold / "sampling_log.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if log_file.is_file() and len(json.load(open(log_file))) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "training ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.load(open(log_file))
    ckpt = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    resumed_at = ckpt["current_epoch"]
    assert resumed_at >= 2 and "nnunetv2_ext_sampling" in ckpt
    scored_in_ckpt = int(np.isfinite(ckpt["nnunetv2_ext_sampling"]["hardness"]["dsc"]).sum())

    # 2) continue
    run_cmd(cmd + ["--c"], env=user_env)
    after = json.load(open(log_file))
    assert [r["epoch"] for r in after] == list(range(T.tiny_num_epochs))
    assert after[:resumed_at] == before[:resumed_at]  # history restored exactly
    sched = PNSSSchedule(T.pnss_alpha, T.pnss_beta)
    assert [r["r"] for r in after] == pytest.approx([sched.ratio(e) for e in range(T.tiny_num_epochs)])
    assert after[0]["n_selected"] == after[0]["n_total"] > after[-1]["n_selected"] > 0
    for key in ("epoch", "r", "n_selected", "n_total", "n_hard", "n_outliers", "mean_slice_dsc",
                "mini_epoch_iterations"):
        assert key in after[-1]
    train_log = "".join(open(f).read() for f in fold.glob("training_log_*.txt"))
    assert f"restored from checkpoint: hardness table with {scored_in_ckpt} scored units" in train_log
    assert "PNSS/HESS: r=0.00, selected slices" in train_log
    assert (fold / "sampling_progress.png").stat().st_size > 1000

    _, resumed = _trace(fold)
    n_mini = _check_trace(resumed, T, resumed_at, T.tiny_num_epochs - 1)
    assert n_mini > 0 and all(r["n_hard"] > 0 for r in after)
    assert any(r["mini_epoch_iterations"] == 5 for r in after)  # the cap (1.5 x 10 iterations) bites at r = 1
    # independent check of the slabs: every main-phase unit of an r = 0 epoch lies in a positive block
    info = json.load(open(nnunet_dirs["nnUNet_preprocessed"] / phantom_2d.name /
                          "nnunetv2_ext_slice_info_nnUNetPlans_2d.json"))
    splits = json.load(open(nnunet_dirs["nnUNet_preprocessed"] / phantom_2d.name / "splits_final.json"))
    ids = splits[0]["train"]
    offsets = np.cumsum([0] + [info[f"{i}|ignore=None"]["num_slices"] for i in ids])
    for r in resumed:
        if r["phase"] == "main" and sched.ratio(r["epoch"]) == 0:
            for u in r["units"]:
                c = int(np.searchsorted(offsets, u, side="right") - 1)
                e = info[f"{ids[c]}|ignore=None"]
                assert e["first"] <= u - offsets[c] < e["first"] + e["k"]

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


# ------------------------------------------------------------------------------------------------- 3d, regions, ignore
@pytest.mark.e2e
def test_pnss_3d_fullres_regions_and_ignore_label(nnunet_dirs, tmp_path):
    from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
    from nnunetv2_ext.trainers import nnUNetTrainerPNSSTiny as T
    did = 902
    raw = write_phantom_dataset(did, PhantomConfig(num_cases=6, num_test=1, shape=(20, 40, 40), lesions=True,
                                                   regions=True, ignore_label=True, dataset_name="PhantomRegions"),
                                str(nnunet_dirs["nnUNet_raw"]))
    run_cmd(["nnUNetv2_plan_and_preprocess", "-d", did, "-c", "3d_fullres", "-np", "1"])
    run_cmd(["nnUNetv2_train", did, "3d_fullres", "0", "-tr", T.__name__, "-device", "cpu"])
    fold = nnunet_dirs["nnUNet_results"] / "Dataset902_PhantomRegions" / f"{T.__name__}__nnUNetPlans__3d_fullres" / \
        "fold_0"
    log = json.load(open(fold / "sampling_log.json"))
    assert [r["r"] for r in log] == pytest.approx([1, 0.5, 0, 0])
    _, recs = _trace(fold)
    _check_trace(recs, T, 0, T.tiny_num_epochs - 1)
    # with the ignore label, the slab is built from real labels only (ignore band at z < 3 is not foreground)
    info = json.load(open(nnunet_dirs["nnUNet_preprocessed"] / "Dataset902_PhantomRegions" /
                          "nnunetv2_ext_slice_info_nnUNetPlans_3d_fullres.json"))
    assert all(e["first"] >= 3 for k, e in info.items() if k.endswith("|ignore=3"))
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
    run_cmd(["nnUNetv2_plan_and_preprocess", "-d", did, "-c", "2d", "-np", "1"])
    run_cmd(["nnUNetv2_train", did, "2d", "all", "-tr", T.__name__, "-device", "cpu"])
    fold = nnunet_dirs["nnUNet_results"] / raw.name / f"{T.__name__}__nnUNetPlans__2d" / "fold_all"
    log = json.load(open(fold / "sampling_log.json"))
    assert all(r["r"] == 1 and r["n_selected"] == r["n_total"] for r in log)  # HESS alone keeps every slice
    assert all(r["n_scored"] == r["n_selected"] and r["scoring"] == "exact" for r in log)  # every slice scored
    _, recs = _trace(fold)
    _check_trace(recs, T, 0, T.tiny_num_epochs - 1)
    pred = tmp_path / "pred"
    run_cmd(["nnUNetv2_predict", "-i", raw / "imagesTr", "-o", pred, "-d", did, "-c", "2d", "-f", "all", "-tr",
             T.__name__, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"])
    out = sitk.ReadImage(str(pred / "ct_000.nii.gz"))
    assert out.GetSize() == img.GetSize() and np.allclose(out.GetOrigin(), img.GetOrigin())


# ------------------------------------------------------------------------------------------------- bad input
def test_bad_parameters_fail_before_training(phantom_2d):
    from nnunetv2_ext.trainers import nnUNetTrainerPNSSHESS
    plans = json.load(open(os.path.join(os.environ["nnUNet_preprocessed"], phantom_2d.name, "nnUNetPlans.json")))
    dataset_json = json.load(open(phantom_2d / "dataset.json"))
    for attrs, message in (({"pnss_alpha": 1.5}, "alpha"), ({"pnss_beta": 0}, "beta"),
                           ({"hess_max_epoch_cost": 1.0}, "hess_max_epoch_cost"),
                           ({"hess_scoring": "magic"}, "hess_scoring"),
                           ({"hess_outlier_threshold": 1.0}, "hess_outlier_threshold")):
        bad = type("nnUNetTrainerBad", (nnUNetTrainerPNSSHESS,), attrs)
        with pytest.raises(ValueError, match=message):
            bad(dict(plans, continue_training=False), "2d", 0, dataset_json, torch.device("cpu"))


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
    run_cmd(["nnUNetv2_plan_and_preprocess", "-d", did, "-c", "2d", "-np", "1"])
    with open(nnunet_dirs["nnUNet_preprocessed"] / raw.name / "splits_final.json", "w") as f:
        json.dump([{"train": ["e_1", "e_2"], "val": ["e_0"]}], f)
    p = subprocess.run(["nnUNetv2_train", str(did), "2d", "0", "-tr", "nnUNetTrainerPNSSTiny", "-device", "cpu"],
                       env=dict(os.environ, **TEST_ENV), capture_output=True, text=True, timeout=600)
    assert p.returncode != 0
    assert "PNSS would select no slice" in p.stderr + p.stdout and "fold 0" in p.stderr + p.stdout
    fold = nnunet_dirs["nnUNet_results"] / raw.name / "nnUNetTrainerPNSSTiny__nnUNetPlans__2d" / "fold_0"
    assert not (fold / "checkpoint_final.pth").exists() and not (fold / "sampling_log.json").exists()
