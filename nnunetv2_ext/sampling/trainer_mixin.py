"""Moved to :mod:`nnunetv2_ext.trainers.sampling_mixin` (hook glue sits with the trainers); kept so that
``from nnunetv2_ext.sampling.trainer_mixin import PNSSHESSMixin`` in user code keeps working."""
from nnunetv2_ext.trainers.sampling_mixin import PNSSHESSMixin  # noqa: F401
