"""A run that a seed controls, on top of any nnU-Net trainer (mixin first): :class:`SeededRunMixin`.

With ``seed`` set (an int; ``None``, the default, changes nothing), the mixin seeds Python's, NumPy's and torch's
generators in the main process just before nnU-Net's ``initialize`` builds the network (weight initialisation;
``seed + 1000 x`` the DDP rank), and replaces the augmentation workers by seeded ones that deliver their batches in a
fixed order (:func:`nnunetv2_ext.nnunet_adapters.augmenters.seeded_augmenter`). Same seed, same first-epoch losses,
with workers on (``tests/test_benchmark.py``). The benchmark's budget trainers set the seed from their name; the
tiny test trainers whose checks depend on what a few hundred CPU iterations learn set a fixed one.
"""
from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch


class SeededRunMixin:
    seed: Optional[int] = None

    def _rank_seed(self) -> int:
        return self.seed + 1000 * (self.local_rank if self.is_ddp else 0)

    def initialize(self):
        if self.seed is not None and not self.was_initialized:
            seed = self._rank_seed()
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        super().initialize()

    def get_dataloaders(self):
        loaders = super().get_dataloaders()
        if self.seed is None:
            return loaders
        from nnunetv2_ext.nnunet_adapters.augmenters import VALIDATION_OFFSET, seeded_augmenter
        out = []
        for kind, loader, offset in zip(("training", "validation"), loaders, (0, VALIDATION_OFFSET)):
            seeded, how = seeded_augmenter(loader, self._rank_seed(), offset)
            self.print_to_log_file(f"seed {self.seed}: {kind} augmentation {how}")
            out.append(seeded)
        return tuple(out)
