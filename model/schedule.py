"""Step planning and the learning-rate schedule: x0.1 at 60% and x0.01 at 80% of the planned steps.

Steps are planned from the epochs, or, with a time budget, from the measured training speed and
the measured cost of a validation pass, whichever is fewer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DROPS = ((0.6, 0.1), (0.8, 0.01))


def lr_factor(step: int, planned_steps: int) -> float:
    """Multiplier of the base learning rate at `step` (0-based) of `planned_steps`."""
    factor = 1.0
    for at, value in DROPS:
        if step >= at * planned_steps:
            factor = value
    return factor


@dataclass(frozen=True)
class StepPlan:
    """How many optimiser steps to take, and why."""

    planned_steps: int
    steps_per_epoch: int
    budget_limited: bool

    @property
    def epochs(self) -> int:
        return math.ceil(self.planned_steps / self.steps_per_epoch)


def plan_steps(
    epochs: int,
    steps_per_epoch: int,
    *,
    budget_s: float | None = None,
    elapsed_s: float = 0.0,
    steps_done: int = 0,
    steps_per_s: float | None = None,
    val_s: float = 0.0,
) -> StepPlan:
    """Steps for `epochs`, cut to what fits in `budget_s` (total seconds, `elapsed_s` of them spent,
    `steps_done` steps taken) at `steps_per_s`, when each epoch also pays `val_s` of validation."""
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"need at least one epoch of at least one step, got {epochs} x {steps_per_epoch}")
    by_epochs = epochs * steps_per_epoch
    if budget_s is None or not steps_per_s:
        return StepPlan(by_epochs, steps_per_epoch, budget_limited=False)
    remaining = max(0.0, budget_s - elapsed_s)
    epoch_cost = steps_per_epoch / steps_per_s + val_s
    fit = steps_done + math.floor(remaining / epoch_cost * steps_per_epoch)
    planned = max(steps_done + 1, min(by_epochs, fit))
    return StepPlan(planned, steps_per_epoch, budget_limited=planned < by_epochs)
