"""Shared test set-up: nnU-Net folders in a temporary place, augmentation workers ON (as in real training)."""
import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory):
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results for the whole session (set in os.environ, so subprocesses
    such as nnUNetv2_train see them)."""
    base = tmp_path_factory.mktemp("nnunet")
    dirs = {k: base / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, v in dirs.items():
        v.mkdir()
        os.environ[k] = str(v)
    return dirs


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is missing")
    return SHARED_DATA


def run_cmd(args, timeout=900, env=None, cwd=None):
    """Runs an nnU-Net / nnunetv2_ext command; on failure the assertion shows the end of its output. On a timeout the
    whole process group goes (nnU-Net's augmentation workers included)."""
    import signal
    import subprocess
    full_env = dict(os.environ)
    full_env.update(TEST_ENV)
    full_env.update(env or {})
    p = subprocess.Popen([str(a) for a in args], env=full_env, cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        raise AssertionError(f"{' '.join(map(str, args))} timed out after {timeout} s:\n{out[-6000:]}")
    assert p.returncode == 0, f"{' '.join(map(str, args))} failed ({p.returncode}):\n{out[-6000:]}"
    return out


# Augmentation workers ON, as in real training; nnU-Net's export pool small (CI has 2 cores).
TEST_ENV = {"nnUNet_n_proc_DA": "2", "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "1"}
PHANTOM_ID = 901


@pytest.fixture(scope="session")
def phantom_2d(nnunet_dirs):
    """The phantom (10 training + 2 test cases, 24x48x48), planned and preprocessed for 2d; returns its raw folder."""
    from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
    raw = write_phantom_dataset(PHANTOM_ID, PhantomConfig(num_cases=10, num_test=2, shape=(24, 48, 48)),
                                str(nnunet_dirs["nnUNet_raw"]))
    run_cmd(["nnUNetv2_plan_and_preprocess", "-d", PHANTOM_ID, "-c", "2d", "-np", "1"])
    return pathlib.Path(raw)


@pytest.fixture(scope="session")
def phantom_2d_loading(phantom_2d, nnunet_dirs):
    """What a loader test needs for the 2d phantom: dataset object, identifiers, label manager, patch size and the
    PNSS/HESS slice table of all its training cases."""
    import json
    from types import SimpleNamespace

    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_ext.sampling.slice_table import build_slice_table
    pre = nnunet_dirs["nnUNet_preprocessed"] / phantom_2d.name
    folder = str(pre / "nnUNetPlans_2d")
    ds_class = infer_dataset_class(folder)
    ids = sorted(ds_class.get_identifiers(folder))
    ds = ds_class(folder, ids)
    pm = PlansManager(str(pre / "nnUNetPlans.json"))
    return SimpleNamespace(ds=ds, ids=ids, lm=pm.get_label_manager(json.load(open(pre / "dataset.json"))),
                           patch=pm.get_configuration("2d").patch_size,
                           table=build_slice_table(ds, ids, folder, None, log=lambda m: None))
