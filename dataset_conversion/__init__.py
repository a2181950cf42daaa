"""Converters from public datasets into nnU-Net raw format (installed as ``nnunetv2_ext.dataset_conversion``)."""
