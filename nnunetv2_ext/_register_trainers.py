"""Makes nnU-Net find the trainers of this package by name.

nnU-Net (>= 2.8.0, where it first appeared) searches the folders listed in the environment variable ``nnUNet_extTrainer`` for trainer classes it
does not know. At interpreter start-up the ``nnunetv2_ext-trainers.pth`` file that ``pip install`` puts into
site-packages imports this module, which appends our folder to that variable (keeping what the user set). The folder
holds a single module that re-exports :mod:`nnunetv2_ext.trainers`, so nnU-Net gets the very same class objects that
``import nnunetv2_ext.trainers`` gives.

Fallback (e.g. an environment that skips ``.pth`` files, ``python -S``):
``export nnUNet_extTrainer=$(nnunetv2_ext_trainer_path)``.
"""
import os

TRAINER_SEARCH_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_nnunet_trainer_path")


def register() -> None:
    current = os.environ.get("nnUNet_extTrainer", "")
    folders = [p for p in current.split(os.pathsep) if p]
    if TRAINER_SEARCH_FOLDER not in folders:
        folders.append(TRAINER_SEARCH_FOLDER)
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(folders)


def main(argv=None) -> int:
    """``nnUNetv2_ext_trainer_path``: prints the folder to put into ``nnUNet_extTrainer`` by hand (only needed where
    .pth files are skipped)."""
    import argparse

    argparse.ArgumentParser(prog="nnUNetv2_ext_trainer_path",
                            description="Print the folder that holds nnunetv2_ext's trainers for nnU-Net's "
                                        "nnUNet_extTrainer search path; only needed where .pth start-up files are "
                                        "skipped: export nnUNet_extTrainer=$(nnUNetv2_ext_trainer_path)").parse_args(argv)
    print(TRAINER_SEARCH_FOLDER)
    return 0


register()
