"""nnUNetv2_ext_benchmark: budget trainers by name, seeds that control a run (workers on), patient-grouped splits,
the hierarchical bootstrap (hand-computed), bad input refused before any training, and the whole command on the
phantom (list, one run by index, continue, collect)."""
import json
import os
import pickle
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import run_cmd, run_process, user_trainers
from nnunetv2_ext.benchmark.budget import (Budget, BudgetError, budget_name, kept_checkpoint, kept_epochs,
                                           make_budget_trainer, parse_name,
                                           resolve, scaled_features)
from nnunetv2_ext.benchmark.splits import (SplitError, grouped_splits, groups_from_file, groups_from_regex,
                                           write_splits)
from nnunetv2_ext.benchmark.stats import (hierarchical_bootstrap_difference, mean_statistic, per_seed,
                                          worst_statistic)


# ------------------------------------------------------------------------------------------------- budget
def test_budget_names_round_trip_and_bad_values():
    b = Budget(30, 50, 5, 8, 8, 2)
    name = budget_name("nnUNetTrainerPNSSHESS_MLL", b)
    assert name == "nnUNetTrainerPNSSHESS_MLL_BM30x50v5b8w8s2"
    assert "__" not in name  # nnU-Net splits result folder names at "__"
    assert parse_name(name) == ("nnUNetTrainerPNSSHESS_MLL", b)
    assert parse_name("nnUNetTrainerPNSSHESS_a01_b1") is None
    kept = Budget(30, 50, 5, 8, 8, 2, keep_every=10)  # weights kept after epochs 10 and 20 (30: checkpoint_final)
    assert budget_name("nnUNetTrainer", kept) == "nnUNetTrainer_BM30x50v5b8w8s2k10"
    assert parse_name("nnUNetTrainer_BM30x50v5b8w8s2k10") == ("nnUNetTrainer", kept)
    assert kept_epochs(kept) == [10, 20] and kept_epochs(b) == [] and kept_checkpoint(10) == "checkpoint_epoch_10.pth"
    for kwargs, word in (({"epochs": 0}, "epochs"), ({"seed": 0}, "seed"), ({"batch": -1}, "batch"),
                         ({"iterations": 0}, "iterations"), ({"width": -2}, "width"), ({"keep_every": -1}, "keep")):
        with pytest.raises(BudgetError, match=word):
            Budget(**dict(dict(epochs=1, iterations=1), **kwargs))
    # the plans' 32-64-...-512 network at first-stage width 8 (hand-computed); 0 keeps it
    assert scaled_features([32, 64, 128, 256, 512, 512], 8) == [8, 16, 32, 64, 128, 128]
    assert scaled_features([32, 64], 0) == [32, 64]


def test_budget_trainer_found_by_nnunet_for_ours_and_a_users(tmp_path, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunetv2_ext._register_trainers import register
    from nnunetv2_ext.trainers import nnUNetTrainerHESS
    env = user_trainers(tmp_path / "mine", "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer"
                                           "\n\nclass MyTrainer(nnUNetTrainer):\n    marker = 42\n", "my_trainers_bm")
    monkeypatch.setenv("nnUNet_extTrainer", env["nnUNet_extTrainer"])
    register()  # as the start-up hook does in every process: our folder after the user's
    cls = recursive_find_trainer_class_by_name("nnUNetTrainerHESS_BM3x4v2b2w4s7")
    assert issubclass(cls, nnUNetTrainerHESS) and cls.budget == Budget(3, 4, 2, 2, 4, 7) and cls.seed == 7
    assert pickle.loads(pickle.dumps(cls)) is cls  # workers and DDP processes get the same class by name
    mine = recursive_find_trainer_class_by_name("MyTrainer_BM1x1v1b0w0s1")
    assert mine.marker == 42 and issubclass(mine, nnUNetTrainer)
    assert [c.__name__ for c in mine.__mro__[1:4]] == ["BudgetMixin", "SeededRunMixin", "MyTrainer"]
    with pytest.raises(BudgetError, match="unknown trainer 'NoSuchTrainer'"):
        resolve("NoSuchTrainer_BM1x1v1b0w0s1")
    with pytest.raises(AttributeError):  # any other name: nnU-Net's hasattr lookup moves on
        resolve("nnUNetTrainerHESS")
    assert make_budget_trainer(nnUNetTrainerHESS, Budget(3, 4, 2, 2, 4, 7)) is cls


def test_budget_applies_to_the_trainer_and_its_network(phantom_2d, phantom_2d_plans):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from conftest import make_trainer
    cls = make_budget_trainer(nnUNetTrainer, Budget(7, 9, 3, 2, 4, 5))
    t = make_trainer(cls, phantom_2d_plans.plans, phantom_2d_plans.dataset_json)
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch, t.seed) == (7, 9, 3, 5)
    t._set_batch_size_and_oversample()
    assert t.batch_size == 2
    t.initialize()
    first = next(m for m in t.network.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.out_channels == 4
    weights = first.weight.detach().clone()
    t2 = make_trainer(cls, phantom_2d_plans.plans, phantom_2d_plans.dataset_json)
    t2.initialize()  # the same seed: the same initial weights; another seed: other weights
    assert torch.equal(next(m for m in t2.network.modules() if isinstance(m, torch.nn.Conv2d)).weight, weights)
    t3 = make_trainer(make_budget_trainer(nnUNetTrainer, Budget(7, 9, 3, 2, 4, 6)), phantom_2d_plans.plans,
                      phantom_2d_plans.dataset_json)
    t3.initialize()
    assert not torch.equal(next(m for m in t3.network.modules() if isinstance(m, torch.nn.Conv2d)).weight, weights)


def test_a_budget_trainer_reads_its_baseline_from_the_same_budget_and_seed(phantom_2d_plans):
    """Hard pre-training's paper threshold under the benchmark: the baseline is plain nnU-Net's run with the same
    budget and seed, and without its validation the trainer is refused naming that run."""
    from conftest import make_trainer
    from nnunetv2_ext.benchmark.budget import peer_trainer_name
    from nnunetv2_ext.trainers.small_variants import nnUNetTrainerHardPretrainBaselineMinTiny as T
    b = Budget(7, 9, 3, 2, 4, 5)
    cls = make_budget_trainer(T, b)
    assert peer_trainer_name(cls, "nnUNetTrainerTiny") == "nnUNetTrainerTiny_BM7x9v3b2w4s5"
    assert peer_trainer_name(T, "nnUNetTrainerTiny") == "nnUNetTrainerTiny"  # outside a benchmark: unchanged
    with pytest.raises(ValueError, match=r"threshold_baseline='nnUNetTrainerTiny_BM7x9v3b2w4s5'.*fold 0"):
        make_trainer(cls, phantom_2d_plans.plans, phantom_2d_plans.dataset_json)


def test_seeded_augmenter_pins_batchgenerators():
    from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

    from nnunetv2_ext.nnunet_adapters.augmenters import seeded_augmenter

    class Loader:
        def __iter__(self):
            return self

        def __next__(self):
            return {"x": np.random.rand(1)}

        def set_thread_id(self, thread_id):
            pass

    nondet = NonDetMultiThreadedAugmenter(Loader(), None, 2, num_cached=2, seeds=None)
    seeded, how = seeded_augmenter(nondet, 3)
    try:
        assert isinstance(seeded, MultiThreadedAugmenter) and seeded.seeds == [3000, 3001] and "restarted" in how
        assert seeded.generator is nondet.generator and seeded.num_processes == 2
        a = [float(next(seeded)["x"][0]) for _ in range(4)]
    finally:
        seeded._finish()
    again, _ = seeded_augmenter(NonDetMultiThreadedAugmenter(Loader(), None, 2, num_cached=2, seeds=None), 3)
    try:
        assert [float(next(again)["x"][0]) for _ in range(4)] == a  # same seeds: same batches, same order
    finally:
        again._finish()
    kept, how = seeded_augmenter(MultiThreadedAugmenter(Loader(), None, 2, 2, [7, 8]), 3)
    assert kept.seeds == [7, 8] and "kept" in how
    single = SingleThreadedAugmenter(Loader(), None)
    assert seeded_augmenter(single, 3)[0] is single
    with pytest.raises(TypeError, match="cannot seed"):
        seeded_augmenter(iter([1, 2]), 3)


# ------------------------------------------------------------------------------------------------- splits
def test_grouped_splits_keep_patients_together(tmp_path):
    cases = [f"PANCREAS_{p:04d}_{1000 + s}" for p in range(1, 8) for s in range(p % 3 + 1)]
    groups = groups_from_regex(cases, r"^(PANCREAS_\d+)_")
    splits = grouped_splits(groups, 5)
    assert len(splits) == 5
    val = [c for fold in splits for c in fold["val"]]
    assert sorted(val) == sorted(cases)  # every case validated exactly once
    for fold in splits:
        assert not {groups[c] for c in fold["val"]} & {groups[c] for c in fold["train"]}
        assert fold["val"]
    with pytest.raises(SplitError, match="PANCREAS_x"):
        groups_from_regex(cases + ["PANCREAS_x"], r"^(PANCREAS_\d+)_")
    with pytest.raises(SplitError, match="3 group"):
        grouped_splits({c: groups[c] for c in cases if groups[c] in ("PANCREAS_0001", "PANCREAS_0002",
                                                                     "PANCREAS_0003")}, 5)
    mapping = tmp_path / "g.json"
    mapping.write_text(json.dumps({c: groups[c] for c in cases[1:]}))
    with pytest.raises(SplitError, match=cases[0]):
        groups_from_file(cases, str(mapping))
    # written where nnU-Net reads it; the same folds again are fine; someone's other split is never replaced
    pre = tmp_path / "pre"
    write_splits(str(pre), splits)
    write_splits(str(pre), splits)
    (pre / "splits_final.json").write_text(json.dumps(splits[::-1]))
    with pytest.raises(SplitError, match="not replaced"):
        write_splits(str(pre), splits)
    assert json.loads((pre / "splits_final.json").read_text()) == splits[::-1]


# ------------------------------------------------------------------------------------------------- statistics
def test_hierarchical_bootstrap_hand_computed():
    cases = np.ones(6)
    # two seeds of the trainer (all cases 1, all cases 0), one of the baseline (all 0): the seed draw alone decides
    # a resample: both seeds 1 (p = 1/4) -> 1, one each (1/2) -> 0.5, both 0 (1/4) -> 0; 95 % interval [0, 1]
    other, base = np.stack([cases, 0 * cases]), np.zeros((1, 6))
    d, ci = hierarchical_bootstrap_difference(other, base, mean_statistic, n_resamples=4000)
    assert d == 0.5 and ci == [0.0, 1.0]
    # one seed each: the ordinary paired case bootstrap; a constant difference has a point interval
    d, ci = hierarchical_bootstrap_difference(np.full((1, 6), 0.7), np.full((1, 6), 0.5), mean_statistic)
    assert d == pytest.approx(0.2) and ci == pytest.approx([0.2, 0.2])
    # worst-10 % per seed: ceil(0.1 * 10) = 1 worst case; seeds averaged
    m = np.array([[0.9] * 9 + [0.1], [0.8] * 9 + [0.3]])
    assert per_seed(m, worst_statistic("DSC")).tolist() == pytest.approx([0.1, 0.3])
    with pytest.raises(ValueError, match="same cases"):
        hierarchical_bootstrap_difference(np.zeros((2, 3)), np.zeros((2, 4)), mean_statistic)


def test_nih_slices_converter_groups_patients(tmp_path, monkeypatch, shared_data):
    from nnunetv2_ext.dataset_conversion.nih_slices import downsample, main
    src = shared_data / "nih_pancreas_slices"
    sub = tmp_path / "src"
    patients = sorted({f.name[:13] for f in (src / "images").iterdir()})[:7]
    for d in ("images", "labels"):
        (sub / d).mkdir(parents=True)
        for f in (src / d).iterdir():
            if f.name[:13] in patients:
                (sub / d / f.name).symlink_to(f)
    raw = tmp_path / "raw"
    raw.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    assert main(["-i", str(sub), "-d", "903", "--test-patients", "1", "-np", "1"]) == 0
    out = next(raw.glob("Dataset903_*"))
    groups = json.loads((out / "case_groups.json").read_text())
    test = {groups[f.name[:-7]] for f in (out / "labelsTs").iterdir()}
    assert len(test) == 1 and not test & {groups[f.name[:-7]] for f in (out / "labelsTr").iterdir()}
    for fold in json.loads((out / "splits_final.json").read_text()):
        assert not {groups[c] for c in fold["val"]} & {groups[c] for c in fold["train"]}
    import SimpleITK as sitk
    img = sitk.ReadImage(str(next((out / "imagesTr").iterdir())))
    assert img.GetSize() == (256, 256, 1) and img.GetSpacing()[:2] == pytest.approx((1.6, 1.6))
    # block mean / block majority with ties as foreground (hand-computed)
    image, label = downsample(np.array([[0, 4, 8, 8], [4, 0, 8, 8]]), np.array([[1, 1, 0, 0], [0, 0, 0, 1]]), 2)
    assert image.tolist() == [[2.0, 8.0]] and label.tolist() == [[1, 0]]


def test_report_table_hand_made():
    """The trainer table from hand-made per-case values: seed mean ± SD, worst-10 %, missed cases, empty predictions
    in precision, time ratios and the Δ column against the baseline."""
    from nnunetv2_ext.benchmark.report import trainer_table
    from nnunetv2_ext.benchmark.runs import BenchmarkConfig
    cfg = BenchmarkConfig("Dataset001_X", "2d", ["A", "B"], [0], [1, 2], dict(epochs=1, iterations=10))
    cases = [f"c{i}" for i in range(10)]
    ones = np.ones((2, 10))

    def mats(dsc):
        dsc = np.asarray(dsc, dtype=float)
        prec = [[np.nan if d == 0 else 1.0 for d in row] for row in dsc]
        return {"DSC": dsc, "recall": dsc, "HD95": 2 * ones, "NSD": ones, "components": ones, "precision": prec,
                "_seeds": [1, 2], "_cases": cases}
    a = mats([[0.5] * 9 + [0.0], [0.7] * 9 + [0.1]])   # seed means 0.45 and 0.64
    b = mats([[0.6] * 10, [0.8] * 10])                 # seed means 0.6 and 0.8
    table = trainer_table(cfg, {"A": a, "B": b}, {"A": {"it": 0.5, "pred": 10.0}, "B": {"it": 1.0, "pred": 30.0}}, 200)
    row_a, row_b = table.splitlines()[2:4]
    assert "| A | 2 | 54.5 ± 13.4 | 5.0 ± 7.1 | 5.0 ± 7.1 | 0.5 ± 0.7 / 10 | 100.0 ± 0.0 (1 empty) |" in row_a
    assert row_a.endswith("| 0.500 (1.00×) | 10 (1.00×) | – | – |")
    assert "| B | 2 | 70.0 ± 14.1 |" in row_b and "| 1.000 (2.00×) | 30 (3.00×) |" in row_b
    assert "| +15.5 [" in row_b and "| +65.0 [" in row_b  # 0.70 - 0.545; worst-10 %: 0.70 - 0.05


def test_report_measures_the_named_label(tmp_path):
    """--label: DSC, precision and components of one label of a two-label dataset (the cascade's tumour), by hand."""
    import SimpleITK as sitk

    from nnunetv2_ext.benchmark.report import evaluate_folder
    djson = {"labels": {"background": 0, "organ": 1, "tumour": 2}, "file_ending": ".nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps(djson))
    ref, pred = np.zeros((1, 8, 8), np.uint8), np.zeros((1, 8, 8), np.uint8)
    ref[0, 1:7, 1:7] = 1
    ref[0, 2:4, 2:4] = 2          # tumour: 4 voxels
    pred[0, 1:7, 1:7] = 1
    pred[0, 2:4, 2:3] = 2         # 2 of them found
    pred[0, 6, 6] = 2             # and a separate false-positive tumour voxel
    for folder, arr in (("ref", ref), ("pred", pred)):
        (tmp_path / folder).mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / folder / "c0.nii.gz"))
    out = evaluate_folder(str(tmp_path / "pred"), str(tmp_path / "ref"), str(tmp_path / "dataset.json"),
                          label="tumour")
    c0 = out["per_case"]["c0"]
    assert out["label"] == "tumour"
    assert c0["DSC"] == pytest.approx(2 * 2 / (3 + 4)) and c0["precision"] == pytest.approx(2 / 3)
    assert c0["components"] == 2 and c0["fp_components"] == 1 and c0["fp_voxels"] == 1
    first = evaluate_folder(str(tmp_path / "pred"), str(tmp_path / "ref"), str(tmp_path / "dataset.json"))
    assert first["label"] == "organ" and first["per_case"]["c0"]["components"] == 1  # organ ∪ tumour: one blob
    assert sorted(p.name for p in (tmp_path / "pred").glob(".benchmark_metrics*")) == [
        ".benchmark_metrics.json", ".benchmark_metrics_tumour.json"]


# ------------------------------------------------------------------------------------------------- command
def _bench(args, **kw):
    return run_process(["nnUNetv2_ext_benchmark", *map(str, args)], **kw)


def test_bad_input_refused_before_anything_is_written(phantom_2d, tmp_path):
    from conftest import PHANTOM_ID
    base = ["-d", PHANTOM_ID, "-c", "2d", "-tr", "nnUNetTrainer", "--epochs", "1", "--iterations", "2",
            "-device", "cpu"]
    cases = [
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["-tr", "nnUNetTrainer", "nnUNetTrainerNope"], "unknown trainer 'nnUNetTrainerNope'"),
        (["--width", "-1"], "width"),
        (["-f", "7"], "folds of the 5-fold split"),
        (["--group-regex", "^(nomatch)"], "does not match --group-regex"),
        (["--baseline", "nnUNetTrainerBoundary"], "--baseline"),
        (["-c", "3d_lowres"], "is not a configuration"),
        (["--label", "tumour"], "--label 'tumour' is not a foreground label"),
    ]
    for extra, message in cases:
        work = tmp_path / "w"
        p = _bench(base + extra + ["-o", work])
        assert p.returncode == 2 and message in p.stdout, (extra, p.stdout[-2000:])
        assert not work.exists(), extra
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    p = _bench(base + ["-o", foreign])
    assert p.returncode == 2 and "nnunetv2_ext did not write" in p.stdout
    assert sorted(os.listdir(foreign)) == ["notes.txt"]


def test_new_work_folder_commits_only_its_small_state(tmp_path):
    """The work folder's own .gitignore: git (asked, not imitated) keeps the state a later session continues from
    and leaves predictions, checkpoints and logs out; a continued folder keeps a .gitignore its user edited."""
    from nnunetv2_ext.benchmark.runs import BenchmarkConfig, WorkFolder
    cfg = BenchmarkConfig("Dataset001_X", "2d", ["A"], [0], [1], dict(epochs=1, iterations=10))
    repo = tmp_path / "repo"
    work = repo / "docs" / "bench"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    WorkFolder(str(work)).save(cfg)
    files = {"benchmark.json": True, "runs/000.json": True, "report/report.md": True, "configuration.md": True,
             "predictions/A_BM/fold_0/test/.benchmark_metrics_DSC.json": True,
             "predictions/A_BM/fold_0/test/.complete": True, "predictions/A_BM/fold_0/test/case_000.nii.gz": False,
             "logs/000_A_fold0.txt": False, "runs/000.json.tmp": False, "report/sub/x.png": False}
    for rel in files:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (work / rel).exists():
            (work / rel).write_text("x")
    ignored = subprocess.run(["git", "-C", str(repo), "check-ignore", *[f"docs/bench/{f}" for f in files]],
                             capture_output=True, text=True).stdout.split()
    assert sorted(ignored) == sorted(f"docs/bench/{f}" for f, kept in files.items() if not kept)
    (work / ".gitignore").write_text("# mine\n")
    WorkFolder(str(work)).save(cfg)  # continued: the user's edit stays
    assert (work / ".gitignore").read_text() == "# mine\n"


@pytest.mark.e2e
def test_benchmark_end_to_end_with_seeds_and_workers(phantom_2d, tmp_path, nnunet_dirs):
    """Plain nnU-Net and PNSS/HESS x fold 0 x seeds 5 and 6 through nnU-Net's commands with 2 augmentation workers:
    --list, one run by index, the rest continued, the report (its comparison columns: test_report_table_hand_made);
    then the same seed retrained from scratch gives the same first-epoch losses, and the other seed other ones; a
    PNSS/HESS run retrained gives the same losses in every epoch (its batches are numbered per worker)."""
    from conftest import PHANTOM_ID
    env = dict(os.environ, nnUNet_n_proc_DA="2", OMP_NUM_THREADS="1")
    work = tmp_path / "bench"
    args = ["-d", PHANTOM_ID, "-c", "2d", "-tr", "nnUNetTrainer", "nnUNetTrainerPNSSHESS", "-f", "0", "--seeds",
            "5", "6", "--epochs", "2", "--iterations", "3", "--val-iterations", "1", "--batch", "2", "--width", "4",
            "--keep-checkpoints-every", "1", "-device", "cpu", "--disable-tta", "-o", work]
    p = _bench(args + ["--list"], env=env)
    assert p.returncode == 0 and len(re.findall(r"to do", p.stdout)) == 4, p.stdout
    run_cmd(["nnUNetv2_ext_benchmark", *map(str, args), "--run-index", "0"], env=env)
    assert json.loads((work / "runs" / "000.json").read_text())["state"] == "done"
    out = run_cmd(["nnUNetv2_ext_benchmark", *map(str, args)], env=env)
    assert "run 0:" not in out  # finished runs are never repeated
    report = (work / "report" / "report.md").read_text()
    assert "Runs finished: 4 of 4" in report, report
    assert report.count("| nnUNetTrainer | 2 |") == 3, report  # 2 seeds in the raw and pp tables; after epoch 2
    data = json.loads((work / "report" / "report.json").read_text())
    assert len(data["per_case"]["pp"]["nnUNetTrainer"]["DSC"]) == 2  # two seeds x the held-out cases
    # the weights after epoch 1 were kept and predicted: the report follows the held-out set over training
    assert "false-positive components / case" in report and "## Over training" in report
    assert re.search(r"\| nnUNetTrainer \| 1 \| [0-9.]+ ± [0-9.]+ \|", report) and "| nnUNetTrainer | 2 |" in report
    assert (work / "predictions" / "nnUNetTrainer_BM2x3v1b2w4s5k1" / "fold_0" / "epoch_1" / ".complete").is_file()
    # what the seed controls, with workers on
    results = nnunet_dirs["nnUNet_results"] / phantom_2d.name
    first = results / "nnUNetTrainer_BM2x3v1b2w4s5k1__nnUNetPlans__2d" / "fold_0"
    log = next(first.glob("training_log_*.txt")).read_text()
    assert "training augmentation restarted: 2 ordered workers with seeds [5000, 5001]" in log
    assert "validation augmentation restarted: 1 ordered workers with seeds [5500]" in log
    loss = lambda text: re.search(r"train_loss (-?[0-9.]+)", text).group(1)  # noqa: E731
    other = next((results / "nnUNetTrainer_BM2x3v1b2w4s6k1__nnUNetPlans__2d" / "fold_0").glob("training_log_*.txt"))
    assert loss(other.read_text()) != loss(log)
    again = tmp_path / "again_results"
    run_cmd(["nnUNetv2_train", PHANTOM_ID, "2d", "0", "-tr", "nnUNetTrainer_BM2x3v1b2w4s5k1", "-device", "cpu"],
            env=dict(env, nnUNet_results=str(again)))
    repeat = next((again / phantom_2d.name / "nnUNetTrainer_BM2x3v1b2w4s5k1__nnUNetPlans__2d" / "fold_0")
                  .glob("training_log_*.txt")).read_text()
    assert loss(repeat) == loss(log)
    pnss = "nnUNetTrainerPNSSHESS_BM2x3v1b2w4s5k1"
    run_cmd(["nnUNetv2_train", PHANTOM_ID, "2d", "0", "-tr", pnss, "-device", "cpu"],
            env=dict(env, nnUNet_results=str(again)))
    def losses(root):
        log = next((root / f"{pnss}__nnUNetPlans__2d" / "fold_0").glob("training_log_*.txt")).read_text()
        return re.findall(r"train_loss (-?[0-9.]+)", log)
    first_run = losses(results)
    assert len(first_run) == 2 and losses(again / phantom_2d.name) == first_run
    shutil.rmtree(again)


def test_arms_table_hand_made():
    """Arms (a pipeline's predictions per seed, e.g. k slices + propagation) against a baseline arm: seed mean ± SD,
    worst-10 % (of 10 cases: the single worst), min, missed cases, FP components, the median time, and the paired Δ
    (identical arms: 0, with an interval around it, since each arm's seeds are resampled on their own)."""
    from nnunetv2_ext.benchmark.arms import arms_table, per_seed_table
    cases = np.array([f"c{i}" for i in range(10)])
    base = {"DSC": np.array([[0.9] * 9 + [0.0], [0.8] * 9 + [0.5]]), "HD95": np.full((2, 10), 2.0),
            "fp_components": np.array([[1.0] * 10, [0.0] * 10]), "_cases": cases}
    better = dict(base, DSC=base["DSC"] + np.array([[0.0] * 9 + [0.5], [0.0] * 10]))
    table = arms_table({"every slice": base, "k = 5": better, "same": dict(base)}, "every slice",
                       {"every slice": [10.0, 20.0, 12.0], "k = 5": [3.0]}, n_bootstrap=200)
    rows = {r.split(" | ")[0].lstrip("| "): r for r in table.splitlines()[2:]}
    # seed means: 0.81 and 0.77 -> 79.0 ± 2.8; worst-10 % of 10 cases = the worst case: 0 and 50 -> 25.0 ± 35.4
    assert rows["every slice"].startswith("| every slice | 2 | 79.0 ± 2.8 | 25.0 ± 35.4 | 25.0 ± 35.4 | 0.5 ± 0.7 / 10 "
                                          "| 2.0 ± 0.0 | 0.50 ± 0.71 | 12.0 | – | – |"), rows["every slice"]
    # k = 5: seed 1's missed case gets 0.5 -> means 0.86 / 0.77; Δ mean +2.5 (0.05 / 2 seeds), Δ worst +25.0
    assert "| 81.5 ± 6.4 | 50.0 ± 0.0 |" in rows["k = 5"] and "| 3.0 | +2.5 [" in rows["k = 5"]
    assert "| +25.0 [" in rows["k = 5"]
    same = re.search(r"\| \+0\.0 \[(-[0-9.]+), \+([0-9.]+)\] \| \+0\.0 \[", rows["same"])
    assert same and float(same.group(1)) < 0 < float(same.group(2)), rows["same"]
    assert per_seed_table({"every slice": base}, [1, 2]).splitlines()[2] == "| every slice | 81.0 | 77.0 |"
    with pytest.raises(ValueError, match="other cases"):
        arms_table({"every slice": base, "x": dict(base, _cases=cases[::-1])}, "every slice")


def test_evidence_script_helpers(tmp_path, monkeypatch, capsys):
    from nnunetv2_ext.benchmark.arms import use_work_root, write_report
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA"):
        monkeypatch.setenv(k, "x")  # recorded, so that the values use_work_root sets are undone afterwards
        monkeypatch.delenv(k)
    folders = use_work_root(str(tmp_path / "root"))
    assert folders["nnUNet_raw"] == str(tmp_path / "root" / "nnUNet_raw") == os.environ["nnUNet_raw"]
    assert all(os.path.isdir(f) for f in folders.values()) and os.environ["nnUNet_n_proc_DA"] == "2"
    write_report(["# title", "", "| a |"], str(tmp_path / "docs" / "r.md"))
    assert (tmp_path / "docs" / "r.md").read_text() == "# title\n\n| a |\n" and "# title" in capsys.readouterr().out
