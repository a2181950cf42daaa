"""Slice-position encoding (Pham et al., FLARE22 §2.2) for any 2D trainer: :class:`SlicePositionMixin`.

    nnunetv2_ext_add_slice_position -i $nnUNet_raw/Dataset991_Phantom -d 993
    nnUNetv2_plan_and_preprocess -d 993 -c 2d
    nnUNetv2_train 993 2d 0 -tr nnUNetTrainerSlicePosition        # or nnUNetTrainerCPSSlicePosition
    nnunetv2_ext_add_slice_position_to_images -i IMAGES -o IMAGES_POS -d 993
    nnUNetv2_predict -i IMAGES_POS -o OUT -d 993 -c 2d -f 0 -tr nnUNetTrainerSlicePosition

The position is a dataset channel (``nnunetv2_ext.slice_position``), so nnU-Net's preprocessing, data loading and
prediction carry it like any input; the mixin checks the dataset before anything is written and keeps the channel
out of nnU-Net's intensity augmentations (``slice_position.transforms``). See
``trainers_docs/nnUNetTrainerSlicePosition.md``.
"""
from __future__ import annotations

import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_ext.slice_position.checks import position_channel
from nnunetv2_ext.slice_position.transforms import HoldSlicePosition, RestoreSlicePosition
from nnunetv2_ext.trainers.cps import nnUNetTrainerCPS

__all__ = ["SlicePositionMixin", "nnUNetTrainerSlicePosition", "nnUNetTrainerCPSSlicePosition"]


class SlicePositionMixin:
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        plans_manager = PlansManager({k: v for k, v in plans.items() if k != "continue_training"})
        self.slice_position_channel = position_channel(
            dataset_json, plans_manager.get_configuration(configuration).patch_size, plans_manager.transpose_forward,
            type(self).__name__)
        super().__init__(plans, configuration, fold, dataset_json, device)

    def initialize(self):
        super().initialize()
        self.print_to_log_file(f"slice position: channel {self.slice_position_channel} (p = (k + 1/2) / Z from the "
                               f"most superior slice), kept out of the intensity augmentation")

    def get_training_transforms(self, *args, **kwargs):
        pipeline = super().get_training_transforms(*args, **kwargs)
        c = self.slice_position_channel
        return ComposeTransforms([HoldSlicePosition(c), pipeline, RestoreSlicePosition(c)])


class nnUNetTrainerSlicePosition(SlicePositionMixin, nnUNetTrainer):
    pass


class nnUNetTrainerCPSSlicePosition(SlicePositionMixin, nnUNetTrainerCPS):
    pass
