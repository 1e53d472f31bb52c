"""Learned and PCA whitening (index.postprocess) on synthetic embeddings of known structure, and
whitening as part of the CGD model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from index.postprocess import apply_whitening, fit_learned_whitening, fit_pca_whitening
from model.default import default_model
from model.metrics import retrieval_metrics


def _nuisance_set(seed: int, classes: int = 20, per_class: int = 10, d: int = 16):
    """Class means differ in dims 0-3 (small); within-class noise is large in dims 4-7 (nuisance)."""
    rng = np.random.default_rng(seed)
    means = np.zeros((classes, d))
    means[:, :4] = rng.normal(0, 1.0, (classes, 4))
    x = np.repeat(means, per_class, axis=0)
    noise = rng.normal(0, 0.05, x.shape)
    noise[:, 4:8] *= 60.0
    labels = np.repeat(np.arange(classes), per_class)
    return (x + noise).astype(np.float32), labels


def test_learned_whitening_suppresses_the_within_class_nuisance() -> None:
    train, train_labels = _nuisance_set(0)
    test, test_labels = _nuisance_set(1)
    fitted = fit_learned_whitening(train, train_labels, shrinkage=0.01)
    plain = retrieval_metrics(test / np.linalg.norm(test, axis=1, keepdims=True), test_labels)
    whitened = retrieval_metrics(apply_whitening(test, fitted), test_labels)
    assert plain["map@r"] < 0.5 < 0.9 < whitened["map@r"]
    # Without shrinkage, P C_S P^T = I: the matching-pair differences get unit covariance.
    exact = fit_learned_whitening(train, train_labels, shrinkage=1e-9)
    differences = np.concatenate([(rows[:, None] - rows[None]).reshape(-1, 16) for rows in (
        train[train_labels == c].astype(np.float64) for c in range(20))])
    projected = differences @ exact.projection.T.astype(np.float64)
    covariance = projected.T @ projected / (len(differences) - 20 * 10)  # the zero self-pairs left out
    assert np.allclose(covariance, np.eye(16), atol=0.05)


def test_pca_whitening_gives_unit_variance_directions() -> None:
    x = np.random.default_rng(2).normal(size=(500, 8)) * np.arange(1, 9)
    fitted = fit_pca_whitening(x, shrinkage=0.0)
    projected = (x - fitted.mean) @ fitted.projection.T
    assert np.allclose(np.cov(projected.T, bias=True), np.eye(8), atol=1e-3)


def test_fitting_needs_pairs() -> None:
    with pytest.raises(ValueError, match="two labels"):
        fit_learned_whitening(np.eye(3, dtype=np.float32), np.array([0, 1, 2]))


def test_the_model_applies_its_whitening_and_keeps_it_in_the_checkpoint(tmp_path) -> None:
    from model.checkpoint import load_checkpoint, save_checkpoint

    model = default_model()
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        plain = model(x).numpy()
    fitted = fit_pca_whitening(np.random.default_rng(0).normal(size=(40, 1536)).astype(np.float32))
    model.set_whitening(torch.from_numpy(fitted.mean), torch.from_numpy(fitted.projection))
    with torch.inference_mode():
        whitened = model(x).numpy()
    assert np.allclose(whitened, apply_whitening(plain, fitted), atol=1e-4)
    save_checkpoint(tmp_path / "w.pt", model)
    loaded = load_checkpoint(tmp_path / "w.pt").model
    assert loaded.config.whitening
    with torch.inference_mode():
        assert np.allclose(loaded(x).numpy(), whitened, atol=1e-5)
