"""Model selection on the validation split: which epoch is best, and whether a trained model is
better than the one it would replace by more than the validation set's own noise.

The promotion rule is a paired bootstrap over the validation queries: each query's AP@R under the
new and the old model, resampled with replacement; the new model wins only when the lower end of the
one-sided 95% interval of the mean AP@R gain is above zero and Recall@1 did not fall beyond noise
(the same bootstrap over the queries' top-1 hits, `recall_fell`). A small validation set thus needs a
large gain, a large one a small gain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from index.postprocess import Whitening, apply_whitening, fit_learned_whitening, fit_pca_whitening
from model.metrics import query_scores

LOG = logging.getLogger(__name__)

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
# Shrinkage towards the identity (x mean eigenvalue): a few hundred training images give a usable
# d x d whitening (index.postprocess holds the formulas).
WHITENING_SHRINKAGE = 0.5


def better(candidate: dict[str, float], reference: dict[str, float]) -> bool:
    """Higher MAP@R wins; ties are broken by Recall@1 (the per-epoch choice)."""
    return (candidate["map@r"], candidate["recall@1"]) > (reference["map@r"], reference["recall@1"])


@dataclass(frozen=True)
class Gain:
    """The paired comparison of two models on the same validation queries."""

    mean: float  # mean AP@R gain, new - old
    lower: float  # lower end of its one-sided CONFIDENCE bootstrap interval
    queries: int

    @property
    def significant(self) -> bool:
        return self.lower > 0.0


def map_gain(new_ap: np.ndarray, old_ap: np.ndarray, seed: int = 0) -> Gain:
    """Bootstrap the mean AP@R gain over the queries scored by both (NaN: no relevant item)."""
    new_ap, old_ap = np.asarray(new_ap, np.float64), np.asarray(old_ap, np.float64)
    if new_ap.shape != old_ap.shape:
        raise ValueError(f"per-query scores of different shapes: {new_ap.shape} vs {old_ap.shape}")
    scored = ~(np.isnan(new_ap) | np.isnan(old_ap))
    diff = (new_ap - old_ap)[scored]
    if diff.size == 0:
        return Gain(0.0, 0.0, 0)
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, diff.size, size=(BOOTSTRAP_SAMPLES, diff.size))
    means = diff[samples].mean(axis=1)
    return Gain(float(diff.mean()), float(np.quantile(means, 1.0 - CONFIDENCE)), int(diff.size))


def recall_fell(new_hits: np.ndarray, old_hits: np.ndarray, seed: int = 0) -> bool:
    """Whether Recall@1 fell beyond noise: the old model's per-query top-1 hits (`QueryScores.top1`) beat the
    new one's by more than the paired bootstrap's noise (a drop of a few queries out of hundreds does
    not count against a clear MAP@R gain)."""
    return map_gain(old_hits, new_hits, seed=seed).significant


def choose_whitening(train: np.ndarray, train_labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray,
                     choice: str = "auto", seed: int = 0) -> Whitening | None:
    """Whitening fitted on the training split's embeddings and kept when it raises the validation
    MAP@R: a choice inside a training run, made like the choice of its best epoch (the higher mean
    wins), while the whole model, whitening included, must still beat the serving one beyond noise
    (`map_gain`) to be promoted. `choice` "auto" tries learned, then PCA, and keeps the better."""
    kinds = ("learned", "pca") if choice == "auto" else (choice,)
    best_ap = query_scores(val, val_labels)[1].ap
    best = None
    for kind in kinds:
        try:
            fitted = (fit_learned_whitening(train, train_labels, shrinkage=WHITENING_SHRINKAGE)
                      if kind == "learned" else fit_pca_whitening(train, shrinkage=WHITENING_SHRINKAGE))
        except ValueError as exc:
            LOG.info("no %s whitening: %s", kind, exc)
            continue
        ap = query_scores(apply_whitening(val, fitted), val_labels)[1].ap
        gain = map_gain(ap, best_ap, seed=seed)
        LOG.info("%s whitening on validation: MAP@R gain %+.4f (lower bound %+.4f)", kind, gain.mean,
                 gain.lower)
        if gain.mean > 0.0:
            best, best_ap = fitted, ap
    return best
