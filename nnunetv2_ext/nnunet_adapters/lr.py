"""A learning rate that is any function of the epoch, in nnU-Net's scheduler slot: :class:`EpochFunctionLRScheduler`.

nnU-Net's trainer builds a ``PolyLRScheduler`` in ``configure_optimizers`` and calls ``step(current_epoch)`` at every
epoch start (also after ``--c``), so a rate that is a pure function of the epoch resumes correctly. The function is
given by the caller (e.g. :func:`nnunetv2_ext.losses.schedules.restarted_poly_lr` with its other arguments bound), so
this module stays free of the package's methods. ``tests/test_nnunet_adapters.py`` pins what it relies on.
"""
from __future__ import annotations

from typing import Callable

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler


class EpochFunctionLRScheduler(PolyLRScheduler):
    """``lr_at(epoch)`` for every parameter group at ``step(epoch)``; ``step()`` without an epoch counts on."""

    def __init__(self, optimizer, lr_at: Callable[[int], float], max_steps: int, current_step: int = None):
        self.lr_at = lr_at
        super().__init__(optimizer, lr_at(0), max_steps, 0.9, current_step)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        new_lr = float(self.lr_at(current_step))
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = new_lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
