"""Step planning from epochs or a time budget, and the 60% / 80% learning-rate drops."""

from __future__ import annotations

import pytest

from model.schedule import lr_factor, plan_steps


def test_lr_drops_at_60_and_80_percent() -> None:
    factors = [lr_factor(step, 100) for step in range(100)]
    assert factors[:60] == [1.0] * 60
    assert factors[60:80] == [0.1] * 20
    assert factors[80:] == [0.01] * 20


def test_plan_from_epochs_and_from_a_budget() -> None:
    assert plan_steps(10, 25).planned_steps == 250
    assert not plan_steps(10, 25, budget_s=None).budget_limited
    # 100 s left, 1 step/s, 25 steps + 5 s validation per epoch: 100 / 30 epochs = 83 steps.
    plan = plan_steps(10, 25, budget_s=120, elapsed_s=20, steps_done=5, steps_per_s=1.0, val_s=5.0)
    assert plan.planned_steps == 5 + 83 and plan.budget_limited and plan.epochs == 4
    roomy = plan_steps(2, 25, budget_s=1e6, elapsed_s=0, steps_done=5, steps_per_s=1.0)
    assert roomy.planned_steps == 50 and not roomy.budget_limited
    with pytest.raises(ValueError):
        plan_steps(0, 25)
