"""Moved to :mod:`nnunetv2_ext.nnunet_adapters.checkpoint_sidecar` (it is glue to nnU-Net's checkpoints)."""
from nnunetv2_ext.nnunet_adapters.checkpoint_sidecar import read_state, sidecar_path, write_state  # noqa: F401
