"""The README demo's safety rules (no training here; the demo itself is run by hand and its numbers are in the README):
the package's output-folder rule (new or empty folder; one of its own with --overwrite), and only its own entries
are removed on a rerun."""
import json
import os
import subprocess

from conftest import run_process

from nnunetv2_ext.demo import LEGACY_MARKER, prepare_work_dir
from nnunetv2_ext.io_atomic import MARKER, OutputFolderError
import pytest


def test_demo_refuses_a_folder_it_did_not_create(tmp_path):
    foreign = tmp_path / "my_data"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        p = run_process(["nnUNetv2_ext_demo", "--work-dir", foreign, *extra], timeout=120, stderr=subprocess.PIPE)
        assert p.returncode == 2 and ("did not write" if extra else "--overwrite") in p.stderr, p.stderr
        assert sorted(os.listdir(foreign)) == ["precious.txt"] and (foreign / "precious.txt").read_text() == "keep me"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(OutputFolderError, match="not a folder"):
        prepare_work_dir(str(a_file))
    assert a_file.read_text() == "x"


def test_demo_reruns_in_its_own_folder_with_overwrite_and_removes_only_its_own_entries(tmp_path):
    work = tmp_path / "demo"
    prepare_work_dir(str(work))
    assert json.loads((work / MARKER).read_text())["written_by"] == "nnUNetv2_ext_demo"
    (work / "nnUNet_results").mkdir()
    (work / "nnUNet_results" / "old_run").write_text("stale")
    (work / "notes.txt").write_text("mine")  # something the user put there
    with pytest.raises(OutputFolderError, match="--overwrite"):
        prepare_work_dir(str(work))
    assert (work / "nnUNet_results" / "old_run").is_file()
    prepare_work_dir(str(work), overwrite=True)
    assert not (work / "nnUNet_results").exists() and (work / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_work_dir(str(empty))  # an empty folder is fine to use
    assert (empty / MARKER).is_file()
    legacy = tmp_path / "legacy"  # a work folder of a demo run before the shared marker
    legacy.mkdir()
    (legacy / LEGACY_MARKER).write_text("")
    (legacy / "demo_results.md").write_text("old")
    prepare_work_dir(str(legacy), overwrite=True)
    assert sorted(os.listdir(legacy)) == [MARKER]


def test_demo_rejects_bad_options():
    p = run_process(["nnUNetv2_ext_demo", "-device", "tpu"], timeout=120, stderr=subprocess.PIPE)
    assert p.returncode == 2 and "-device" in p.stderr
    p = run_process(["nnUNetv2_ext_demo", "--processes", "-1"], timeout=120, stderr=subprocess.PIPE)
    assert p.returncode == 2 and "--processes" in p.stderr
