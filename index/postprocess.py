"""Retrieval post-processing, pure NumPy (METHODS.md section 2).

- alpha-QE: a query becomes L2norm(q + sum_j s_j^alpha * x_j) over its top-n neighbours x_j with
  similarities s_j (negative similarities count as 0).
- DBA: the same, applied to every gallery vector with its own top-n neighbours (itself excluded).
- learned whitening (Radenovic et al.): W = C_S^(-1/2) from matching pairs, rotation = eigenvectors of
  W C_D W^T from non-matching pairs, P = eig(W C_D W^T)^T W; a vector becomes L2norm(P (f - mu)).
- PCA whitening: P = diag(lambda^(-1/2)) E^T from the covariance eigen-decomposition.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from index.errors import DimensionMismatch, NotEnoughData

WHITENING_KINDS = ("learned", "pca")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of `x` (N,d) scaled to unit norm, as float32; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


def query_expansion(queries: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray,
                    alpha: float = 3.0) -> np.ndarray:
    """alpha-QE: queries (Q,d), their top-n neighbour vectors (Q,n,d) and similarities (Q,n) -> (Q,d).

    Missing neighbours must be passed as zero vectors (their weight then does not matter).
    """
    if neighbours.ndim != 3 or neighbours.shape[::2] != queries.shape:
        raise DimensionMismatch(f"neighbours must be (Q,n,d) = ({queries.shape[0]},n,{queries.shape[1]}), "
                                f"got {neighbours.shape}")
    if similarities.shape != neighbours.shape[:2]:
        raise DimensionMismatch(f"similarities must be {neighbours.shape[:2]}, got {similarities.shape}")
    weights = np.power(np.clip(similarities.astype(np.float32), 0.0, None), np.float32(alpha))
    expanded = queries.astype(np.float32) + np.einsum("qn,qnd->qd", weights, neighbours.astype(np.float32))
    return l2_normalize(expanded)


def database_side_augmentation(vectors: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray,
                               alpha: float = 3.0) -> np.ndarray:
    """DBA of gallery vectors (N,d) from their top-n neighbours (N,n,d) (itself excluded) and scores (N,n).

    Identical to `query_expansion` applied to the gallery; callers process large galleries in chunks.
    """
    return query_expansion(vectors, neighbours, similarities, alpha)


@dataclass(frozen=True)
class Whitening:
    """A fitted whitening: `mean` (d,) and `projection` (d_out, d), both float32."""

    kind: str
    mean: np.ndarray
    projection: np.ndarray

    @property
    def in_dim(self) -> int:
        return int(self.projection.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.projection.shape[0])

    def to_bytes(self) -> bytes:
        """Serialised as an .npz archive (no pickle)."""
        buffer = io.BytesIO()
        np.savez(buffer, kind=np.array(self.kind), mean=self.mean, projection=self.projection)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Whitening:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return cls(kind=str(archive["kind"]), mean=archive["mean"].astype(np.float32),
                       projection=np.ascontiguousarray(archive["projection"], dtype=np.float32))


def apply_whitening(vectors: np.ndarray, whitening: Whitening) -> np.ndarray:
    """L2norm(P (f - mu)) for each row: (N, d) -> (N, d_out) float32 unit rows."""
    if vectors.ndim != 2 or vectors.shape[1] != whitening.in_dim:
        raise DimensionMismatch(f"whitening expects (N,{whitening.in_dim}) vectors, got {vectors.shape}")
    centred = vectors.astype(np.float32) - whitening.mean
    return l2_normalize(centred @ whitening.projection.T)


def _inverse_sqrt(matrix: np.ndarray, shrinkage: float) -> np.ndarray:
    """Symmetric (C + shrinkage * mean_eigenvalue * I)^(-1/2) of a PSD matrix (float64)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    ridge = shrinkage * float(eigenvalues.mean())
    floor = max(ridge, 1e-12 * float(eigenvalues.max(initial=1.0)))
    return (eigenvectors / np.sqrt(eigenvalues + floor)) @ eigenvectors.T


def _check_dim(dim: int | None, d: int) -> int:
    if dim is None:
        return d
    if not 1 <= dim <= d:
        raise DimensionMismatch(f"whitening dim must be in [1, {d}], got {dim}")
    return dim


def fit_learned_whitening(vectors: np.ndarray, labels: Sequence[str], dim: int | None = None,
                          shrinkage: float = 0.1) -> Whitening:
    """Learned whitening from labelled vectors (N,d): items with equal labels are matching pairs.

    C_S and C_D are the mean outer products of the differences over all matching / non-matching pairs
    (computed in closed form, not by enumerating pairs). `shrinkage` adds shrinkage * mean eigenvalue of
    C_S to its diagonal, which keeps C_S^(-1/2) finite when there are fewer matching pairs than dimensions.
    `dim` keeps the top eigen-directions (default: all d).
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(labels):
        raise DimensionMismatch(f"need (N,d) vectors and N labels, got {x.shape} and {len(labels)}")
    dim = _check_dim(dim, x.shape[1])
    groups: dict[str, list[int]] = {}
    for row, label in enumerate(labels):
        groups.setdefault(label, []).append(row)
    n = x.shape[0]
    positive_pairs = sum(len(rows) * (len(rows) - 1) // 2 for rows in groups.values())
    negative_pairs = n * (n - 1) // 2 - positive_pairs
    if positive_pairs == 0 or negative_pairs == 0:
        raise NotEnoughData("learned whitening needs at least two labels and one label with two items")
    # sum over pairs i<j of a set of m rows of (f_i - f_j)(f_i - f_j)^T = m * sum_i (f_i - mean)(f_i - mean)^T
    matching = np.zeros((x.shape[1], x.shape[1]))
    for rows in groups.values():
        centred = x[rows] - x[rows].mean(axis=0)
        matching += len(rows) * centred.T @ centred
    centred_all = x - x.mean(axis=0)
    non_matching = n * centred_all.T @ centred_all - matching
    whiten = _inverse_sqrt(matching / positive_pairs, shrinkage)
    rotated = whiten @ (non_matching / negative_pairs) @ whiten.T
    eigenvalues, eigenvectors = np.linalg.eigh((rotated + rotated.T) / 2)
    order = np.argsort(eigenvalues)[::-1][:dim]
    projection = eigenvectors[:, order].T @ whiten
    return Whitening("learned", x.mean(axis=0).astype(np.float32),
                     np.ascontiguousarray(projection, dtype=np.float32))


def fit_pca_whitening(vectors: np.ndarray, dim: int | None = None, shrinkage: float = 0.1) -> Whitening:
    """PCA whitening of vectors (N,d): top-`dim` principal directions scaled by (lambda + ridge)^(-1/2).

    `ridge` = shrinkage * mean eigenvalue, so near-empty directions are not blown up.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise DimensionMismatch(f"need (N,d) vectors, got {x.shape}")
    if x.shape[0] < 2:
        raise NotEnoughData("PCA whitening needs at least two vectors")
    dim = _check_dim(dim, x.shape[1])
    mean = x.mean(axis=0)
    centred = x - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / x.shape[0])
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    order = np.argsort(eigenvalues)[::-1][:dim]
    ridge = max(shrinkage * float(eigenvalues.mean()), 1e-12 * float(eigenvalues.max(initial=1.0)))
    projection = eigenvectors[:, order].T / np.sqrt(eigenvalues[order] + ridge)[:, None]
    return Whitening("pca", mean.astype(np.float32), np.ascontiguousarray(projection, dtype=np.float32))
