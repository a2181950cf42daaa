"""Training steps of two-stage methods as fractions of the run (pure functions of the epoch, so ``--c`` resumes in the
right step).

A :class:`TrainingStep` says three things about how the second stage is fed while it is active:

- ``prior_enabled``: the stage-1 map is turned into a prior on the stage-2 input (:mod:`nnunetv2_ext.two_stage.prior`);
- ``joint``: stage 2's loss reaches stage 1 through that prior (False: the prior, if on, is detached - the stages are
  trained separately);
- ``reference_boxes``: crop boxes come from the reference (ground truth) organ; False: from stage 1's own prediction,
  as at test time;
- ``stage2_trained`` (default True): False only in the cascade's stage-1 pre-training step P, where stage 2 is not
  run and the loss is stage 1's alone.

A :class:`StepSchedule` is a frozen, validated sequence of steps with the share of ``num_epochs`` each one gets (the
last one takes the rest). The two schedules in the package:

- cascade (Qiu et al. 2024): S (separate: prior off, reference boxes) 2/56, I (joint, reference boxes) 4/56,
  J (joint, predicted boxes) the rest - the paper trains 2 / 4 / 50 epochs, :data:`CASCADE_SCHEDULE`; with the
  paper's transfer step T a pre-training step P (stage 1 alone, on the organ) comes first and stage 1's encoder
  initialises stage 2's at the start of S (``cascade_schedule(..., stage1_pretrain_fraction=p)``);
- coarse-to-fine (Liu et al.'s three-step optimisation): (1) reference boxes, stages separate; (2) reference boxes,
  joint through the saliency transformation; (3) predicted boxes - the same object with its own steps and fractions
  (built by that method's module).

Epoch boundaries: ``round(fraction * num_epochs)`` epochs per step, at least one for a non-zero fraction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class TrainingStep:
    name: str
    prior_enabled: bool
    joint: bool
    reference_boxes: bool
    stage2_trained: bool = True

    def __post_init__(self):
        if self.joint and not self.prior_enabled:
            raise ValueError(f"step {self.name}: joint optimisation needs the prior (the only path from stage 2's "
                             f"loss into stage 1)")
        if not self.stage2_trained and self.prior_enabled:
            raise ValueError(f"step {self.name}: a step without stage 2 has no prior to switch on")

    def describe(self) -> str:
        if not self.stage2_trained:
            return f"step {self.name}: stage 1 alone (stage 2 not run, loss = stage 1's)"
        prior = "off" if not self.prior_enabled else ("on, joint" if self.joint else "on, detached")
        return (f"step {self.name}: prior {prior}, crop boxes from "
                f"{'the reference organ' if self.reference_boxes else 'stage 1 prediction'}")


STEP_P = TrainingStep("P", prior_enabled=False, joint=False, reference_boxes=True, stage2_trained=False)
STEP_S = TrainingStep("S", prior_enabled=False, joint=False, reference_boxes=True)
STEP_I = TrainingStep("I", prior_enabled=True, joint=True, reference_boxes=True)
STEP_J = TrainingStep("J", prior_enabled=True, joint=True, reference_boxes=False)

PAPER_SEPARATE_FRACTION = 2 / 56
PAPER_JOINT_REFERENCE_FRACTION = 4 / 56


@dataclass(frozen=True)
class StepSchedule:
    """Steps in order; ``fractions[i]`` is the share of ``num_epochs`` of ``steps[i]`` for all steps but the last,
    which takes the rest. Validated on creation (fractions in [0, 1], sum <= 1, distinct names)."""
    steps: Tuple[TrainingStep, ...]
    fractions: Tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        if len(self.steps) < 1 or len(self.fractions) != len(self.steps) - 1:
            raise ValueError(f"{len(self.steps)} steps need {max(len(self.steps) - 1, 0)} fractions (the last step "
                             f"takes the rest), got {len(self.fractions)}")
        for step, f in zip(self.steps, self.fractions):
            if not 0 <= f <= 1:
                raise ValueError(f"fraction of step {step.name} must lie in [0, 1], got {f}")
        if sum(self.fractions) > 1 + 1e-9:
            raise ValueError(f"the step fractions must sum to <= 1, got {' + '.join(map(str, self.fractions))}")
        if len({s.name for s in self.steps}) != len(self.steps):
            raise ValueError(f"step names must be distinct: {[s.name for s in self.steps]}")

    def starts(self, num_epochs: int) -> Tuple[int, ...]:
        """First epoch of every step (the first step starts at 0)."""
        if num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
        starts, start = [0], 0
        for f in self.fractions:
            start = min(start + (0 if f == 0 else max(1, round(f * num_epochs))), num_epochs)
            starts.append(start)
        return tuple(starts)

    def first_epoch_of(self, name: str, num_epochs: int) -> int:
        """First epoch of the step called ``name``."""
        names = [s.name for s in self.steps]
        if name not in names:
            raise ValueError(f"no step {name!r} in the schedule {names}")
        return self.starts(num_epochs)[names.index(name)]

    def step_for_epoch(self, epoch: int, num_epochs: int) -> TrainingStep:
        current = self.steps[0]
        for step, start in zip(self.steps, self.starts(num_epochs)):
            if epoch >= start:
                current = step
        return current

    def describe(self, num_epochs: int) -> str:
        """E.g. ``S epochs [0, 2), I [2, 6), J [6, 56)``."""
        starts = self.starts(num_epochs) + (num_epochs,)
        parts = [f"{s.name} [{a}, {b})" for s, a, b in zip(self.steps, starts, starts[1:])]
        return parts[0].replace(" [", " epochs [", 1) + (", " + ", ".join(parts[1:]) if parts[1:] else "")


def cascade_schedule(separate_fraction: float = PAPER_SEPARATE_FRACTION,
                     joint_reference_fraction: float = PAPER_JOINT_REFERENCE_FRACTION,
                     stage1_pretrain_fraction: float = 0.0) -> StepSchedule:
    """The cascade's S / I / J schedule with the given shares of S and I; with ``stage1_pretrain_fraction`` > 0 the
    stage-1 pre-training step P comes first (P / S / I / J, the transfer step T between P and S)."""
    if not (isinstance(stage1_pretrain_fraction, (int, float)) and 0 <= stage1_pretrain_fraction < 1):
        raise ValueError(f"stage1_pretrain_fraction must lie in [0, 1), got {stage1_pretrain_fraction!r}")
    if stage1_pretrain_fraction > 0:
        return StepSchedule((STEP_P, STEP_S, STEP_I, STEP_J),
                            (stage1_pretrain_fraction, separate_fraction, joint_reference_fraction))
    return StepSchedule((STEP_S, STEP_I, STEP_J), (separate_fraction, joint_reference_fraction))


CASCADE_SCHEDULE = cascade_schedule()


def step_boundaries(num_epochs: int, separate_fraction: float, joint_reference_fraction: float) -> Tuple[int, int]:
    """First epoch of I and first epoch of J of the cascade schedule."""
    starts = cascade_schedule(separate_fraction, joint_reference_fraction).starts(num_epochs)
    return starts[1], starts[2]


def step_for_epoch(epoch: int, num_epochs: int, separate_fraction: float = PAPER_SEPARATE_FRACTION,
                   joint_reference_fraction: float = PAPER_JOINT_REFERENCE_FRACTION) -> TrainingStep:
    return cascade_schedule(separate_fraction, joint_reference_fraction).step_for_epoch(epoch, num_epochs)

