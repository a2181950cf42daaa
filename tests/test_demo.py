"""The README demo's safety rules (no training here; the demo itself is run by hand and its numbers are in the README):
it never touches a folder it did not create, and reuses its own."""
import os
import subprocess

from conftest import run_process

from nnunetv2_ext.demo import MARKER, prepare_work_dir


def test_demo_refuses_a_folder_it_did_not_create(tmp_path):
    foreign = tmp_path / "my_data"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    p = run_process(["nnUNetv2_ext_demo", "--work-dir", foreign], timeout=120, stderr=subprocess.PIPE)
    assert p.returncode == 2 and "was not created by the demo" in p.stderr
    assert sorted(os.listdir(foreign)) == ["precious.txt"] and (foreign / "precious.txt").read_text() == "keep me"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert not prepare_work_dir(str(a_file)) and a_file.read_text() == "x"


def test_demo_reuses_its_own_folder_and_only_its_own_entries(tmp_path):
    work = tmp_path / "demo"
    assert prepare_work_dir(str(work)) and (work / MARKER).is_file()
    (work / "nnUNet_results").mkdir()
    (work / "nnUNet_results" / "old_run").write_text("stale")
    (work / "notes.txt").write_text("mine")  # something the user put there
    assert prepare_work_dir(str(work))
    assert not (work / "nnUNet_results").exists() and (work / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_work_dir(str(empty)) and (empty / MARKER).is_file()  # an empty folder is fine to use


def test_demo_rejects_bad_options():
    p = run_process(["nnUNetv2_ext_demo", "-device", "tpu"], timeout=120, stderr=subprocess.PIPE)
    assert p.returncode == 2 and "-device" in p.stderr
    p = run_process(["nnUNetv2_ext_demo", "--processes", "-1"], timeout=120, stderr=subprocess.PIPE)
    assert p.returncode == 2 and "--processes" in p.stderr
