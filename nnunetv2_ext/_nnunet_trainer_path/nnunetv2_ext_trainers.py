# nnU-Net imports this file by its bare name while looking for a trainer (see nnunetv2_ext/_register_trainers.py).
# Re-exporting keeps one class object per trainer, whichever way it was found.
from nnunetv2_ext.trainers import *  # noqa: F401,F403


def __getattr__(name):
    """Budget trainers of ``nnUNetv2_ext_benchmark`` (``<Trainer>_BM<epochs>x<iterations>v..s<seed>``), made on
    demand for nnU-Net's lookup by name (nnunetv2_ext.benchmark.budget)."""
    from nnunetv2_ext.benchmark.budget import resolve
    return resolve(name)
