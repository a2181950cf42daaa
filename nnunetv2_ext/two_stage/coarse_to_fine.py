"""Moved to :mod:`nnunetv2_ext.coarse_to_fine.network` and :mod:`nnunetv2_ext.coarse_to_fine.loss` (issue 21: one folder per method). Old imports keep working with a DeprecationWarning."""
from nnunetv2_ext._moved import moved

__getattr__ = moved(__name__, ["nnunetv2_ext.coarse_to_fine.network", "nnunetv2_ext.coarse_to_fine.loss"])
