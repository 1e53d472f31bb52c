"""Learned whitening (Radenovic, Tolias, Chum, TPAMI 2018; METHODS.md section 2), fitted on embeddings.

- learned: W = C_S^(-1/2) from matching pairs, rotation = eigenvectors of W C_D W^T from non-matching
  pairs, P = eig(W C_D W^T)^T W; an embedding becomes L2norm(P (f - mu)).
- pca: P = diag((lambda + ridge)^(-1/2)) E^T, the unsupervised fallback.
Both shrink towards the identity: C + shrinkage * mean eigenvalue * I, so a few hundred labelled images
give a usable d x d whitening. `CGD.set_whitening` puts the result into the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class FittedWhitening(NamedTuple):
    """mean (d,) and projection (d, d), float32."""

    kind: str
    mean: np.ndarray
    projection: np.ndarray


def _inverse_sqrt(matrix: np.ndarray, shrinkage: float) -> np.ndarray:
    """Symmetric (C + shrinkage * mean_eigenvalue * I)^(-1/2) of a PSD matrix (float64)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    floor = max(shrinkage * float(eigenvalues.mean()), 1e-12 * float(eigenvalues.max(initial=1.0)))
    return (eigenvectors / np.sqrt(eigenvalues + floor)) @ eigenvectors.T


def fit_learned_whitening(embeddings: np.ndarray, labels: Sequence[int] | np.ndarray,
                          shrinkage: float = 0.5) -> FittedWhitening:
    """From labelled embeddings (N, d): equal labels are matching pairs, all others non-matching.

    C_S and C_D are the mean outer products of the pair differences, in closed form (no pair loop).
    Raises ValueError without two labels and one matching pair."""
    x = np.asarray(embeddings, dtype=np.float64)
    label_array = np.asarray(labels).reshape(-1)
    if x.ndim != 2 or x.shape[0] != label_array.shape[0]:
        raise ValueError(f"need (N, d) embeddings and N labels, got {x.shape} and {label_array.shape[0]}")
    n, d = x.shape
    matching = np.zeros((d, d))
    positive_pairs = 0
    for label in np.unique(label_array):
        rows = x[label_array == label]
        centred = rows - rows.mean(axis=0)
        # sum over pairs i<j of a set of m rows of (f_i - f_j)(f_i - f_j)^T = m * sum_i (f_i - m_c)(...)^T
        matching += len(rows) * centred.T @ centred
        positive_pairs += len(rows) * (len(rows) - 1) // 2
    negative_pairs = n * (n - 1) // 2 - positive_pairs
    if positive_pairs == 0 or negative_pairs == 0:
        raise ValueError("learned whitening needs at least two labels and one label with two items")
    centred_all = x - x.mean(axis=0)
    non_matching = n * centred_all.T @ centred_all - matching
    whiten = _inverse_sqrt(matching / positive_pairs, shrinkage)
    rotated = whiten @ (non_matching / negative_pairs) @ whiten.T
    eigenvalues, eigenvectors = np.linalg.eigh((rotated + rotated.T) / 2)
    order = np.argsort(eigenvalues)[::-1]
    projection = eigenvectors[:, order].T @ whiten
    return FittedWhitening("learned", x.mean(axis=0).astype(np.float32),
                           np.ascontiguousarray(projection, dtype=np.float32))


def fit_pca_whitening(embeddings: np.ndarray, shrinkage: float = 0.5) -> FittedWhitening:
    """PCA whitening of embeddings (N, d): principal directions scaled by (lambda + ridge)^(-1/2)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"PCA whitening needs (N, d) embeddings with N >= 2, got {x.shape}")
    mean = x.mean(axis=0)
    centred = x - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / x.shape[0])
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    order = np.argsort(eigenvalues)[::-1]
    ridge = max(shrinkage * float(eigenvalues.mean()), 1e-12 * float(eigenvalues.max(initial=1.0)))
    projection = eigenvectors[:, order].T / np.sqrt(eigenvalues[order] + ridge)[:, None]
    return FittedWhitening("pca", mean.astype(np.float32), np.ascontiguousarray(projection, dtype=np.float32))


def apply_whitening(embeddings: np.ndarray, whitening: FittedWhitening) -> np.ndarray:
    """L2norm(P (f - mu)) of each row, float32 (what `CGD.whitening` computes in torch)."""
    out = (np.asarray(embeddings, dtype=np.float32) - whitening.mean) @ whitening.projection.T
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
