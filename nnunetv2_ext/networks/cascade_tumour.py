"""Moved to :mod:`nnunetv2_ext.cascade.network` and :mod:`nnunetv2_ext.cascade.blocks` (issue 21: one folder per method). Old imports keep working with a DeprecationWarning."""
from nnunetv2_ext._moved import moved

__getattr__ = moved(__name__, ["nnunetv2_ext.cascade.network", "nnunetv2_ext.cascade.blocks", "nnunetv2_ext.two_stage.ops"])
