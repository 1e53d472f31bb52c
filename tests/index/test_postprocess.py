"""Post-processing functions against loop-based computations of their formulas (METHODS.md section 2)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from index import DimensionMismatch, NotEnoughData
from index.postprocess import (
    Whitening,
    apply_whitening,
    database_side_augmentation,
    fit_learned_whitening,
    fit_pca_whitening,
    query_expansion,
)


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_query_expansion_matches_its_formula(unit_vectors) -> None:
    queries, neighbours = unit_vectors(3, 8, seed=1), unit_vectors(12, 8, seed=2).reshape(3, 4, 8)
    scores = np.array([[0.9, 0.5, -0.2, 0.1], [1.0, 0.0, 0.3, 0.3], [0.2, 0.2, 0.2, 0.2]], np.float32)
    expected = []
    for q, rows, sims in zip(queries, neighbours, scores, strict=True):
        total = q.astype(np.float64).copy()
        for row, sim in zip(rows, sims, strict=True):
            total += max(float(sim), 0.0) ** 3 * row  # negative similarities weigh nothing
        expected.append(_normalise(total))
    got = query_expansion(queries, neighbours, scores, alpha=3.0)
    assert got.dtype == np.float32 and got.shape == (3, 8)
    np.testing.assert_allclose(got, np.array(expected), atol=1e-6)


def test_missing_neighbours_as_zero_vectors_change_nothing(unit_vectors) -> None:
    queries = unit_vectors(2, 8)
    got = query_expansion(queries, np.zeros((2, 3, 8), np.float32), np.zeros((2, 3), np.float32), alpha=0.0)
    np.testing.assert_allclose(got, queries, atol=1e-6)


def test_database_side_augmentation_is_qe_over_the_gallery(unit_vectors) -> None:
    gallery = unit_vectors(5, 6)
    scores = gallery @ gallery.T
    np.fill_diagonal(scores, -np.inf)
    top = np.argsort(-scores, axis=1)[:, :2]
    neighbours, sims = gallery[top], np.take_along_axis(scores, top, 1)
    expected = [_normalise(gallery[i] + sum(max(s, 0) ** 2 * gallery[j] for j, s in zip(top[i], sims[i],
                                                                                             strict=True)))
                for i in range(5)]
    np.testing.assert_allclose(database_side_augmentation(gallery, neighbours, sims, alpha=2.0),
                               np.array(expected), atol=1e-6)


def test_query_expansion_checks_shapes(unit_vectors) -> None:
    with pytest.raises(DimensionMismatch):
        query_expansion(unit_vectors(2, 8), np.zeros((2, 3, 7), np.float32), np.zeros((2, 3), np.float32))


def _labelled(n_classes: int, per_class: int, d: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d))
    rows = [centres[c] + 0.3 * rng.standard_normal(d) * np.linspace(0.2, 2, d)
            for c in range(n_classes) for _ in range(per_class)]
    x = np.array(rows)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), [
        f"c{c}" for c in range(n_classes) for _ in range(per_class)]


def _inverse_sqrt(matrix: np.ndarray, shrinkage: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    values = np.clip(values, 0, None)
    return vectors @ np.diag(1 / np.sqrt(values + shrinkage * values.mean())) @ vectors.T


def _learned_by_pairs(x: np.ndarray, labels: list[str], shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Radenovic et al.'s recipe, enumerating every pair: (mean, projection)."""
    x = x.astype(np.float64)
    d = x.shape[1]
    c_s, c_d, n_s, n_d = np.zeros((d, d)), np.zeros((d, d)), 0, 0
    for i, j in itertools.combinations(range(len(x)), 2):
        diff = (x[i] - x[j])[:, None]
        if labels[i] == labels[j]:
            c_s, n_s = c_s + diff @ diff.T, n_s + 1
        else:
            c_d, n_d = c_d + diff @ diff.T, n_d + 1
    whiten = _inverse_sqrt(c_s / n_s, shrinkage)
    values, vectors = np.linalg.eigh(whiten @ (c_d / n_d) @ whiten.T)
    return x.mean(axis=0), vectors[:, np.argsort(values)[::-1]].T @ whiten


@pytest.mark.parametrize("shrinkage", [0.0, 0.1])
def test_learned_whitening_matches_the_pairwise_recipe(shrinkage: float) -> None:
    x, labels = _labelled(8, 4, 5, seed=3)
    mean, projection = _learned_by_pairs(x, labels, shrinkage)
    fitted = fit_learned_whitening(x, labels, shrinkage=shrinkage)
    np.testing.assert_allclose(fitted.mean, mean, atol=1e-6)
    # eigenvectors are defined up to sign: compare row by row up to sign
    signs = np.sign(np.sum(fitted.projection * projection, axis=1))
    np.testing.assert_allclose(fitted.projection * signs[:, None], projection, rtol=1e-3, atol=1e-4)
    expected = (x - mean) @ projection.T
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    whitened = apply_whitening(x, fitted)
    np.testing.assert_allclose(whitened @ whitened.T, expected @ expected.T, atol=1e-4)


def test_learned_whitening_whitens_matching_differences() -> None:
    x, labels = _labelled(10, 8, 6, seed=4)
    fitted = fit_learned_whitening(x, labels, shrinkage=0.0)
    p = fitted.projection.astype(np.float64)
    same = [(i, j) for i, j in itertools.combinations(range(len(x)), 2) if labels[i] == labels[j]]
    diffs = np.array([x[i] - x[j] for i, j in same], dtype=np.float64)
    np.testing.assert_allclose(p @ (diffs.T @ diffs / len(diffs)) @ p.T, np.eye(6), atol=1e-3)


def test_learned_whitening_reduces_dimension_and_needs_pairs() -> None:
    x, labels = _labelled(3, 4, 6, seed=5)
    fitted = fit_learned_whitening(x, labels, dim=2)
    assert (fitted.in_dim, fitted.out_dim) == (6, 2)
    out = apply_whitening(x, fitted)
    assert out.shape == (12, 2) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    with pytest.raises(NotEnoughData):
        fit_learned_whitening(x[:3], ["a", "b", "c"])
    with pytest.raises(NotEnoughData):
        fit_learned_whitening(x[:3], ["a", "a", "a"])
    with pytest.raises(DimensionMismatch):
        fit_learned_whitening(x, labels, dim=7)


def test_pca_whitening_gives_identity_covariance(unit_vectors) -> None:
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((500, 6)) * np.array([5, 3, 2, 1, 0.5, 0.1])).astype(np.float32)
    fitted = fit_pca_whitening(x, dim=4, shrinkage=0.0)
    projected = (x.astype(np.float64) - fitted.mean) @ fitted.projection.T.astype(np.float64)
    np.testing.assert_allclose(np.cov(projected.T, bias=True), np.eye(4), atol=1e-3)
    assert np.abs(fitted.projection[0, 0]) > np.abs(fitted.projection[0, 1:]).max()  # largest variance first
    with pytest.raises(NotEnoughData):
        fit_pca_whitening(x[:1])


def test_whitening_survives_serialisation(unit_vectors) -> None:
    fitted = fit_pca_whitening(unit_vectors(50, 8), dim=3)
    back = Whitening.from_bytes(fitted.to_bytes())
    assert back.kind == "pca"
    np.testing.assert_array_equal(back.projection, fitted.projection)
    np.testing.assert_array_equal(back.mean, fitted.mean)
    with pytest.raises(DimensionMismatch):
        apply_whitening(unit_vectors(2, 7), fitted)
