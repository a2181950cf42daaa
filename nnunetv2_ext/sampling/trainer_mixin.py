"""Moved to :mod:`nnunetv2_ext.trainers.sampling_mixin` (hook glue sits with the trainers). Kept so that
``from nnunetv2_ext.sampling.trainer_mixin import PNSSHESSMixin`` in user code keeps working, with a
DeprecationWarning; the trainer module is imported only when the old name is used (nothing in the package imports
``trainers``)."""
import warnings


def __getattr__(name):
    if name == "PNSSHESSMixin":
        warnings.warn("nnunetv2_ext.sampling.trainer_mixin.PNSSHESSMixin moved to "
                      "nnunetv2_ext.trainers.sampling_mixin.PNSSHESSMixin; the old path will be removed",
                      DeprecationWarning, stacklevel=2)
        from importlib import import_module
        return import_module("nnunetv2_ext.trainers.sampling_mixin").PNSSHESSMixin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
