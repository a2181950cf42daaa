"""The learning-rate restart of Liu, Duan, Zeng (2021) for any nnU-Net trainer: :class:`LRRestartMixin` (mixin first).

The paper restarts the learning rate when its pixel-level term β switches on (60 % of training). With
``lr_restart_fraction = f`` the trainer's poly schedule runs over [0, R) and again from the initial rate over [R, N),
R = ceil(f · N) (:func:`nnunetv2_ext.losses.schedules.restarted_poly_lr`), in nnU-Net's scheduler slot
(:class:`nnunetv2_ext.nnunet_adapters.lr.EpochFunctionLRScheduler`); a pure function of the epoch, so ``--c`` resumes
on it. ``None`` keeps nnU-Net's schedule.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from nnunetv2_ext.losses.schedules import restart_epoch, restarted_poly_lr
from nnunetv2_ext.nnunet_adapters.lr import EpochFunctionLRScheduler

__all__ = ["LRRestartMixin"]


class LRRestartMixin:
    lr_restart_fraction: Optional[float] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        f = self.lr_restart_fraction
        if f is not None and not (isinstance(f, (int, float)) and 0 < f < 1):
            raise ValueError(f"{type(self).__name__}: lr_restart_fraction must be in (0, 1) or None, got {f!r}")
        super().__init__(plans, configuration, fold, dataset_json, device)

    def configure_optimizers(self):
        optimizer, scheduler = super().configure_optimizers()
        if self.lr_restart_fraction is None:
            return optimizer, scheduler
        restart = restart_epoch(self.lr_restart_fraction, self.num_epochs)
        self.print_to_log_file(f"learning rate: poly schedule restarted at epoch {restart} of {self.num_epochs} "
                               f"(lr_restart_fraction {self.lr_restart_fraction:g})")
        lr_at = functools.partial(restarted_poly_lr, num_epochs=self.num_epochs, initial_lr=self.initial_lr,
                                  restart=restart)
        return optimizer, EpochFunctionLRScheduler(optimizer, lr_at, self.num_epochs)
