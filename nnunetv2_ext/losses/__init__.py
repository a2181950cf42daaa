"""Boundary-aware losses for nnU-Net (one module per loss; shapes and conventions in each docstring, docs/losses.md).

All structural terms are called as ``term(logits (B, C, *spatial), target (B, 1, *spatial), sdm)`` and combined with
nnU-Net's Dice + CE by :class:`RegionAndStructuralLoss` (nnU-Net's ``loss(output, target)`` interface).
"""
from nnunetv2_ext.losses.boundary import BoundaryLoss
from nnunetv2_ext.losses.compound import RegionAndStructuralLoss
from nnunetv2_ext.losses.hausdorff import HausdorffDTLoss
from nnunetv2_ext.losses.multi_level import MultiLevelStructuralLoss
from nnunetv2_ext.losses.schedules import ConstantWeight, StepUpWeight, SwitchWeight
from nnunetv2_ext.losses.shared_boundary import InterClassSharedBoundaryLoss, shared_boundary_matrix
from nnunetv2_ext.losses.uncertain_points import UncertainPointLoss, point_sample

__all__ = ["BoundaryLoss", "HausdorffDTLoss", "UncertainPointLoss",
           "InterClassSharedBoundaryLoss", "MultiLevelStructuralLoss", "RegionAndStructuralLoss", "ConstantWeight",
           "StepUpWeight", "SwitchWeight", "shared_boundary_matrix", "point_sample"]

# moved to nnunetv2_ext.cascade.loss (issue 21); the old name keeps working with a DeprecationWarning
from nnunetv2_ext._moved import moved  # noqa: E402

__getattr__ = moved(__name__, ["nnunetv2_ext.cascade.loss"], names=["CascadeTumorLoss"])
