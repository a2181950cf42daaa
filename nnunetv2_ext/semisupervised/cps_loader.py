"""nnU-Net's training loader with unlabelled patches added to every batch (for cross pseudo supervision).

The loader runs inside nnU-Net's augmentation workers (``nnUNet_n_proc_DA`` processes), like nnU-Net's own: each
worker holds a copy with both datasets and builds whole batches. Nothing in it changes during training (the CPS
weight lives in the main process), so no state has to reach the workers.

Each batch is nnU-Net's labelled batch (``data``, ``target``, ``keys``: cases drawn as nnU-Net draws them, with its
foreground oversampling) plus

- ``unlabelled_data`` (B_u, C, *patch): random patches of unlabelled cases (drawn with replacement, uniformly; they
  have no labels, so no foreground oversampling), through the same augmentation pipeline as the labelled patches;
- ``unlabelled_keys``: the unlabelled cases drawn; ``worker_pid``: the process that built the batch (the trainer
  logs both, so a run shows what was actually sampled and by whom).
"""
from __future__ import annotations

import os

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


class nnUNetDataLoaderUnlabelled(nnUNetDataLoader):
    """Random patches (no foreground oversampling, no ignore-label sampling: there are no labels)."""

    def __init__(self, data, batch_size, patch_size, final_patch_size, label_manager, transforms=None):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=transforms)
        self.has_ignore = False

    def get_bbox(self, data_shape, force_fg, class_locations, overwrite_class=None, verbose=False):
        return super().get_bbox(data_shape, False, None, None, verbose)


class nnUNetDataLoaderCPS(nnUNetDataLoader):
    """nnU-Net's loader for the labelled cases plus a :class:`nnUNetDataLoaderUnlabelled` of ``unlabelled_data``."""

    def __init__(self, data, batch_size, patch_size, final_patch_size, label_manager, unlabelled_data,
                 unlabelled_batch_size: int, **kwargs):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager, **kwargs)
        if unlabelled_batch_size < 1:
            raise ValueError(f"unlabelled batch size must be >= 1, got {unlabelled_batch_size}")
        if not len(unlabelled_data.identifiers):
            raise ValueError("the CPS loader needs at least one unlabelled case")
        self.unlabelled = nnUNetDataLoaderUnlabelled(unlabelled_data, unlabelled_batch_size, patch_size,
                                                     final_patch_size, label_manager,
                                                     transforms=kwargs.get("transforms"))

    def generate_train_batch(self):
        batch = super().generate_train_batch()
        unlabelled = self.unlabelled.generate_train_batch()
        batch["unlabelled_data"] = unlabelled["data"]
        batch["unlabelled_keys"] = list(unlabelled["keys"])
        batch["worker_pid"] = os.getpid()
        return batch
