"""service/pixel_budget.py: decoded pixels across requests are taken whole or refused with 503."""

from __future__ import annotations

import pytest

from service.errors import Overloaded
from service.pixel_budget import PixelBudget


def test_pixels_are_taken_until_the_capacity_then_refused_with_retry_after() -> None:
    budget = PixelBudget(100)
    budget.take(60)
    budget.take(40)
    with pytest.raises(Overloaded) as refused:
        budget.take(1)
    assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "1"
    assert budget.held == 100


def test_a_refused_request_takes_nothing_and_given_back_pixels_fit_again() -> None:
    budget = PixelBudget(100)
    budget.take(70)
    with pytest.raises(Overloaded):
        budget.take(50)
    assert budget.held == 70
    budget.give_back(70)
    budget.take(100)
    assert budget.held == 100


def test_the_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PixelBudget(0)
