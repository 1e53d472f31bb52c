"""Retrieval metrics over a labelled embedding set: Recall@K and MAP@R, each item querying all the
others, by exact inner-product search (FAISS) in bounded-memory query chunks."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import faiss
import numpy as np

LOG = logging.getLogger(__name__)

# Neighbour entries (queries x k) searched at once; a chunk's arrays take up to ~60 bytes per entry.
MAX_NEIGHBOURS_PER_CHUNK = 1 << 21


class QueryScores(NamedTuple):
    """Each query's own figures, for paired comparisons of two models on the same queries."""

    ap: np.ndarray  # (N,) AP@R, NaN where the query's class has no other item
    top1: np.ndarray  # (N,) 1.0 where the nearest other item has the query's label, else 0.0


@contextmanager
def _blas_search() -> Iterator[None]:
    """Let FAISS use its BLAS kernel for any number of queries (its default threshold of 128000
    query values, i.e. queries x d, keeps small chunks on the slower SIMD scan); restored after."""
    previous = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 1
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous


def _neighbours_without_self(index: faiss.Index, queries: np.ndarray, query_ids: np.ndarray,
                             k: int) -> np.ndarray:
    """(q, k) ids of each query's k nearest items, the query itself left out. One extra neighbour is
    searched; the query's own id is dropped wherever it appears (ties with duplicates may move it),
    else the last neighbour is."""
    _, ids = index.search(queries, k + 1)
    is_self = ids == query_ids[:, None]
    keep = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, keep, axis=1)


def _chunk_rows(relevant: np.ndarray, start: int, chunk_size: int, k_min: int) -> tuple[int, int]:
    """(rows, k) for the chunk from `start`: k = max(k_min, max R in the chunk), rows cut until
    rows x (k + 1) fits in `MAX_NEIGHBOURS_PER_CHUNK` (never below one row)."""
    rows = min(chunk_size, len(relevant) - start)
    while True:
        k = max(k_min, int(relevant[start:start + rows].max()))
        if rows == 1 or rows * (k + 1) <= MAX_NEIGHBOURS_PER_CHUNK:
            return rows, k
        rows = max(1, MAX_NEIGHBOURS_PER_CHUNK // (k + 1))


def average_precision_at_r(match: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP@R of each query from `match` (Q, k) (is the hit at each rank of the query's class, k >= R)
    and `relevant` (Q,) R; NaN where R = 0."""
    ranks = np.arange(1, match.shape[1] + 1)
    precision_at_hits = np.where(match & (ranks <= relevant[:, None]), np.cumsum(match, axis=1) / ranks, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(relevant > 0, precision_at_hits.sum(axis=1) / relevant, np.nan)


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8), *,
                      chunk_size: int = 4096) -> dict[str, float]:
    """See `query_scores`: its per-query figures averaged."""
    metrics, _ = query_scores(embeddings, labels, ks, chunk_size=chunk_size)
    return metrics


def query_scores(embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8), *,
                 chunk_size: int = 4096) -> tuple[dict[str, float], QueryScores]:
    """Recall@K for each K in `ks` and MAP@R, as fractions in [0, 1].

    embeddings: (N, d) unit rows (inner product = cosine similarity); labels: (N,) class labels.
    Every item queries the N - 1 others (itself excluded).
    - recall@K: the fraction of all N queries with at least one item of their class among their
      K nearest (a query whose class has no other item is a miss); K > N - 1 uses all N - 1.
    - map@r (Musgrave, Belongie, Lim, "A Metric Learning Reality Check", ECCV 2020): with R the
      number of other items of the query's class, AP@R = 1/R * sum_{i<=R} P@i * rel(i), averaged
      over the queries with R >= 1; queries with R = 0 are excluded.
    Queries run `chunk_size` at a time, fewer when a chunk's largest R would need more than
    `MAX_NEIGHBOURS_PER_CHUNK` neighbour entries, so memory stays bounded for any N.
    Raises ValueError for bad shapes, non-finite values, or when no class has 2 or more items.
    Returns the metrics and each query's AP@R and top-1 hit (`QueryScores`).
    """
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    label_array = np.asarray(labels).reshape(-1)
    if vectors.ndim != 2 or vectors.shape[0] != label_array.shape[0]:
        raise ValueError(f"embeddings must be (N, d) with N = len(labels) = {label_array.shape[0]}, "
                         f"got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("embeddings contain NaN or infinite values")
    if vectors.shape[0] < 2:
        raise ValueError(f"retrieval needs at least 2 items, got {vectors.shape[0]}")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = vectors.shape[0]
    _, class_ids, counts = np.unique(label_array, return_inverse=True, return_counts=True)
    relevant = counts[class_ids] - 1  # R of each query
    if not relevant.any():
        raise ValueError("MAP@R needs at least one class with 2 or more items")
    cutoffs = {int(k): min(int(k), n - 1) for k in ks}  # requested K -> neighbours that exist
    k_min = max(cutoffs.values())

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    hits = dict.fromkeys(cutoffs, 0)
    average_precisions: list[np.ndarray] = []  # summed once at the end: independent of chunking
    top1: list[np.ndarray] = []
    start = 0
    with _blas_search():
        while start < n:
            rows, k = _chunk_rows(relevant, start, chunk_size, k_min)
            query_ids = np.arange(start, start + rows)
            found = _neighbours_without_self(index, vectors[start:start + rows], query_ids, k)
            match = class_ids[found] == class_ids[query_ids, None]  # (rows, k)
            for requested, cutoff in cutoffs.items():
                hits[requested] += int(match[:, :cutoff].any(axis=1).sum())
            average_precisions.append(average_precision_at_r(match, relevant[query_ids]))
            top1.append(match[:, 0].astype(np.float64))
            start += rows
    per_query = QueryScores(np.concatenate(average_precisions), np.concatenate(top1))
    metrics = {f"recall@{k}": hits[k] / n for k in cutoffs}
    metrics["map@r"] = float(np.nanmean(per_query.ap))
    return metrics, per_query
