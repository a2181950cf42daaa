"""Deprecated package: the networks moved to their methods' folders (issue 21): the cascade tumour network to
:mod:`nnunetv2_ext.cascade`, the multi-level structural network to :mod:`nnunetv2_ext.coarse_to_fine`. The old module
paths keep working with a DeprecationWarning."""
