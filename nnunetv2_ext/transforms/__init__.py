"""Augmentation-worker transforms (batchgeneratorsv2) of nnunetv2_ext."""
from nnunetv2_ext.transforms.signed_distance import SignedDistanceMapTransform, signed_distance_maps

__all__ = ["SignedDistanceMapTransform", "signed_distance_maps"]
