"""Cascade tumour variant (issue 6): organ stage, then tumour stage in the organ box, inside one nnU-Net network.

See ``trainers_docs/nnUNetTrainerCascadeTumor.md`` and :mod:`nnunetv2_ext.trainers.cascade_trainers`.
"""
from nnunetv2_ext.cascade.crop import bounding_box, crop_with_padding, expand_box, paste_crop  # noqa: F401
from nnunetv2_ext.cascade.losses import CascadeTumorLoss  # noqa: F401
from nnunetv2_ext.cascade.modules import CascadeTumorNet, SalientChangeModule, TumourStageNet  # noqa: F401
from nnunetv2_ext.cascade.steps import STEP_I, STEP_J, STEP_S, step_for_epoch  # noqa: F401
