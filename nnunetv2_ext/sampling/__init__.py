"""PNSS/HESS sampling: pure logic (pnss, hess, slice_table) and its glue to nnU-Net's data loading (data_loader,
shared_state). The trainer mixin lives in :mod:`nnunetv2_ext.trainers.pnss_hess`."""
from nnunetv2_ext.sampling.hess import HardnessTable, mini_epoch_plan, per_sample_dice, select_hard  # noqa: F401
from nnunetv2_ext.sampling.pnss import PNSSSchedule, positive_block, select_slab  # noqa: F401
