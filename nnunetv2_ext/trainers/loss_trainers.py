"""nnU-Net trainers with boundary-aware losses (issue 5).

Each trainer keeps nnU-Net's Dice + CE (with deep supervision) and adds one or two structural terms on the
full-resolution output (see :class:`nnunetv2_ext.losses.RegionAndStructuralLoss`):

- ``nnUNetTrainerBoundary``: + α(epoch) · boundary loss (Eq. 7), α = 0, +0.2 every 5 % of the epochs, up to 1.
- ``nnUNetTrainerHausdorff``: + α(epoch) · Hausdorff DT loss (Eq. 8), same α.
- ``nnUNetTrainerMLL``: multi-level structural loss (Eq. 11): + α · boundary + β · uncertain-point CE (Eq. 10),
  β = 0 for the first half of training, then 1.
- ``nnUNetTrainerSharedBoundary``: + λ · inter-class shared-boundary loss (Eq. 14-16), λ = 1.
- ``nnUNetTrainerPNSSHESS_MLL``: MLL with PNSS/HESS sampling.

Signed distance maps of the augmented target are computed in the augmentation workers
(:class:`~nnunetv2_ext.transforms.SignedDistanceMapTransform`, appended to nnU-Net's pipelines) and travel as the last
entry of the target list, so the loss is still called as ``self.loss(output, target)`` and ``target[0]`` is still the
full-resolution label map. The weights are pure functions of the epoch, set at every epoch start (``--c`` safe).

Changing a parameter is a subclass (found by name like any trainer)::

    class nnUNetTrainerBoundaryFast(nnUNetTrainerBoundary):
        boundary_weight = StepUpWeight(increment=0.5, step_fraction=0.02)

Combining any of these losses with PNSS/HESS sampling is two lines (mixin first)::

    class nnUNetTrainerPNSSHESS_Boundary(PNSSHESSMixin, nnUNetTrainerBoundary):
        pass
"""
from __future__ import annotations


import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunetv2_ext.losses import (BoundaryLoss, ConstantWeight, HausdorffDTLoss, InterClassSharedBoundaryLoss,
                                 MultiLevelStructuralLoss, RegionAndStructuralLoss, StepUpWeight, SwitchWeight,
                                 UncertainPointLoss)
from nnunetv2_ext.losses.compound import Schedule
from nnunetv2_ext.losses.multi_level import PAPER_BETA_SWITCH, PAPER_SELECTION_STRIDE
from nnunetv2_ext.trainers.lr_restart import LRRestartMixin
from nnunetv2_ext.trainers.sampling_mixin import PNSSHESSMixin
from nnunetv2_ext.transforms import SignedDistanceMapTransform

__all__ = ["nnUNetTrainerBoundary", "nnUNetTrainerHausdorff", "nnUNetTrainerMLL", "nnUNetTrainerSharedBoundary",
           "nnUNetTrainerPNSSHESS_MLL", "StructuralLossTrainerBase"]


class StructuralLossTrainerBase(nnUNetTrainer):
    """nnU-Net's Dice + CE plus the terms of :meth:`build_structural_loss`; not meant to be trained by itself.

    Subclasses set ``uses_sdm`` (the worker pipelines then append the signed distance maps) and implement
    :meth:`build_structural_loss`. All parameters are checked in ``__init__``, before any data is loaded.
    """
    uses_sdm: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        name = type(self).__name__
        if self.label_manager.has_regions:
            raise ValueError(f"{name}: the dataset is region-based (regions {self.label_manager.foreground_regions}; "
                             f"sigmoid outputs). Its structural losses are defined for softmax outputs over "
                             f"mutually exclusive labels only; train a label-based dataset or use nnUNetTrainer.")
        if self.uses_sdm and not self.enable_deep_supervision:
            raise ValueError(f"{name} needs deep supervision (nnU-Net's default): the signed distance maps travel "
                             f"as an extra entry of the deep-supervision target list")
        spacing = self.configuration_manager.spacing
        if self.uses_sdm and len(spacing) != len(self.configuration_manager.patch_size):
            raise ValueError(f"{name}: spacing {spacing} does not match patch size "
                             f"{self.configuration_manager.patch_size} of configuration {configuration}")
        self.build_structural_loss(nn.Identity())  # raises on bad parameters now, not after the data loaders start
        self.structural_loss = None

    def build_structural_loss(self, region_loss: nn.Module) -> RegionAndStructuralLoss:
        raise NotImplementedError

    def _build_loss(self):
        self.structural_loss = self.build_structural_loss(super()._build_loss())
        self.structural_loss.set_epoch(self.current_epoch, self.num_epochs)
        return self.structural_loss

    def on_train_epoch_start(self):
        self.structural_loss.set_epoch(self.current_epoch, self.num_epochs)
        super().on_train_epoch_start()
        weights = ", ".join(f"{k}={v:g}" for k, v in self.structural_loss.current_weights().items())
        self.print_to_log_file(f"Structural loss weights: {weights}")

    def _sdm_transform(self) -> SignedDistanceMapTransform:
        return SignedDistanceMapTransform(self.label_manager.foreground_labels, self.configuration_manager.spacing,
                                          self.label_manager.ignore_label)

    # nnU-Net declares these two as staticmethods and calls them through self; instance methods here, because the
    # SDM transform needs the spacing and labels. They run once, in the main process; the transform runs in workers.
    # Only the deep-supervision pipelines (training, validation) get the maps; others, e.g. the PNSS/HESS scoring
    # pass (no deep-supervision scales), stay nnU-Net's.
    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, *args, **kwargs):
        transforms = super().get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales, *args,
                                                     **kwargs)
        return self._with_sdm(transforms, deep_supervision_scales)

    def get_validation_transforms(self, deep_supervision_scales, *args, **kwargs):
        return self._with_sdm(super().get_validation_transforms(deep_supervision_scales, *args, **kwargs),
                              deep_supervision_scales)

    def _with_sdm(self, transforms, deep_supervision_scales):
        if not self.uses_sdm or deep_supervision_scales is None:
            return transforms
        return ComposeTransforms([transforms, self._sdm_transform()])


class nnUNetTrainerBoundary(StructuralLossTrainerBase):
    """Dice + CE + α(epoch) · boundary loss (Kervadec et al.; Eq. 6-7 of Liu, Duan, Zeng 2021)."""
    uses_sdm = True
    boundary_weight: Schedule = StepUpWeight()

    def build_structural_loss(self, region_loss):
        return RegionAndStructuralLoss(
            region_loss, {"boundary": (BoundaryLoss(self.label_manager.ignore_label), self.boundary_weight)},
            uses_sdm=True)


class nnUNetTrainerHausdorff(StructuralLossTrainerBase):
    """Dice + CE + α(epoch) · Hausdorff DT loss (Karimi & Salcudean; Eq. 8 of Liu, Duan, Zeng 2021)."""
    uses_sdm = True
    hausdorff_weight: Schedule = StepUpWeight()
    hausdorff_exponent: float = 2.0
    hausdorff_two_sided: bool = True

    def build_structural_loss(self, region_loss):
        term = HausdorffDTLoss(self.configuration_manager.spacing, self.hausdorff_exponent,
                               self.hausdorff_two_sided, self.label_manager.ignore_label)
        return RegionAndStructuralLoss(region_loss, {"hausdorff": (term, self.hausdorff_weight)}, uses_sdm=True)


class nnUNetTrainerMLL(LRRestartMixin, StructuralLossTrainerBase):
    """Multi-level structural loss (Eq. 11 of Liu, Duan, Zeng 2021): Dice + CE + α · boundary + β · E_P, with the
    paper's options: β from 60 % of training, the learning rate restarted there, E_P's points selected on the
    stride-4 logits (``trainers_docs/nnUNetTrainerMLL.md``)."""
    uses_sdm = True
    boundary_weight: Schedule = StepUpWeight()
    pixelwise_weight: Schedule = SwitchWeight(PAPER_BETA_SWITCH)
    lr_restart_fraction = PAPER_BETA_SWITCH
    num_points: int = 2048
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75
    selection_stride: int = PAPER_SELECTION_STRIDE

    def build_structural_loss(self, region_loss):
        ignore = self.label_manager.ignore_label
        return MultiLevelStructuralLoss(
            region_loss, BoundaryLoss(ignore),
            UncertainPointLoss(self.num_points, self.oversample_ratio, self.importance_ratio, ignore,
                               self.selection_stride),
            alpha=self.boundary_weight, beta=self.pixelwise_weight)


class nnUNetTrainerSharedBoundary(StructuralLossTrainerBase):
    """Dice + CE + λ · inter-class shared-boundary loss (Eq. 14-16 of Qiu et al. 2024), soft version.

    Most useful with >= 2 foreground classes that touch (e.g. pancreas and tumour); with one foreground class the
    matrix only says whether the class is present."""
    uses_sdm = False
    shared_boundary_weight: Schedule = ConstantWeight(1.0)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if len(self.label_manager.foreground_labels) < 2:
            self.print_to_log_file(f"WARNING: {type(self).__name__} on a dataset with one foreground class: the "
                                   f"shared-boundary matrix then carries little information (see trainers_docs).")

    def build_structural_loss(self, region_loss):
        term = InterClassSharedBoundaryLoss(self.label_manager.ignore_label)
        return RegionAndStructuralLoss(region_loss, {"shared_boundary": (term, self.shared_boundary_weight)},
                                       uses_sdm=False)


class nnUNetTrainerPNSSHESS_MLL(PNSSHESSMixin, nnUNetTrainerMLL):
    """Multi-level structural loss (Eq. 11) with PNSS/HESS slice sampling (nnunetv2_ext.sampling)."""


# the small CPU variants moved to nnunetv2_ext.trainers.small_variants (issue 21); old imports keep working
from nnunetv2_ext._moved import moved  # noqa: E402

__getattr__ = moved(__name__, ["nnunetv2_ext.trainers.small_variants"], names=['nnUNetTrainerBoundaryTiny', 'nnUNetTrainerHausdorffTiny', 'nnUNetTrainerMLLTiny', 'nnUNetTrainerSharedBoundaryTiny', 'nnUNetTrainerPNSSHESS_MLLTiny'])
