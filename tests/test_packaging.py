"""Packaging: the wheel carries the start-up hook, trainers are found by name, the declared dependencies match what
the code imports, and the nnU-Net internals the PNSS/HESS loader overrides still look as it assumes (the reason for
the upper bound on nnunetv2 in setup.py)."""
import ast
import inspect
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import REPO_ROOT, run_process


# ------------------------------------------------------------------------------------------------- discovery, wheel
def test_trainers_found_by_name_without_setting_anything(tmp_path):
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            "import nnunetv2_ext.trainers as t\n"
            "for n in ('nnUNetTrainerPNSS', 'nnUNetTrainerHESS', 'nnUNetTrainerPNSSHESS', "
            "'nnUNetTrainerPNSSHESS_a01_b9'):\n"
            "    assert f(n) is getattr(t, n), n\n"
            "import os; print(os.environ['nnUNet_extTrainer'])")
    out = run_process([sys.executable, "-c", code], env={"nnUNet_extTrainer": None}, stderr=subprocess.PIPE)
    assert out.returncode == 0, out.stderr[-3000:]
    # a folder the user set keeps its place, ours is appended
    out = run_process([sys.executable, "-c", code], env={"nnUNet_extTrainer": tmp_path}, stderr=subprocess.PIPE)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].split(os.pathsep)[0] == str(tmp_path)


def test_wheel_carries_the_startup_hook(tmp_path):
    out = run_process([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                       tmp_path, REPO_ROOT], timeout=300, stderr=subprocess.PIPE)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "absent from the `packages` configuration" not in out.stderr, out.stderr[-3000:]  # a clean first run
    wheel = next(tmp_path.glob("nnunetv2_ext-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        assert z.read("nnunetv2_ext-trainers.pth").decode().strip() == "import nnunetv2_ext._register_trainers"
        names = z.namelist()
        assert "nnunetv2_ext/_nnunet_trainer_path/nnunetv2_ext_trainers.py" in names
        assert "nnunetv2_ext/dataset_conversion/__init__.py" in names
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
    assert any(r.startswith("nnunetv2") and "<=" in r for r in requires), requires
    assert not any(r.lower().startswith("pydicom") for r in requires)
    # every nnUNetv2_ext_* command has its lower-case alias
    scripts = dict(re.findall(r"^(\S+) = (\S+)$", entry_points, re.M))
    for name, target in scripts.items():
        if name.startswith("nnUNetv2_ext_"):
            assert scripts.get("nnunetv2_ext_" + name[len("nnUNetv2_ext_"):]) == target, name


def test_build_backend_pinned_to_the_tested_setuptools_range():
    import tomllib

    import setuptools
    from packaging.specifiers import SpecifierSet
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    spec = SpecifierSet(next(r for r in requires if r.startswith("setuptools"))[len("setuptools"):])
    assert setuptools.__version__ in spec, "the installed setuptools is outside the range the hook was tested with"
    assert "70.1" in spec and "85.0" not in spec


# ------------------------------------------------------------------------------------------------- dependencies
def _top_level_imports(folder):
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_third_party_import_is_declared():
    setup_text = (REPO_ROOT / "setup.py").read_text()
    install_requires = setup_text[setup_text.index("install_requires"):setup_text.index("extras_require")]
    declared = {re.split(r"[<>=!~ ]", r)[0].lower().replace("-", "_")
                for r in re.findall(r'"([A-Za-z0-9_.\-]+[^"]*)"', install_requires)}
    distribution_of = {"SimpleITK": "simpleitk", "edt": "edt"}
    imports = _top_level_imports(REPO_ROOT / "nnunetv2_ext") | _top_level_imports(REPO_ROOT / "dataset_conversion")
    stdlib = set(sys.stdlib_module_names)
    third_party = {m for m in imports if m not in stdlib and m != "nnunetv2_ext"}
    missing = {m for m in third_party if distribution_of.get(m, m).lower() not in declared}
    assert not missing, f"imported but not in install_requires: {sorted(missing)}"
    assert "pydicom" not in declared and "pydicom" not in imports


def test_scipy_has_the_rng_argument_the_evaluation_uses():
    from scipy import stats
    assert "rng" in inspect.signature(stats.bootstrap).parameters


# ------------------------------------------------------------------------------------------------- nnU-Net internals
def test_nnunet_loader_internals_the_pnss_hess_loader_relies_on():
    """nnunetv2_ext.sampling.data_loader subclasses nnUNetDataLoader and overrides get_indices, get_bbox and
    generate_train_batch, relying on: the constructor's leading arguments, ``indices`` (the case identifiers),
    ``annotated_classes_key``, ``patch_size`` (pseudo-3D for 2d), and ``generate_train_batch`` calling
    ``get_indices()`` once per batch and then ``get_bbox(shape, force_fg, class_locations)`` once per sample, in
    batch order, before cropping with the returned box."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    params = list(inspect.signature(nnUNetDataLoader.__init__).parameters)
    assert params[:6] == ["self", "data", "batch_size", "patch_size", "final_patch_size", "label_manager"]
    assert "transforms" in params
    assert list(inspect.signature(nnUNetDataLoader.get_indices).parameters) == ["self"]
    assert list(inspect.signature(nnUNetDataLoader.get_bbox).parameters) == [
        "self", "data_shape", "force_fg", "class_locations", "overwrite_class", "verbose"]

    class FakeDataset:
        identifiers = ["a", "b", "c"]

        def load_case(self, identifier):
            data = np.full((1, 6, 8, 8), ord(identifier), dtype=np.float32)
            seg = np.zeros((1, 6, 8, 8), dtype=np.int16)
            return data, seg, None, {"class_locations": {1: np.array([[0, 3, 4, 4]])}}

    calls = []

    class Recording(nnUNetDataLoader):
        def get_indices(self):
            calls.append(("indices",))
            return ["c", "a"]

        def get_bbox(self, data_shape, force_fg, class_locations, overwrite_class=None, verbose=False):
            calls.append(("bbox", tuple(data_shape), force_fg, sorted(class_locations)))
            return super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)

    lm = LabelManager({"background": 0, "organ": 1}, regions_class_order=None)
    loader = Recording(FakeDataset(), 2, (8, 8), (8, 8), lm, oversample_foreground_percent=0.5)
    assert list(loader.indices) == FakeDataset.identifiers
    assert loader.annotated_classes_key == (-1, 0, 1)
    assert tuple(loader.patch_size) == (1, 8, 8)
    batch = loader.generate_train_batch()
    assert calls == [("indices",), ("bbox", (6, 8, 8), False, [1]), ("bbox", (6, 8, 8), True, [1])]
    assert batch["keys"] == ["c", "a"]
    assert tuple(batch["data"].shape) == (2, 1, 8, 8)
    assert batch["data"][0].max() == ord("c") and batch["data"][1].max() == ord("a")


def test_the_pnss_hess_loader_overrides_exactly_these_methods():
    """If the loader starts overriding more of nnU-Net's loader, this test (and the pin above) must grow with it."""
    pytest.importorskip("nnunetv2_ext.sampling.data_loader")
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2_ext.sampling.data_loader import nnUNetDataLoaderPNSSHESS
    overridden = {n for n, v in vars(nnUNetDataLoaderPNSSHESS).items()
                  if callable(v) and hasattr(nnUNetDataLoader, n) and not n.startswith("__")}
    assert overridden <= {"get_indices", "get_bbox", "generate_train_batch"}, overridden
