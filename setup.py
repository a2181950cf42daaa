"""Installation of nnunetv2_ext.

Besides the Python packages, the wheel carries ``nnunetv2_ext-trainers.pth`` in its root, which pip puts into
site-packages. Python executes ``import`` lines of ``.pth`` files at start-up; ours adds the folder
``nnunetv2_ext/_nnunet_trainer_path`` to the ``nnUNet_extTrainer`` search path of nnU-Net (>= 2.8.0), so that
``nnUNetv2_train ... -tr nnUNetTrainerPNSSHESS`` finds our trainers without copying files or setting variables.
"""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PTH_NAME = "nnunetv2_ext-trainers.pth"
PTH_LINE = "import nnunetv2_ext._register_trainers\n"


class BuildPyWithPth(build_py):
    """Also writes the start-up hook into the root of the build (and so of the wheel)."""

    def run(self):
        super().run()
        with open(os.path.join(self.build_lib, PTH_NAME), "w") as f:
            f.write(PTH_LINE)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH_NAME)]


cmdclass = {"build_py": BuildPyWithPth}
try:  # editable installs (pip install -e .) build their wheel elsewhere: put the hook into it as well
    from setuptools.command.editable_wheel import editable_wheel

    class EditableWheelWithPth(editable_wheel):
        def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
            result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
            with open(os.path.join(unpacked_wheel, PTH_NAME), "w") as f:
                f.write(PTH_LINE)
            return result

    cmdclass["editable_wheel"] = EditableWheelWithPth
except ImportError:  # old setuptools: editable installs then need the documented fallback
    pass



def with_nnunet_style_names(scripts):
    """Adds ``nnUNetv2_ext_X`` (nnU-Net's spelling: nnUNetv2_train, ...) for every ``nnunetv2_ext_X`` script; both
    names run the same function."""
    names = {s.split("=")[0].strip() for s in scripts}
    extra = []
    for script in scripts:
        name, target = (part.strip() for part in script.split("=", 1))
        if name.startswith("nnunetv2_ext_") and "nnUNetv2_ext_" + name[len("nnunetv2_ext_"):] not in names:
            extra.append(f"nnUNetv2_ext_{name[len('nnunetv2_ext_'):]}={target}")
    return extra + list(scripts)


setup(
    name="nnunetv2_ext",
    version="0.1.0",
    description="Small-organ extensions for nnU-Net v2: PNSS/HESS sampling, boundary losses, cascade tumour "
                "variant, converters and worst-case evaluation",
    license="Apache-2.0",
    python_requires=">=3.10",
    # _nnunet_trainer_path: a folder of modules nnU-Net imports by their bare names (no __init__.py), listed as a
    # (namespace) package so that setuptools installs it without warning
    packages=find_packages(include=["nnunetv2_ext", "nnunetv2_ext.*"]) + ["nnunetv2_ext.dataset_conversion",
                                                                          "nnunetv2_ext._nnunet_trainer_path"],
    package_dir={"nnunetv2_ext.dataset_conversion": "dataset_conversion"},
    include_package_data=True,
    cmdclass=cmdclass,
    install_requires=[
        # upper bound = the newest nnU-Net tested: the PNSS/HESS loader overrides nnUNetDataLoader internals
        # (tests/test_packaging.py pins what it relies on); raise it after running the suite on a newer release
        # floor: nnUNet_extTrainer (how nnU-Net finds our trainers) and the build_network_architecture signature our
        # trainers use appeared in 2.8.0 (scripts/check_nnunet_floor.sh runs the quick loop on it)
        "nnunetv2>=2.8.0,<=2.8.1",
        "torch>=2.1.2,!=2.9.*",  # as nnU-Net 2.8: torch 2.9.x is excluded there
        "numpy",
        "scipy>=1.15",  # scipy.stats.bootstrap(rng=...) (evaluation/summary.py)
        "SimpleITK",
        "edt>=2.3",
        "matplotlib",
        "tqdm",
        # imported directly (nnU-Net depends on them too)
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.3",
        "acvl_utils>=0.2",
        "dynamic_network_architectures>=0.3",
    ],
    extras_require={"test": [
        "pytest", "pytest-timeout",
        "pytest-xdist>=3",  # run_tests.sh: two test files at a time on the 2-core CI machine
        "setuptools>=70.1",  # the wheel test builds without isolation
        # independent references of the evaluation metrics (tests only)
        "monai>=1.4", "surface-distance>=0.1", "medpy>=0.5",
    ]},
    entry_points={
        # every command under its nnU-Net style name (nnUNetv2_ext_*) and its lower-case alias (nnunetv2_ext_*)
        "console_scripts": with_nnunet_style_names([
            "nnunetv2_ext_phantom=nnunetv2_ext.phantom:main",
            "nnunetv2_ext_demo=nnunetv2_ext.demo:main",
            "nnunetv2_ext_trainer_path=nnunetv2_ext._register_trainers:main",
            "nnunetv2_ext_evaluate=nnunetv2_ext.evaluation.cli:evaluate_main",
            "nnunetv2_ext_compare=nnunetv2_ext.evaluation.cli:compare_main",
            "nnunetv2_ext_convert_nih=nnunetv2_ext.dataset_conversion.nih_pancreas:main",
            "nnunetv2_ext_convert_nih_slices=nnunetv2_ext.dataset_conversion.nih_slices:main",
            "nnunetv2_ext_benchmark=nnunetv2_ext.benchmark.cli:main",
            "nnunetv2_ext_convert_lits=nnunetv2_ext.dataset_conversion.lits:main",
            "nnunetv2_ext_convert_msd=nnunetv2_ext.dataset_conversion.msd:main",
            "nnunetv2_ext_convert_flare22=nnunetv2_ext.dataset_conversion.flare22:main",
            "nnunetv2_ext_pnss_schedule=nnunetv2_ext.sampling.schedule_cli:main",
            "nnunetv2_ext_pseudolabel=nnunetv2_ext.semisupervised.cli:pseudolabel_main",
            "nnunetv2_ext_self_train=nnunetv2_ext.semisupervised.cli:self_train_main",
            "nnunetv2_ext_add_slice_position=nnunetv2_ext.dataset_conversion.slice_position:main",
            "nnunetv2_ext_add_slice_position_to_images=nnunetv2_ext.dataset_conversion.slice_position:images_main",
            "nnunetv2_ext_train_propagation=nnunetv2_ext.propagation.cli:train_main",
            "nnunetv2_ext_propagate=nnunetv2_ext.propagation.cli:propagate_main",
        ])
    },
)
