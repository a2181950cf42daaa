"""The evidence table of :mod:`nnunetv2_ext.pipeline` (demo and ablation scripts), on hand-made label maps."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext.pipeline import comparison_markdown, connected_components, flatten, nnunet_env


def _write(folder, name, arr):
    os.makedirs(folder, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr.astype(np.uint8)), os.path.join(folder, f"{name}.nii.gz"))


def _cube(lo, hi, shape=(8, 16, 16)):
    a = np.zeros(shape, np.uint8)
    a[lo:hi, lo:hi, lo:hi] = 1
    return a


def test_table_counts_empty_predictions_and_components(tmp_path):
    ref, good, bad = (str(tmp_path / n) for n in ("ref", "good", "bad"))
    for case in ("a", "b", "c"):
        _write(ref, case, _cube(2, 6))
        _write(good, case, _cube(2, 6))
    two = _cube(2, 6)
    two[7, 14, 14] = 1  # a far false positive: a second component
    _write(bad, "a", two)
    _write(bad, "b", _cube(2, 6))
    _write(bad, "c", np.zeros((8, 16, 16)))  # empty prediction: precision undefined, DSC 0
    dj = str(tmp_path / "dataset.json")
    json.dump({"labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz", "channel_names": {"0": "CT"},
               "numTraining": 3}, open(dj, "w"))

    assert {c: len(v) for c, v in connected_components(bad).items()} == {"a": 2, "b": 1, "c": 0}
    far = [c for c in connected_components(bad, ref)["a"] if not c.touches_reference]
    assert len(far) == 1 and far[0].voxels == 1 and far[0].slice_distance == 7 - 5  # reference slab: slices 2..5
    flat = {n: flatten({"f0": f}, str(tmp_path / "flat" / n)) for n, f in (("ref", ref), ("plain", good),
                                                                            ("method", bad))}
    md = comparison_markdown(flat.pop("ref"), flat, dj, {"plain": 1.0}, {"c": "low_contrast"}, ["f0"],
                             n_bootstrap=200)
    rows = {}
    for line in md.splitlines():  # the main table's rows (the hard-case table repeats the names later)
        name = line.split("|")[1].strip() if line.startswith("|") else None
        if name in ("plain", "method") and name not in rows:
            rows[name] = [c.strip() for c in line.split("|")[2:-1]]
    plain, method = rows["plain"], rows["method"]
    assert plain[0].startswith("100.00 ± 0.00 [100.00, 100.00]")
    assert method[0].startswith("66.") and method[0].endswith("[0.00, 100.00]")
    # precision: mean over the two non-empty predictions (the one with an extra voxel is < 100), empty one counted
    assert method[2].endswith("(1 empty)") and 98 < float(method[2].split()[0]) < 100
    assert plain[5] == "1.0 [1]" and method[5] == "1.0 [2]"  # components per case [max]
    # false-positive components per case (≥ 3 slices from the organ): case a's extra voxel, 2 slices below the slab
    assert plain[6] == "0.0 (0.0)" and method[6] == "0.3 (0.0)"
    assert "Reading: method returns more false-positive components per case than plain (0.3 vs 0.0)" in md
    assert plain[7] == "–" and method[7].startswith("-33.")  # paired Δ DSC vs the first trainer
    assert plain[9] == "1.0" and method[9] == "nan"  # wall time only where measured
    assert "| plain | 100.0 |" in md and "| method | 0.0 |" in md  # the hard case, per key


def test_flatten_makes_one_observation_per_key_and_case(tmp_path):
    f0, f1 = str(tmp_path / "f0"), str(tmp_path / "f1")
    _write(f0, "a", _cube(2, 6))
    _write(f1, "a", _cube(2, 5))
    out = flatten({"f0": f0, "f1": f1}, str(tmp_path / "flat"))
    assert sorted(os.listdir(out)) == ["f0_a.nii.gz", "f1_a.nii.gz"]
    assert flatten({"f0": f0}, out) == out and os.listdir(out) == ["f0_a.nii.gz"]  # replaced, not merged


def test_env_puts_folders_in_work_and_extra_last(tmp_path):
    env = nnunet_env(str(tmp_path), 2, {"nnUNet_def_n_proc": "1", "X": "y"})
    assert env["nnUNet_raw"] == str(tmp_path / "nnUNet_raw") and os.path.isdir(env["nnUNet_results"])
    assert env["nnUNet_n_proc_DA"] == "2" and env["nnUNet_def_n_proc"] == "1" and env["X"] == "y"


def test_side_by_side_gives_each_running_command_its_own_gpu_and_stops_on_failure(tmp_path):
    """Four commands on two 'GPUs': at most two at a time, never two on one GPU at once, each log names its GPU; a
    failing command raises CommandFailed naming it and terminates the one running beside it."""
    import sys
    import time

    import pytest

    from nnunetv2_ext.pipeline import CommandFailed, run_side_by_side
    marks = tmp_path / "marks"
    marks.mkdir()
    code = ("import os, sys, time; g = os.environ['CUDA_VISIBLE_DEVICES']; d = sys.argv[1]; "
            "open(os.path.join(d, 'start_%s_%s' % (sys.argv[2], time.time())), 'w').write(g); "
            "time.sleep(0.6); print('gpu', g); open(os.path.join(d, 'end_%s_%s' % (sys.argv[2], time.time())), "
            "'w').write(g)")
    commands = [[sys.executable, "-c", code, marks, i] for i in range(4)]
    logs = [str(tmp_path / f"log{i}.txt") for i in range(4)]
    run_side_by_side(commands, logs, gpus=["3", "5"], poll_s=0.05)
    events = sorted((float(p.name.split("_")[2]), p.name.split("_")[0], p.read_text()) for p in marks.iterdir())
    busy, most = {}, 0
    for _, kind, gpu in events:
        busy[gpu] = busy.get(gpu, 0) + (1 if kind == "start" else -1)
        assert busy[gpu] <= 1, events
        most = max(most, sum(busy.values()))
    assert most == 2  # side by side
    assert sorted(open(f).read().split("gpu ")[1].strip() for f in logs) == ["3", "3", "5", "5"]
    # a failure: the other running command is terminated, the error names the failing one
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    fail = [sys.executable, "-c", "import sys; print('broken input'); sys.exit(3)"]
    start = time.time()
    with pytest.raises(CommandFailed, match=r"(?s)failed \(exit 3\).*broken input"):
        run_side_by_side([slow, fail], [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], gpus=["0", "1"],
                         poll_s=0.05)
    assert time.time() - start < 20


def test_timed_command_logs_times_and_names_a_failure(tmp_path):
    import sys

    from nnunetv2_ext.pipeline import CommandFailed, timed_command
    log = tmp_path / "commands.log"
    seconds = timed_command([sys.executable, "-c", "print('hello')"], str(log))
    assert 0 < seconds < 60
    assert log.read_text().splitlines()[1:] == ["hello"] and log.read_text().startswith("$ ")
    with pytest.raises(CommandFailed, match=r"exited with 3; see .*commands.log"):
        timed_command([sys.executable, "-c", "import sys; sys.exit(3)"], str(log))
