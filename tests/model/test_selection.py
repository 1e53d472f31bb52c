"""The promotion rule: a gain must be larger than the validation set's own noise."""

from __future__ import annotations

import numpy as np

from model.selection import map_gain


def test_no_change_is_not_a_gain() -> None:
    ap = np.random.default_rng(0).uniform(size=200)
    assert not map_gain(ap, ap).significant


def test_a_clear_gain_on_many_queries_counts() -> None:
    rng = np.random.default_rng(1)
    old = rng.uniform(0.2, 0.6, size=400)
    gain = map_gain(old + rng.normal(0.03, 0.05, size=400), old)
    assert gain.significant and gain.mean > gain.lower > 0


def test_a_tiny_noisy_gain_does_not_count() -> None:
    rng = np.random.default_rng(2)
    old = rng.uniform(0.0, 1.0, size=60)
    new = np.clip(old + rng.normal(0.001, 0.1, size=60), 0, 1)
    assert not map_gain(new, old).significant


def test_queries_without_relevant_items_are_left_out() -> None:
    old = np.array([0.5, np.nan, 0.5])
    assert map_gain(old + 0.1, old).queries == 2
