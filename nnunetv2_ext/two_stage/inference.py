"""Moved to :mod:`nnunetv2_ext.nnunet_adapters.predictor` (issue 21: one place touches nnU-Net's internals). Old imports keep
working with a DeprecationWarning."""
from nnunetv2_ext._moved import moved

__getattr__ = moved(__name__, ["nnunetv2_ext.nnunet_adapters.predictor", "nnunetv2_ext.nnunet_adapters.network"])
