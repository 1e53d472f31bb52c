"""Selection on validation: the promotion rule (a gain must be larger than the validation set's own
noise) and the choice of whitening."""

from __future__ import annotations

import numpy as np

from model.selection import choose_whitening, map_gain, recall_fell


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


def _clusters(rng: np.random.Generator, classes: int, per_class: int, signal: slice, noise: slice,
              noise_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors: class centres in the `signal` dimensions, per-image noise in the `noise` ones."""
    centres = np.zeros((classes, 16))
    centres[:, signal] = rng.normal(size=(classes, signal.stop - signal.start))
    labels = np.repeat(np.arange(classes), per_class)
    vectors = centres[labels] + 0.3 * rng.normal(size=(len(labels), 16))
    vectors[:, noise] += noise_scale * rng.normal(size=(len(labels), noise.stop - noise.start))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def test_whitening_is_kept_when_it_raises_validation_and_dropped_when_it_lowers_it() -> None:
    """Nuisance variance that the training pairs share with the validation classes is whitened
    away; nuisance on dimensions that separate the validation classes would be, so it is refused."""
    rng = np.random.default_rng(0)
    low, high = slice(0, 8), slice(8, 16)
    train, train_labels = _clusters(rng, 12, 20, signal=low, noise=high, noise_scale=2.0)
    val, val_labels = _clusters(rng, 8, 20, signal=low, noise=high, noise_scale=2.0)
    assert choose_whitening(train, train_labels, val, val_labels, "learned") is not None
    moved, moved_labels = _clusters(rng, 8, 20, signal=high, noise=low, noise_scale=0.0)
    assert choose_whitening(train, train_labels, moved, moved_labels, "learned") is None


def test_a_recall_fall_of_a_few_queries_is_noise_a_large_one_is_not() -> None:
    """Two misses more out of 554 (the size of a real validation split) do not block a promotion;
    a tenth of the queries more do."""
    old = np.ones(554)
    assert not recall_fell(np.concatenate([np.zeros(2), np.ones(552)]), old)
    assert recall_fell(np.concatenate([np.zeros(55), np.ones(499)]), old)
