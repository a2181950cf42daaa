"""Epoch-dependent loss weights, as pure functions of (epoch, num_epochs).

Being pure functions of the epoch, they need no state in checkpoints: ``nnUNetv2_train --c`` resumes at the right
weights. Lengths are fractions of nnU-Net's training length (``num_epochs``), so the same schedule fits 1000-epoch and
tiny test runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def _check_epoch(epoch: int, num_epochs: int) -> None:
    if num_epochs < 1 or epoch < 0:
        raise ValueError(f"need epoch >= 0 and num_epochs >= 1, got epoch={epoch}, num_epochs={num_epochs}")


@dataclass(frozen=True)
class ConstantWeight:
    """w(epoch) = value (>= 0)."""
    value: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.value) and self.value >= 0):
            raise ValueError(f"ConstantWeight: value must be a finite number >= 0, got {self.value}")

    def __call__(self, epoch: int, num_epochs: int) -> float:
        _check_epoch(epoch, num_epochs)
        return float(self.value)


@dataclass(frozen=True)
class StepUpWeight:
    """w = min(maximum, start + increment · floor(epoch / step_epochs)), step_epochs = max(1, round(step_fraction ·
    num_epochs)).

    Liu, Duan, Zeng's α: start 0, +0.2 per step, up to 1. Default step: 5 % of training, so α reaches 1 after 25 %.
    """
    increment: float = 0.2
    step_fraction: float = 0.05
    start: float = 0.0
    maximum: float = 1.0

    def __post_init__(self):
        if not 0 < self.increment <= 1:
            raise ValueError(f"StepUpWeight: increment must be in (0, 1], got {self.increment}")
        if not 0 < self.step_fraction <= 1:
            raise ValueError(f"StepUpWeight: step_fraction must be in (0, 1] (a fraction of the training length), "
                             f"got {self.step_fraction}")
        if not 0 <= self.start <= self.maximum or not math.isfinite(self.maximum):
            raise ValueError(f"StepUpWeight: need 0 <= start <= maximum < inf, got start={self.start}, "
                             f"maximum={self.maximum}")

    def __call__(self, epoch: int, num_epochs: int) -> float:
        _check_epoch(epoch, num_epochs)
        step_epochs = max(1, round(self.step_fraction * num_epochs))
        # rounded: 0.6, not 0.6000000000000001
        return round(min(self.maximum, self.start + self.increment * (epoch // step_epochs)), 12)


@dataclass(frozen=True)
class SwitchWeight:
    """w = before for epoch < switch_fraction · num_epochs, after from then on (Liu, Duan, Zeng's β: 0, then 1).

    Default switch: half of the training, once the region and boundary terms have shaped the segmentation and the
    uncertain points lie on its boundary."""
    switch_fraction: float = 0.5
    before: float = 0.0
    after: float = 1.0

    def __post_init__(self):
        if not 0 <= self.switch_fraction <= 1:
            raise ValueError(f"SwitchWeight: switch_fraction must be in [0, 1], got {self.switch_fraction}")
        for name in ("before", "after"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"SwitchWeight: {name} must be a finite number >= 0, got {v}")

    def __call__(self, epoch: int, num_epochs: int) -> float:
        _check_epoch(epoch, num_epochs)
        return float(self.after if epoch >= self.switch_fraction * num_epochs else self.before)


def restart_epoch(switch_fraction: float, num_epochs: int) -> int:
    """The first epoch at which a :class:`SwitchWeight` with ``switch_fraction`` is switched on: ceil(f · N)."""
    _check_epoch(0, num_epochs)
    if not 0 <= switch_fraction <= 1:
        raise ValueError(f"switch fraction must be in [0, 1], got {switch_fraction}")
    return min(e for e in range(num_epochs + 1) if e >= switch_fraction * num_epochs)


def restarted_poly_lr(epoch: int, num_epochs: int, initial_lr: float, restart: int, exponent: float = 0.9) -> float:
    """nnU-Net's poly learning rate, restarted at epoch ``restart`` (Liu, Duan, Zeng restart the learning rate when
    β switches on): lr0 · (1 - e / R)^p over [0, R), then lr0 · (1 - (e - R) / (N - R))^p over [R, N). With R = 0 or
    R >= N it is nnU-Net's schedule, lr0 · (1 - e / N)^p."""
    _check_epoch(epoch, num_epochs)
    if restart <= 0 or restart >= num_epochs:
        return initial_lr * (1 - epoch / num_epochs) ** exponent
    if epoch < restart:
        return initial_lr * (1 - epoch / restart) ** exponent
    return initial_lr * (1 - (epoch - restart) / (num_epochs - restart)) ** exponent
