"""Hard-sample pre-training (issue 11): stratified split, threshold, stage-2 pool, flipped samples, parameters; end to
end through nnUNetv2_train with 2 workers: the stage switch, what each stage sampled, a kill and --c."""
import json
import signal

import numpy as np
import pytest
import torch

from conftest import (KILL_DURING_EPOCH, PHANTOM_ID, check_killed_and_resumed, export_install_predict, run_cmd,
                      run_process, user_trainers)

from nnunetv2_ext.sampling.hard_pretrain import (HardPretrainParameters, Split, baseline_min_slice_dsc, check_split,
                                                 classify, stage2_pool, stratified_split, units_of)
from nnunetv2_ext.sampling.slice_table import SliceTable


def _table():
    # 4 cases: 10, 10, 20, 20 slices; positives 2, 2, 8, 8 (as blocks)
    return SliceTable(["a", "b", "c", "d"], [10, 10, 20, 20], [4, 4, 6, 6], [2, 2, 8, 8])


def test_stratified_split_matches_slices_and_positive_fraction():
    t = _table()
    s = stratified_split(t, 0.5, seed=0)
    st = s.stats(t)
    # the only perfect split pairs a short with a long case: 30 slices and 10 positives on each side
    assert (st["A"]["slices"], st["B"]["slices"]) == (30, 30)
    assert st["A"]["positive_fraction"] == st["B"]["positive_fraction"] == pytest.approx(1 / 3)
    assert sorted(s.a.tolist() + s.b.tolist()) == [0, 1, 2, 3] and len(s.a) == 2
    assert stratified_split(t, 0.5, seed=0).a.tolist() == s.a.tolist()  # deterministic
    assert len(stratified_split(t, 0.25, seed=0).a) == 1
    with pytest.raises(ValueError, match="at least 2 training cases"):
        stratified_split(SliceTable(["a"], [5], [1], [2]), 0.5, 0)


def test_split_without_foreground_in_a_part_is_refused():
    t = SliceTable(["a", "b"], [10, 10], [4, 5], [2, 0])  # case b has no foreground
    with pytest.raises(ValueError, match="part B .*no slice with foreground"):
        check_split(t, Split(np.array([0]), np.array([1])))


def test_threshold_fixed_and_quantile():
    positive = np.array([True, True, True, True, False, False])
    units = np.arange(6)
    dsc = np.array([0.2, 0.6, 0.8, 0.9, 1.0, 0.0])  # unit 5: a negative slice with false positives
    thr, hard = classify(units, dsc, positive, HardPretrainParameters(threshold=0.7))
    assert thr == 0.7 and hard.tolist() == [0, 1, 5]
    # default: the 0.25 quantile of the foreground slices' DSC (0.2, 0.6, 0.8, 0.9) = 0.5, ties included
    thr, hard = classify(units, dsc, positive, HardPretrainParameters())
    assert thr == pytest.approx(0.5) and hard.tolist() == [0, 5]
    thr, hard = classify(units, np.zeros(6), positive, HardPretrainParameters())
    assert thr == 0 and hard.tolist() == list(range(6))  # all missed: all hard
    # the paper's rule: at or below the baseline's minimum slice DSC (here 0.6: units 0, 1 and the false positive 5)
    thr, hard = classify(units, dsc, positive, HardPretrainParameters(threshold_baseline="nnUNetTrainer"), 0.6)
    assert thr == 0.6 and hard.tolist() == [0, 1, 5]


def test_baseline_min_slice_dsc_by_hand(tmp_path):
    """Two cases, slices along z: case a z=0 DSC 2*2/(2+4) = 0.667, z=1 no reference foreground (not counted, although
    the prediction has a false positive there), z=2 DSC 1; case b z=0 DSC 2*1/(1+3) = 0.5: the threshold is 0.5."""
    import SimpleITK as sitk
    (tmp_path / "val").mkdir()
    (tmp_path / "gt").mkdir()
    ref_a, pred_a = np.zeros((3, 4, 4), np.uint8), np.zeros((3, 4, 4), np.uint8)
    ref_a[0, 0, :4] = 1
    pred_a[0, 0, :2] = 1
    pred_a[1, 2, 2] = 1
    ref_a[2, 3, 3] = pred_a[2, 3, 3] = 1
    ref_b, pred_b = np.zeros((1, 4, 4), np.uint8), np.zeros((1, 4, 4), np.uint8)
    ref_b[0, 1, :3] = 1
    pred_b[0, 1, 0] = 1
    ref_b[0, 3, 3] = 2  # the ignore label: with ignore_label=2 this voxel does not count (else b's DSC changes)
    pred_b[0, 3, 3] = 1
    for case, ref, pred in (("a", ref_a, pred_a), ("b", ref_b, pred_b)):
        sitk.WriteImage(sitk.GetImageFromArray(ref), str(tmp_path / "gt" / f"{case}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(pred), str(tmp_path / "val" / f"{case}.nii.gz"))
    out = baseline_min_slice_dsc(str(tmp_path / "val"), str(tmp_path / "gt"), ".nii.gz", ignore_label=2)
    assert out == {"threshold": pytest.approx(0.5), "slice": "b z=0", "slices": 3, "cases": 2}
    counted = baseline_min_slice_dsc(str(tmp_path / "val"), str(tmp_path / "gt"), ".nii.gz")  # 2 * 2 / (2 + 4)
    assert counted["threshold"] == pytest.approx(2 / 3) and counted["slice"] == "a z=0"
    with pytest.raises(ValueError, match="holds no validation predictions"):
        baseline_min_slice_dsc(str(tmp_path / "nothing"), str(tmp_path / "gt"), ".nii.gz")
    (tmp_path / "gt" / "b.nii.gz").unlink()
    with pytest.raises(ValueError, match="case b .* has no reference"):
        baseline_min_slice_dsc(str(tmp_path / "val"), str(tmp_path / "gt"), ".nii.gz")


def test_paper_ratio_is_the_share_of_b_and_the_old_name_still_works():
    """The paper's ratio is B's share (issue 18, item 5); ``selection_ratio`` was A's share (the same at 0.5,
    inverted elsewhere): it still works, with a warning, and is converted."""
    t = _table()
    assert HardPretrainParameters(pretrain_ratio=0.75).a_share == pytest.approx(0.25)
    split = stratified_split(t, HardPretrainParameters(pretrain_ratio=0.75).a_share, seed=0)
    assert t.num_slices[split.b].sum() > t.num_slices[split.a].sum()  # B is the larger part
    with pytest.warns(DeprecationWarning, match="pretrain_ratio"):
        old = HardPretrainParameters(selection_ratio=0.25)
    assert old == HardPretrainParameters(pretrain_ratio=0.75) and "selection_ratio" not in old.as_dict()
    with pytest.raises(ValueError, match="not both"):  # refused before any warning
        HardPretrainParameters(selection_ratio=0.25, pretrain_ratio=0.3)
    # a sidecar of an older run (selection_ratio, flipped copies) compares in today's form
    saved = dict(HardPretrainParameters(hard_copies="flipped").as_dict(), selection_ratio=0.5)
    del saved["pretrain_ratio"], saved["threshold_baseline"]
    assert HardPretrainParameters.comparable(saved) == HardPretrainParameters(hard_copies="flipped").as_dict()


def test_stage2_pool_copies():
    t = _table()
    split = Split(np.array([0, 2]), np.array([1, 3]))
    b_units = units_of(t, split.b)
    hard = np.array([4, 5, 17])
    flipped = stage2_pool(t, split, hard, HardPretrainParameters(hard_copies="flipped"))
    assert sorted(flipped.selected[flipped.flip].tolist()) == [4, 5, 17]
    assert set(flipped.selected[~flipped.flip]) == set(b_units)
    # the default: the paper's "enhanced by flipping" = each hard slice as it is and mirrored, weight 2 (under
    # nnU-Net's random mirroring a flipped copy is drawn like a plain one, so the count is what matters)
    both = stage2_pool(t, split, hard, HardPretrainParameters())
    assert len(both.selected) == len(b_units) + 6 and both.flip.sum() == 3
    assert sorted(both.selected[~both.flip].tolist()) == sorted(b_units.tolist() + [4, 5, 17])
    easy = stage2_pool(t, split, hard, HardPretrainParameters(keep_easy=True, hard_copies="plain"))
    assert set(easy.selected.tolist()) == set(range(t.num_units)) and not easy.flip.any()


@pytest.mark.parametrize("kwargs, name", [({"pretrain_ratio": 1.0}, "pretrain_ratio"),
                                          ({"pretrain_ratio": 0}, "pretrain_ratio"),
                                          ({"selection_ratio": 1.0}, "selection_ratio"),
                                          ({"threshold_baseline": ""}, "threshold_baseline"),
                                          ({"threshold_baseline": "x", "threshold": 0.5}, "not both"),
                                          ({"threshold": 1.2}, "threshold"),
                                          ({"threshold_quantile": 0}, "threshold_quantile"),
                                          ({"stage1_fraction": 1}, "stage1_fraction"),
                                          ({"hard_copies": "mirrored"}, "hard_copies"),
                                          ({"sampling": "case"}, "sampling")])
def test_parameters_name_the_bad_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        HardPretrainParameters(**kwargs)


def test_flipped_units_are_mirrored(phantom_2d_loading):
    """A pool holding one slice, once plain and once flipped: the batches are mirror images along x."""
    from nnunetv2_ext.sampling.data_loader import nnUNetDataLoaderUnits
    from nnunetv2_ext.sampling.sampler import UnitPool
    p = phantom_2d_loading
    table = p.table
    unit = int(np.flatnonzero(table.positive)[3])
    batches = []
    for flip in (False, True):
        pool = UnitPool.from_units(table, np.array([unit]), np.array([flip]))
        dl = nnUNetDataLoaderUnits(p.ds, 2, p.patch, p.patch, p.lm, table, "slice", pool)  # whole slice: no crop
        batches.append(dl.generate_train_batch())
    plain, flipped = batches
    assert plain["units"].tolist() == flipped["units"].tolist() == [unit, unit]
    assert flipped["flip"].all() and not plain["flip"].any()
    torch.testing.assert_close(flipped["data"], plain["data"].flip(-1))
    torch.testing.assert_close(flipped["target"], plain["target"].flip(-1))
    assert not torch.equal(plain["target"], plain["target"].flip(-1))  # the slice is not symmetric: the test can fail


# ------------------------------------------------------------------------------------------------- end to end
KILLING_TRAINER = KILL_DURING_EPOCH + """
from nnunetv2_ext.trainers import nnUNetTrainerHardPretrainTiny


class nnUNetTrainerHardPretrainTinyKilled(KillDuringEpoch, nnUNetTrainerHardPretrainTiny):
    pass
"""


@pytest.mark.e2e
def test_hard_pretrain_two_stages_kill_resume_predict(phantom_2d, nnunet_dirs, tmp_path):
    from nnunetv2_ext.trainers import nnUNetTrainerHardPretrainTiny as T
    user_env = user_trainers(tmp_path / "user_trainers", KILLING_TRAINER, "killed")
    name = "nnUNetTrainerHardPretrainTinyKilled"
    fold = nnunet_dirs["nnUNet_results"] / phantom_2d.name / f"{name}__nnUNetPlans__2d" / "fold_0"
    cmd = ["nnUNetv2_train", str(PHANTOM_ID), "2d", "0", "-tr", name, "-device", "cpu"]
    # killed during epoch 2, the first epoch of stage 2 (2 epochs per stage): after the classification, before any
    # checkpoint of stage 2, so --c resumes from the end of stage 1 and must cross the switch again
    p = run_process(cmd, env=dict(user_env, KILL_IN_EPOCH="2"))
    assert p.returncode == -signal.SIGKILL, p.stdout[-3000:]
    before = json.load(open(fold / "hard_pretrain_log.json"))
    assert before["stage1_epochs"] == 2 and before["classification"]["epoch"] == 2
    assert torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)["current_epoch"] == 2
    run_cmd(cmd + ["--c"], env=user_env)
    check_killed_and_resumed(fold, T.tiny_num_epochs, kill_epoch=2)
    log = json.load(open(fold / "hard_pretrain_log.json"))
    assert log == before  # the same split, scores and hard set when the stage-1 model classifies part A again
    cls = log["classification"]
    assert cls["n_hard"] > 0 and cls["n_scored"] == log["split"]["A"]["slices"]
    first, resumed = (p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    assert first.count("part A classified") == resumed.count("part A classified") == 1 and "part A: " in resumed
    assert (fold / "hard_pretrain.png").stat().st_size > 1000

    # what was sampled: stage 1 only B's slices; stage 2 B's slices as they are and A's hard slices mirrored
    ids = json.load(open(nnunet_dirs["nnUNet_preprocessed"] / phantom_2d.name / "splits_final.json"))[0]["train"]
    info = json.load(open(nnunet_dirs["nnUNet_preprocessed"] / phantom_2d.name /
                          "nnunetv2_ext_slice_info_nnUNetPlans_2d.json"))
    table = SliceTable(ids, [info[f"{i}|ignore=None"]["num_slices"] for i in ids],
                       [info[f"{i}|ignore=None"]["first"] for i in ids], [info[f"{i}|ignore=None"]["k"] for i in ids])
    b_units = set(units_of(table, np.array([ids.index(c) for c in log["split"]["B"]["cases"]])).tolist())
    hard = set(cls["hard_units"])
    trace = [json.loads(line) for line in open(fold / "sampling_trace.jsonl")]
    stage1 = [(u, f) for r in trace if "units" in r and r["epoch"] < 2 for u, f in zip(r["units"], r["flip"])]
    stage2 = [(u, f) for r in trace if "units" in r and r["epoch"] >= 2 for u, f in zip(r["units"], r["flip"])]
    assert stage1 and all(u in b_units and not f for u, f in stage1)
    assert all((u in hard) or (u in b_units and not f) for u, f in stage2)  # hard: as is and mirrored
    assert any(f for _, f in stage2)  # hard slices of A were really drawn

    pred = tmp_path / "pred"
    run_cmd(["nnUNetv2_predict", "-i", phantom_2d / "imagesTs", "-o", pred, "-d", PHANTOM_ID, "-c", "2d", "-f", "0",
             "-tr", name, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env=user_env)
    assert len(list(pred.glob("*.nii.gz"))) == 2
    # shared as a zip and installed elsewhere, the model predicts the same (issue 20 item 16)
    export_install_predict(PHANTOM_ID, "2d", name, 0, phantom_2d / "imagesTs", pred, tmp_path / "shared", user_env,
                           ["--disable_tta"])


@pytest.mark.e2e  # nnUNetv2_train starts on the preprocessed phantom (the check needs its slice table)
def test_fold_with_a_single_case_is_refused(nnunet_dirs, phantom_2d):
    pre = nnunet_dirs["nnUNet_preprocessed"] / phantom_2d.name
    splits_file = pre / "splits_final.json"
    existed = splits_file.is_file()
    splits = json.load(open(splits_file)) if existed else []
    try:  # an extra fold with one training case, appended to the session's splits (restored afterwards)
        json.dump(splits + [{"train": ["case_000"], "val": ["case_001"]}], open(splits_file, "w"))
        p = run_process(["nnUNetv2_train", PHANTOM_ID, "2d", len(splits), "-tr", "nnUNetTrainerHardPretrainTiny",
                         "-device", "cpu"])
    finally:
        if existed:
            json.dump(splits, open(splits_file, "w"))
        else:
            splits_file.unlink()
    assert p.returncode != 0 and "at least 2 training cases" in p.stdout
    fold = nnunet_dirs["nnUNet_results"] / phantom_2d.name / "nnUNetTrainerHardPretrainTiny__nnUNetPlans__2d" / \
        f"fold_{len(splits)}"
    assert not (fold / "checkpoint_latest.pth").exists()


@pytest.mark.e2e
def test_paper_threshold_from_a_baseline_through_nnunet_commands(phantom_2d, nnunet_dirs):
    """The paper's rule through nnU-Net's commands: plain nnU-Net (tiny) trains fold 0, then the hard-sample trainer
    with ``threshold_baseline`` reads that fold's validation predictions and classifies part A with their minimum
    slice DSC. Without the baseline's validation (fold 1) it is refused before training, naming the parameter."""
    refused = run_process(["nnUNetv2_train", str(PHANTOM_ID), "2d", "1", "-tr",
                           "nnUNetTrainerHardPretrainBaselineMinTiny", "-device", "cpu"])
    assert refused.returncode != 0 and "threshold_baseline='nnUNetTrainerTiny'" in refused.stdout
    results = nnunet_dirs["nnUNet_results"] / phantom_2d.name
    baseline = results / "nnUNetTrainerTiny__nnUNetPlans__2d" / "fold_0"
    if not (baseline / "checkpoint_final.pth").exists():
        run_cmd(["nnUNetv2_train", str(PHANTOM_ID), "2d", "0", "-tr", "nnUNetTrainerTiny", "-device", "cpu"])
    run_cmd(["nnUNetv2_train", str(PHANTOM_ID), "2d", "0", "-tr", "nnUNetTrainerHardPretrainBaselineMinTiny",
             "-device", "cpu"])
    fold = results / "nnUNetTrainerHardPretrainBaselineMinTiny__nnUNetPlans__2d" / "fold_0"
    expected = baseline_min_slice_dsc(str(baseline / "validation"),
                                      str(nnunet_dirs["nnUNet_preprocessed"] / phantom_2d.name / "gt_segmentations"),
                                      ".nii.gz")
    log = json.load(open(fold / "hard_pretrain_log.json"))
    assert log["baseline_threshold"] == expected
    assert log["classification"]["threshold"] == pytest.approx(expected["threshold"])
    text = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "threshold from the baseline" in text and f"{expected['threshold']:.4f}" in text
