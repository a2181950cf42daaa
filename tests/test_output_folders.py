"""One output-folder rule for every command (nnunetv2_ext.io_atomic): an output that is or contains an input is
refused even with --overwrite; an empty folder is fine; a folder with files needs --overwrite and is replaced only
when nnunetv2_ext wrote it. Each data-loss case of the reliability issue is checked here: before the fix, each of
these commands deleted its input and exited 0."""
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext.io_atomic import (MARKER, OutputFolderError, check_output_folder, write_folder_atomically)


def _write(path, array):
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


@pytest.fixture
def folders(tmp_path):
    ref, pred, pred2 = tmp_path / "data" / "ref", tmp_path / "data" / "pred", tmp_path / "data" / "pred2"
    for f in (ref, pred, pred2):
        f.mkdir(parents=True)
    for i in range(2):
        a = np.zeros((6, 12, 12), np.uint8)
        a[2:5, 3:8, 3:8] = 1
        _write(ref / f"c{i}.nii.gz", a)
        _write(pred / f"c{i}.nii.gz", np.roll(a, 1, axis=1))
        _write(pred2 / f"c{i}.nii.gz", a)
    return ref, pred, pred2


def _snapshot(*folders):
    return {str(p): p.read_bytes() for f in folders for p in sorted(f.rglob("*.nii.gz"))}


def test_evaluate_and_compare_never_delete_an_input(folders, tmp_path, capsys):
    from nnunetv2_ext.evaluation.cli import compare_main, evaluate_main
    ref, pred, pred2 = folders
    before = _snapshot(ref, pred, pred2)
    base = ["-np", "1", "--no-progress", "--overlays", "0"]
    for out in (pred, ref, tmp_path / "data"):  # the prediction folder, the references, a parent of both
        assert evaluate_main([str(ref), str(pred), "-o", str(out), "--overwrite"] + base) == 2
        err = capsys.readouterr().err
        assert "is or contains the input" in err, err
    for out in (pred2, tmp_path / "data"):
        assert compare_main([str(ref), str(pred), str(pred2), "-o", str(out), "--overwrite", "-np", "1",
                             "--no-progress"]) == 2
        assert "is or contains the input" in capsys.readouterr().err
    assert _snapshot(ref, pred, pred2) == before
    # a folder of someone else's files is not replaced either
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep me")
    assert evaluate_main([str(ref), str(pred), "-o", str(foreign), "--overwrite"] + base) == 2
    assert "did not write" in capsys.readouterr().err and (foreign / "thesis.txt").read_text() == "keep me"
    # an empty folder (mktemp -d) is accepted by both; our own report is replaced with --overwrite
    runs = {"evaluate": lambda out, *extra: evaluate_main([str(ref), str(pred), "-o", str(out), *extra] + base),
            "compare": lambda out, *extra: compare_main([str(ref), str(pred), str(pred2), "-o", str(out), *extra,
                                                         "-np", "1", "--no-progress"])}
    for name, run in runs.items():
        empty = tmp_path / f"empty_{name}"
        empty.mkdir()
        assert run(empty) == 0 and (empty / MARKER).is_file()
        assert run(empty) == 2 and "--overwrite" in capsys.readouterr().err
        assert run(empty, "--overwrite") == 0
    # the default report folder lies inside the prediction folder: allowed, and replaced with --overwrite
    assert evaluate_main([str(ref), str(pred)] + base) == 0
    assert evaluate_main([str(ref), str(pred), "--overwrite"] + base) == 0
    assert _snapshot(ref, pred, pred2) == before


def test_rule_and_atomic_swap(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.nii.gz").write_bytes(b"x")
    with pytest.raises(OutputFolderError, match="is or contains the input"):
        check_output_folder(str(tmp_path), [str(inp)], overwrite=True)
    link = tmp_path / "link"
    link.symlink_to(inp)
    with pytest.raises(OutputFolderError, match="is or contains the input"):  # through a symbolic link
        check_output_folder(str(link), [str(inp)], overwrite=True)
    check_output_folder(str(inp / "report"), [str(inp)])  # inside an input: allowed (new folder)
    out = tmp_path / "out"
    write_folder_atomically(str(out), lambda d: (open(f"{d}/r.txt", "w").write("1")), "test")
    with pytest.raises(OutputFolderError, match="--overwrite"):
        check_output_folder(str(out), [str(inp)])
    check_output_folder(str(out), [str(inp)], overwrite=True)
    assert json.loads((out / MARKER).read_text())["written_by"] == "test"

    def fail(d):
        open(f"{d}/partial.txt", "w").write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a failure keeps the old folder and leaves nothing behind
        write_folder_atomically(str(out), fail, "test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "link", "out"]
    assert (out / "r.txt").read_text() == "1"
    shutil.rmtree(out)


def test_pseudolabel_never_replaces_another_dataset(tmp_path, nnunet_dirs, capsys):
    """--output-dataset with the id of another dataset (here a FLARE22-like one with imagesUnlabeled/) is refused even
    with --overwrite; before the fix it was deleted and the pseudo-label dataset written under the same id."""
    from nnunetv2_ext.semisupervised.cli import pseudolabel_main
    raw = nnunet_dirs["nnUNet_raw"]
    lab = raw / "Dataset968_Lab"
    other = raw / "Dataset969_FLARE22"
    for d in (lab / "imagesTr", lab / "labelsTr", other / "imagesUnlabeled"):
        d.mkdir(parents=True)
    for c in ("lab_0", "lab_1"):
        _write(lab / "imagesTr" / f"{c}_0000.nii.gz", np.ones((6, 12, 12)))
        _write(lab / "labelsTr" / f"{c}.nii.gz", np.zeros((6, 12, 12)))
    (lab / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0,
                                                  "organ": 1}, "numTraining": 2, "file_ending": ".nii.gz"}))
    _write(other / "imagesUnlabeled" / "u_0000.nii.gz", np.ones((6, 12, 12)))
    preds = []
    for m in range(2):
        d = tmp_path / f"m{m}"
        d.mkdir()
        a = np.zeros((6, 12, 12), np.uint8)
        a[2:5, 3:8, 3:8] = 1
        _write(d / "u.nii.gz", a)
        preds.append(str(d))
    args = [*preds, "-o", str(tmp_path / "scores"), "--labelled-dataset", "968", "--output-dataset", "969",
            "--threshold", "0.5", "--images", str(other / "imagesUnlabeled"), "-np", "1", "--no-progress",
            "--overwrite"]
    before = _snapshot(raw)
    assert pseudolabel_main(args) == 2
    assert "held by another dataset" in capsys.readouterr().err
    assert _snapshot(raw) == before and (other / "imagesUnlabeled" / "u_0000.nii.gz").is_file()
    # the scores folder may not be one of the prediction folders either
    assert pseudolabel_main([*preds, "-o", preds[0], "--overwrite", "-np", "1", "--no-progress"]) == 2
    assert "is or contains the input" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "m0").iterdir()) == ["u.nii.gz"]
    shutil.rmtree(lab)  # the session's nnUNet_raw is shared with other modules
    shutil.rmtree(other)


# ------------------------------------------------------------------------------- one rule, every folder command
def _labelled_with_unlabelled(raw, dataset_id):
    lab = raw / f"Dataset{dataset_id}_Lab"
    for d in (lab / "imagesTr", lab / "labelsTr", lab / "imagesUnlabeled"):
        d.mkdir(parents=True)
    for c in ("lab_0", "lab_1"):
        _write(lab / "imagesTr" / f"{c}_0000.nii.gz", np.ones((6, 12, 12)))
        _write(lab / "labelsTr" / f"{c}.nii.gz", np.zeros((6, 12, 12)))
    _write(lab / "imagesUnlabeled" / "u_0000.nii.gz", np.ones((6, 12, 12)))
    (lab / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0,
                                                  "organ": 1}, "numTraining": 2, "file_ending": ".nii.gz"}))
    return lab


def _exit_code(call):
    try:
        return call()
    except SystemExit as e:  # argparse-style exits (the demo)
        return e.code


def test_one_output_rule_for_every_command(folders, tmp_path, nnunet_dirs, capsys):
    """Issue 20 item 11: every command that writes a folder follows one rule with one message. A folder of someone
    else's files is refused (also with --overwrite); an existing empty folder is accepted; a folder with files
    needs --overwrite (report commands) or is continued when it is our own (work-folder commands)."""
    from nnunetv2_ext.benchmark.cli import main as benchmark_main
    from nnunetv2_ext.demo import main as demo_main
    from nnunetv2_ext.demo import prepare_work_dir
    from nnunetv2_ext.evaluation.cli import compare_main, evaluate_main
    from nnunetv2_ext.semisupervised.cli import pseudolabel_main, self_train_main
    ref, pred, pred2 = folders
    lab = _labelled_with_unlabelled(nnunet_dirs["nnUNet_raw"], 967)
    quiet = ["-np", "1", "--no-progress"]
    commands = {  # name -> (run(out, *extra) -> exit code, "report" (replaced with --overwrite) or "work")
        "evaluate": (lambda o, *x: evaluate_main([str(ref), str(pred), "-o", o, *x, *quiet, "--overlays", "0"]),
                     "report"),
        "compare": (lambda o, *x: compare_main([str(ref), str(pred), str(pred2), "-o", o, *x, *quiet]), "report"),
        "pseudolabel": (lambda o, *x: pseudolabel_main([str(pred), str(pred2), "-o", o, *x, *quiet]), "report"),
        "demo": (lambda o, *x: demo_main(["--work-dir", o, *x]), "report"),
        "benchmark": (lambda o, *x: benchmark_main(["-d", "967", "-c", "2d", "-tr", "nnUNetTrainer", "--epochs", "1",
                                                    "-o", o, *x]), "work"),
        "self_train": (lambda o, *x: self_train_main(["-d", "967", "-c", "2d", "-o", "966", "-f", "0", "1",
                                                      "--top-fraction", "0.5", "-device", "cpu", "--dry-run",
                                                      "--work-dir", o, *x]), "work"),
    }
    try:
        for name, (run, kind) in commands.items():
            foreign = tmp_path / f"foreign_{name}"
            foreign.mkdir()
            (foreign / "thesis.txt").write_text("keep me")
            for extra in ((["--overwrite"], []) if kind == "report" else ([],)):
                assert _exit_code(lambda: run(str(foreign), *extra)) == 2, (name, extra)
                err = capsys.readouterr().err
                expected = ("--overwrite to replace it" if kind == "report" and not extra
                            else "holds files that nnunetv2_ext did not write")
                assert expected in err, (name, extra, err)
                assert sorted(os.listdir(foreign)) == ["thesis.txt"], name
            empty = tmp_path / f"empty_{name}"
            empty.mkdir()
            if name == "demo":  # the demo would train: its folder step alone
                prepare_work_dir(str(empty))
                continue
            code = _exit_code(lambda: run(str(empty)))
            err = capsys.readouterr().err
            assert "output folder" not in err, (name, err)
            if name == "benchmark":  # past the folder rule, it stops at the missing plans
                assert code == 2 and "nnUNetv2_plan_and_preprocess" in err, err
            else:
                assert code == 0, (name, err)
    finally:
        shutil.rmtree(lab)
