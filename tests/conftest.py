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
