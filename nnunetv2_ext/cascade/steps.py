"""The three training steps of the cascade (Qiu et al. 2024): S, I, J.

- S (separate): prior off, stage 2 crops from the reference organ box; the stages are trained separately (no
  gradient path from stage 2's loss into stage 1).
- I (joint with the reference): prior on (stage 2's loss trains stage 1 through the salient change module), crops
  still from the reference organ box.
- J (joint, as at test time): prior on, crops from stage 1's own prediction.

The paper trains 2 / 4 / 50 epochs; here the steps are fractions of nnU-Net's ``num_epochs`` (defaults 2/56 and
4/56, the rest is J). The step is a pure function of the epoch, so ``nnUNetv2_train --c`` resumes in the right step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

PAPER_SEPARATE_FRACTION = 2 / 56
PAPER_JOINT_REFERENCE_FRACTION = 4 / 56


@dataclass(frozen=True)
class CascadeStep:
    name: str
    prior_enabled: bool
    reference_boxes: bool

    def describe(self) -> str:
        return (f"step {self.name}: prior {'on' if self.prior_enabled else 'off'}, crop boxes from "
                f"{'the reference organ' if self.reference_boxes else 'stage 1 prediction'}")


STEP_S = CascadeStep("S", prior_enabled=False, reference_boxes=True)
STEP_I = CascadeStep("I", prior_enabled=True, reference_boxes=True)
STEP_J = CascadeStep("J", prior_enabled=True, reference_boxes=False)


def step_boundaries(num_epochs: int, separate_fraction: float, joint_reference_fraction: float) -> Tuple[int, int]:
    """First epoch of I and first epoch of J. A non-zero fraction gets at least one epoch."""
    for name, f in (("separate_fraction", separate_fraction), ("joint_reference_fraction", joint_reference_fraction)):
        if not 0 <= f <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {f}")
    if separate_fraction + joint_reference_fraction > 1:
        raise ValueError(f"separate_fraction + joint_reference_fraction must be <= 1, got "
                         f"{separate_fraction} + {joint_reference_fraction}")
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")

    def epochs(f):
        return 0 if f == 0 else max(1, round(f * num_epochs))

    start_i = min(epochs(separate_fraction), num_epochs)
    start_j = min(start_i + epochs(joint_reference_fraction), num_epochs)
    return start_i, start_j


def step_for_epoch(epoch: int, num_epochs: int, separate_fraction: float = PAPER_SEPARATE_FRACTION,
                   joint_reference_fraction: float = PAPER_JOINT_REFERENCE_FRACTION) -> CascadeStep:
    start_i, start_j = step_boundaries(num_epochs, separate_fraction, joint_reference_fraction)
    if epoch < start_i:
        return STEP_S
    if epoch < start_j:
        return STEP_I
    return STEP_J
