"""The suite's shared set-up: one set of helpers for every test module.

* nnU-Net folders: ``nnunet_dirs`` (session: nnUNet_raw / nnUNet_preprocessed / nnUNet_results in a temporary place,
  set in ``os.environ`` so that subprocesses see them); ``private_nnunet_dirs`` (module: a module's own three
  folders, for tests that need dataset ids of their own, e.g. converters writing many datasets).
* Commands: ``run_cmd`` (an nnU-Net / nnunetv2_ext command that must succeed; returns its output) and
  ``run_process`` (any command, its exit status is the caller's business). Both run the command in its own process
  group with ``TEST_ENV`` (augmentation workers ON, as in real training; one thread per process) and kill the whole
  group on a timeout (nnU-Net's augmentation workers included).
* Trainers: ``make_trainer`` builds a trainer exactly as ``nnUNetv2_train`` does (on the CPU, nothing trained), for
  the checks that must fire before training; ``user_trainers`` puts a test's own trainer subclass where nnU-Net's
  commands find it by name.
* Datasets, one session fixture per phantom, shared by all modules (never generate and preprocess the same phantom
  twice): ``phantom_2d_plans`` / ``phantom_2d`` (+ ``phantom_2d_loading``) and ``lesion_phantom_plans`` /
  ``lesion_phantom``. The ``*_plans`` fixtures run only nnU-Net's fingerprint extraction and planning (a few seconds):
  quick checks that need plans and dataset.json use them and never wait for preprocessing; the others add nnU-Net's
  preprocessing. ``plan_dataset`` / ``preprocess_dataset`` do the same for a test's own dataset.

Markers: a test that trains, preprocesses or runs nnU-Net commands for more than a few seconds is marked
``@pytest.mark.e2e``; ``pytest -m "not e2e"`` (``bash run_tests.sh -m "not e2e"``) is the quick loop.

Timeouts, the rule: pytest-timeout (``timeout`` in pytest.ini, or ``@pytest.mark.timeout(n)``) is the limit for a
whole test, the set-up of the fixtures it is the first to use included. A command's own timeout (``run_cmd`` /
``run_process``, ``CMD_TIMEOUT`` unless a call says otherwise) is a budget for that one command, and it is always cut
to end ``CMD_TIMEOUT_MARGIN`` seconds (at most a tenth of the limit) before pytest's limit for the running test. So
a hung command is always killed by ``run_cmd`` first, with its process group, and the failure shows the end of its
output (pytest's own timeout would show only a stack dump of the test process). Keep per-call timeouts for what one
command may reasonably take on a loaded 2-core machine; raise pytest's limit (marker) only for a test that needs more
than ``timeout`` in total.
"""
import json
import os
import pathlib
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Augmentation workers ON, as in real training; nnU-Net's export pool small and one thread per process (CI: 2 cores).
TEST_ENV = {"nnUNet_n_proc_DA": "2", "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

#: default budget of one command (seconds); per-call values may differ, see the module docstring
CMD_TIMEOUT = 900
#: a command's timeout ends this long (at most a tenth of pytest's limit) before pytest's timeout of the running test
CMD_TIMEOUT_MARGIN = 30

# ------------------------------------------------------------------------------------------------- timeouts
_command_deadline = None  # time.monotonic() by which the running test's commands must end (None: no limit)


#: the longest test modules, started first so that the two test workers of run_tests.sh finish together (xdist's
#: --dist loadfile hands out whole files in collection order; a long file collected last alone sets the suite's end)
LONGEST_FIRST = ("test_semisupervised_e2e.py", "test_cascade_e2e.py", "test_pnss_hess_e2e.py", "test_benchmark.py",
                 "test_coarse_to_fine_e2e.py", "test_loss_trainers.py", "test_hard_pretrain.py", "test_recipe.py",
                 "test_cps_e2e.py", "test_slice_position_e2e.py", "test_propagation_e2e.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module's own order is kept


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item, settings):
    """pytest-timeout starts its timer for a test (set-up included): commands must end CMD_TIMEOUT_MARGIN s (at most a
    tenth of the limit) before it fires. Returns None, so that pytest-timeout's own implementation still runs."""
    global _command_deadline
    _command_deadline = time.monotonic() + settings.timeout - min(CMD_TIMEOUT_MARGIN, 0.1 * settings.timeout)


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item):
    global _command_deadline
    _command_deadline = None


def command_timeout(timeout: float) -> float:
    """``timeout``, cut so that it expires before pytest's timeout of the running test (see the module docstring)."""
    if _command_deadline is None:
        return timeout
    return max(1.0, min(timeout, _command_deadline - time.monotonic()))


# ------------------------------------------------------------------------------------------------- commands
def run_process(args, timeout=CMD_TIMEOUT, env=None, cwd=None, stderr=subprocess.STDOUT, stdout=subprocess.PIPE):
    """Runs ``args`` in its own process group with ``os.environ`` + ``TEST_ENV`` + ``env`` (a value None removes the
    variable); returns the ``subprocess.CompletedProcess`` whatever its exit status (stderr merged into stdout unless
    ``stderr`` says otherwise). On a timeout (see the module docstring) the whole process group is killed and the
    test fails with the end of the output."""
    full_env = dict(os.environ)
    full_env.update(TEST_ENV)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = str(v)
    args = [str(a) for a in args]
    limit = command_timeout(timeout)
    p = subprocess.Popen(args, env=full_env, cwd=cwd, stdout=stdout, stderr=stderr, text=True,
                         errors="replace", start_new_session=True)
    try:
        out, err = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(f"{' '.join(args)} timed out after {limit:.0f} s (killed with its process group):\n"
                             f"{(out or '')[-6000:]}{(err or '')[-3000:]}") from None
    finally:
        if p.poll() is None:  # an exception while waiting (e.g. KeyboardInterrupt): leave nothing behind
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return subprocess.CompletedProcess(args, p.returncode, out, err)


def run_until_then_kill(args, condition, timeout=CMD_TIMEOUT, env=None, poll_s: float = 0.5):
    """Runs ``args`` as ``run_process`` does and kills its whole process group (SIGKILL, as a cluster's time limit
    would) as soon as ``condition()`` is true (checked every ``poll_s``). Returns the ``CompletedProcess`` (output
    up to the kill); the return code is -9 when it was killed."""
    import tempfile
    full_env = dict(os.environ)
    full_env.update(TEST_ENV)
    full_env.update({k: str(v) for k, v in (env or {}).items()})
    args = [str(a) for a in args]
    limit = command_timeout(timeout)
    with tempfile.TemporaryFile("w+", errors="replace") as out:
        p = subprocess.Popen(args, env=full_env, stdout=out, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        start = time.time()
        try:
            while p.poll() is None:
                if condition():
                    os.killpg(p.pid, signal.SIGKILL)
                    break
                if time.time() - start > limit:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                    out.seek(0)
                    raise AssertionError(f"{' '.join(args)} timed out after {limit:.0f} s:\n{out.read()[-6000:]}")
                time.sleep(poll_s)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        out.seek(0)
        return subprocess.CompletedProcess(args, p.returncode, out.read(), None)


def run_cmd(args, timeout=CMD_TIMEOUT, env=None, cwd=None):
    """Runs an nnU-Net / nnunetv2_ext command that must succeed (``run_process``); returns its output (stdout and
    stderr). On failure the assertion shows the end of the output."""
    p = run_process(args, timeout, env, cwd)
    assert p.returncode == 0, f"{' '.join(p.args)} failed ({p.returncode}):\n{p.stdout[-6000:]}"
    return p.stdout


# ------------------------------------------------------------------------------------------------- trainers
def _json(source) -> dict:
    if isinstance(source, (str, os.PathLike)):
        with open(source) as f:
            return json.load(f)
    return json.loads(json.dumps(source))  # a deep copy: the caller's dict is never changed


def make_trainer(trainer_class, plans, dataset_json, configuration="2d", fold=0):
    """``trainer_class`` built as ``nnUNetv2_train`` builds it, on the CPU; nothing is loaded or trained (nnU-Net
    creates the fold's output folder). For the checks that must fire before training and for what a trainer derives
    from the plans (pipelines, networks). ``plans`` / ``dataset_json``: a dict (copied, never changed) or a path to
    nnU-Net's JSON file."""
    import torch
    plans = _json(plans)
    plans["continue_training"] = False  # nnUNetv2_train (2.8) sets this key before creating the trainer
    return trainer_class(plans, configuration, fold, _json(dataset_json), torch.device("cpu"))


def user_trainers(folder, code: str, module: str = "user_trainers") -> dict:
    """Writes a user's own trainer module (``code``) into ``folder`` and returns the environment (for ``run_cmd``) in
    which nnU-Net finds it by name, as it finds a user's subclass: ``nnUNet_extTrainer`` = that folder (the package's
    start-up hook appends its own trainer folder in every process, keeping the user's)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(code, encoding="utf-8")
    return {"nnUNet_extTrainer": str(folder)}


# ------------------------------------------------------------------------------------------------- resume, sharing
#: A mixin (code for a user's trainer module, see ``user_trainers``) that kills the training's whole process group
#: (nnU-Net's augmentation workers included) after the first iteration of epoch $KILL_IN_EPOCH, as a cluster's time
#: limit or an out-of-memory kill would: checkpoint_latest.pth then holds the end of the epoch before.
KILL_DURING_EPOCH = """
import os, signal


class KillDuringEpoch:
    def train_step(self, batch):
        out = super().train_step(batch)
        if os.environ.get("KILL_IN_EPOCH") == str(self.current_epoch):
            os.killpg(os.getpgid(0), signal.SIGKILL)
        return out
"""


def semisupervised_phantom(dataset_id: int, raw_folder) -> pathlib.Path:
    """The semi-supervised phantom (6 labelled, 6 unlabelled in imagesUnlabeled/, 2 test cases; 24 x 48 x 48),
    planned and preprocessed for 2d; returns its raw folder."""
    from nnunetv2_ext.semisupervised.phantom import write_semisupervised_phantom
    raw = pathlib.Path(write_semisupervised_phantom(dataset_id, 6, 6, 2, str(raw_folder), shape=(24, 48, 48)))
    plan_and_preprocess(dataset_id, ["2d"])
    return raw


def write_organ_free_image(template_file, out_file, value: float = -80) -> None:
    """A volume of ``template_file``'s geometry holding only ``value`` (body fat, no organ) at ``out_file``."""
    import numpy as np
    import SimpleITK as sitk
    template = sitk.ReadImage(str(template_file))
    empty = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(template).shape, value, np.float32))
    empty.CopyInformation(template)
    sitk.WriteImage(empty, str(out_file))


def epochs_in_logs(fold) -> list:
    """Per nnU-Net training log of ``fold`` (oldest first): (epochs started, epochs finished) from its "Epoch N" and
    "Epoch time" lines."""
    import re
    result = []
    for path in sorted(pathlib.Path(fold).glob("training_log_*.txt")):
        started, finished = [], []
        for line in path.read_text().splitlines():
            m = re.search(r": Epoch (\d+)\s*$", line)
            if m:
                started.append(int(m.group(1)))
            elif "Epoch time:" in line and started:
                finished.append(started[-1])
        result.append((started, finished))
    return result


def check_killed_and_resumed(fold, num_epochs: int, kill_epoch: int) -> None:
    """The run of ``fold`` was killed during ``kill_epoch`` and continued with ``--c``: two training logs; the first
    finished epochs 0..kill_epoch-1 and started kill_epoch; the second started exactly there and finished every epoch
    once (none skipped, none done twice); checkpoint_final.pth exists."""
    logs = epochs_in_logs(fold)
    assert len(logs) == 2, logs
    (started1, finished1), (started2, finished2) = logs
    assert finished1 == list(range(kill_epoch)) and started1 == list(range(kill_epoch + 1)), logs[0]
    assert started2 == finished2 == list(range(kill_epoch, num_epochs)), logs[1]
    assert (pathlib.Path(fold) / "checkpoint_final.pth").is_file()


def export_install_predict(dataset_id, configuration: str, trainer: str, fold, images, predicted, tmp_path,
                           env=None, extra=()) -> pathlib.Path:
    """Shares a trained model as a challenge team does: ``nnUNetv2_export_model_to_zip``, then
    ``nnUNetv2_install_pretrained_model_from_zip`` into an empty results folder, then ``nnUNetv2_predict`` from there
    on ``images``; every label map must equal the one in ``predicted`` (the original model's prediction with the same
    options). Returns the new prediction folder."""
    import numpy as np
    import SimpleITK as sitk
    tmp_path = pathlib.Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    zip_file = tmp_path / "model.zip"
    run_cmd(["nnUNetv2_export_model_to_zip", "-d", dataset_id, "-o", zip_file, "-c", configuration, "-tr", trainer,
             "-f", fold, "-chk", "checkpoint_final.pth"], env=env)
    results = tmp_path / "installed_results"
    results.mkdir()
    env = dict(env or {}, nnUNet_results=str(results))
    run_cmd(["nnUNetv2_install_pretrained_model_from_zip", zip_file], env=env)
    out = tmp_path / "pred_installed"
    run_cmd(["nnUNetv2_predict", "-i", images, "-o", out, "-d", dataset_id, "-c", configuration, "-f", fold,
             "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1", *extra], env=env)
    expected = sorted(p.name for p in pathlib.Path(predicted).glob("*.nii.gz"))
    assert expected and sorted(p.name for p in out.glob("*.nii.gz")) == expected
    for name in expected:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(pathlib.Path(predicted) / name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(out / name)))
        np.testing.assert_array_equal(a, b, err_msg=f"{trainer}: {name} differs after export/install")
    return out


# ------------------------------------------------------------------------------------------------- folders
def _nnunet_folders(base: pathlib.Path) -> dict:
    dirs = {k: base / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for v in dirs.values():
        v.mkdir()
    return dirs


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory):
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results for the whole session (set in os.environ, so subprocesses
    such as nnUNetv2_train see them). Dataset ids used here must not clash between modules (see their constants)."""
    dirs = _nnunet_folders(tmp_path_factory.mktemp("nnunet"))
    for k, v in dirs.items():
        os.environ[k] = str(v)
    return dirs


@pytest.fixture(scope="module")
def private_nnunet_dirs(nnunet_dirs, tmp_path_factory):
    """A module's own nnUNet_raw / _preprocessed / _results (set in os.environ while the module runs, then the
    session's folders again): its dataset ids cannot clash with other modules'. Session fixtures must not be set up
    first by such a module (they would write into its folders)."""
    dirs = _nnunet_folders(tmp_path_factory.mktemp("nnunet_private"))
    saved = {k: os.environ.get(k) for k in dirs}
    os.environ.update({k: str(v) for k, v in dirs.items()})
    yield dirs
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is missing")
    return SHARED_DATA


# ------------------------------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class PlannedDataset:
    """A raw dataset with nnU-Net's fingerprint and plans in nnUNet_preprocessed."""
    id: int
    raw: pathlib.Path
    preprocessed: pathlib.Path

    @property
    def name(self) -> str:
        return self.raw.name

    @property
    def plans(self) -> dict:
        """nnUNetPlans.json (a fresh copy on every access)."""
        return _json(self.preprocessed / "nnUNetPlans.json")

    @property
    def dataset_json(self) -> dict:
        """dataset.json (a fresh copy on every access)."""
        return _json(self.raw / "dataset.json")


def plan_dataset(dataset_id: int) -> PlannedDataset:
    """nnU-Net's fingerprint extraction (1 worker) and planning of a raw dataset, in-process (as
    ``nnUNetv2_plan_and_preprocess --no_pp -npfp 1``, without a second interpreter start): plans for every
    configuration, nothing preprocessed."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    extract_fingerprints([dataset_id], num_processes=1, verbose=False, show_progress_bar=False)
    plan_experiments([dataset_id])
    name = convert_id_to_dataset_name(dataset_id)
    return PlannedDataset(dataset_id, pathlib.Path(os.environ["nnUNet_raw"]) / name,
                          pathlib.Path(os.environ["nnUNet_preprocessed"]) / name)


def preprocess_dataset(dataset_id: int, configurations=("2d",)) -> None:
    """nnU-Net's preprocessing of a planned dataset (1 worker per configuration), in-process (as
    ``nnUNetv2_preprocess -d ID -c ... -np 1``)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess
    preprocess([dataset_id], configurations=list(configurations), num_processes=[1] * len(configurations),
               verbose=False, show_progress_bar=False)


def plan_and_preprocess(dataset_id: int, configurations=("2d",)) -> PlannedDataset:
    """``plan_dataset`` + ``preprocess_dataset``: what ``nnUNetv2_plan_and_preprocess -d ID -c ... -np 1 -npfp 1``
    writes."""
    planned = plan_dataset(dataset_id)
    preprocess_dataset(dataset_id, configurations)
    return planned


#: the organ phantom: 10 training + 2 test cases, 24x48x48, label 1 = organ
PHANTOM_ID = 901
#: the lesion phantom: organ (1) + tumour (2) + ignore band (3), 8 training + 2 test cases, 24x48x48
LESION_PHANTOM_ID = 951


@pytest.fixture(scope="session")
def phantom_2d_plans(nnunet_dirs):
    """The organ phantom, planned (fingerprint + plans, nothing preprocessed): for checks that need only plans."""
    from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
    write_phantom_dataset(PHANTOM_ID, PhantomConfig(num_cases=10, num_test=2, shape=(24, 48, 48)),
                          str(nnunet_dirs["nnUNet_raw"]))
    return plan_dataset(PHANTOM_ID)


@pytest.fixture(scope="session")
def phantom_2d(phantom_2d_plans):
    """The organ phantom, planned and preprocessed for 2d; returns its raw folder."""
    preprocess_dataset(PHANTOM_ID, ["2d"])
    return phantom_2d_plans.raw


@pytest.fixture(scope="session")
def phantom_2d_loading(phantom_2d, nnunet_dirs):
    """What a loader test needs for the 2d phantom: dataset object, identifiers, label manager, patch size and the
    PNSS/HESS slice table of all its training cases."""
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
    return SimpleNamespace(ds=ds, ids=ids, lm=pm.get_label_manager(_json(pre / "dataset.json")),
                           patch=pm.get_configuration("2d").patch_size,
                           table=build_slice_table(ds, ids, folder, None, log=lambda m: None))


@pytest.fixture(scope="session")
def lesion_phantom_plans(nnunet_dirs):
    """The lesion phantom, planned (fingerprint + plans for 2d and 3d_fullres, nothing preprocessed)."""
    from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
    write_phantom_dataset(LESION_PHANTOM_ID, PhantomConfig(num_cases=8, num_test=2, shape=(24, 48, 48), lesions=True,
                                                           ignore_label=True), str(nnunet_dirs["nnUNet_raw"]))
    return plan_dataset(LESION_PHANTOM_ID)


@pytest.fixture(scope="session")
def lesion_phantom(lesion_phantom_plans):
    """The lesion phantom, preprocessed for 2d and 3d_fullres."""
    preprocess_dataset(LESION_PHANTOM_ID, ["2d", "3d_fullres"])
    return lesion_phantom_plans
