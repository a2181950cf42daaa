"""Converters from public datasets into nnU-Net raw format.

Source tree vs import name: this folder lies at the repository root (``dataset_conversion/``) but is installed as the
sub-package ``nnunetv2_ext.dataset_conversion`` (``package_dir`` in ``setup.py``), so ``dataset_conversion/lits.py``
is imported as ``nnunetv2_ext.dataset_conversion.lits``; there is no top-level ``dataset_conversion`` package.
See ``dataset_conversion/README.md``.
"""
