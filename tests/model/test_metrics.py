"""retrieval_metrics against a brute-force NumPy computation; chunking and memory caps change nothing."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from model import metrics
from model.metrics import query_scores, retrieval_metrics


def _labelled_set(seed: int = 0, n: int = 90, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around 12 class centres (random floats: no tied similarities), 3 singletons."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 12, size=n)
    labels[:3] = [100, 101, 102]  # three singleton classes (R = 0)
    centres = rng.standard_normal((103, d))
    x = (centres[labels] + 1.2 * rng.standard_normal((n, d))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def _brute_force(x: np.ndarray, labels: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    similarity = x.astype(np.float64) @ x.T.astype(np.float64)
    n = len(x)
    recall_hits = dict.fromkeys(ks, 0)
    average_precisions = []
    for q in range(n):
        others = [j for j in range(n) if j != q]
        ranked = sorted(others, key=lambda j, q=q: -similarity[q, j])
        relevant = [labels[j] == labels[q] for j in ranked]
        for k in ks:
            recall_hits[k] += any(relevant[:k])
        r = sum(relevant)
        if r == 0:
            continue
        precision_sum, found = 0.0, 0
        for i in range(r):
            if relevant[i]:
                found += 1
                precision_sum += found / (i + 1)
        average_precisions.append(precision_sum / r)
    result = {f"recall@{k}": recall_hits[k] / n for k in ks}
    result["map@r"] = sum(average_precisions) / len(average_precisions)
    return result


def test_matches_brute_force_recall_and_map_at_r() -> None:
    x, labels = _labelled_set()
    ks = (1, 2, 4, 8, 16)
    result = retrieval_metrics(x, labels, ks)
    expected = _brute_force(x, labels, ks)
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key
    assert 0.1 < result["map@r"] < result["recall@1"] < result["recall@16"] < 1  # a non-trivial case


def test_chunking_and_memory_cap_give_identical_results(monkeypatch: pytest.MonkeyPatch) -> None:
    x, labels = _labelled_set(1)
    whole = retrieval_metrics(x, labels, chunk_size=4096)
    assert retrieval_metrics(x, labels, chunk_size=7) == whole
    assert retrieval_metrics(x, labels, chunk_size=1) == whole
    monkeypatch.setattr(metrics, "MAX_NEIGHBOURS_PER_CHUNK", 40)  # forces chunks of a few rows
    assert retrieval_metrics(x, labels, chunk_size=4096) == whole


def test_one_large_class_needs_many_neighbours() -> None:
    x, _ = _labelled_set(2, n=60)
    labels = np.array([0] * 40 + list(range(1, 21)))  # R = 39 for most queries, beyond max(ks)
    result = retrieval_metrics(x, labels, ks=(1, 2))
    expected = _brute_force(x, labels, (1, 2))
    assert result == pytest.approx(expected, abs=1e-9)


def test_exact_duplicates_never_count_the_query_itself() -> None:
    x, labels = _labelled_set(3, n=40)
    x[20:24] = x[:4]  # 4 exact twins; each twin has another class than its original
    labels[20:24] = [5, 6, 7, 8]
    labels[:4] = [9, 10, 11, 9]
    result = retrieval_metrics(x, labels, ks=(1, 4))
    assert result == pytest.approx(_brute_force(x, labels, (1, 4)), abs=1e-9)
    # each of the 8 twins' nearest other item is its twin, of another class: 8 misses at K = 1
    assert result["recall@1"] <= (40 - 8) / 40


def test_k_beyond_the_set_uses_all_other_items() -> None:
    x, labels = _labelled_set(4, n=20)
    result = retrieval_metrics(x, labels, ks=(1, 50))
    has_other = np.array([(labels == y).sum() > 1 for y in labels])
    assert result["recall@50"] == pytest.approx(has_other.mean())


def test_accepts_float64_and_non_contiguous_input() -> None:
    x, labels = _labelled_set(5)
    fortran = np.asfortranarray(x.astype(np.float64))
    assert retrieval_metrics(fortran, labels) == retrieval_metrics(x, labels)


def test_restores_faiss_blas_threshold() -> None:
    before = faiss.cvar.distance_compute_blas_threshold
    x, labels = _labelled_set(6, n=30)
    retrieval_metrics(x, labels)
    assert faiss.cvar.distance_compute_blas_threshold == before


@pytest.mark.parametrize(
    ("embeddings", "labels", "kwargs", "message"),
    [
        (np.ones((4, 3), np.float32), np.array([0, 0, 1]), {}, "N = len"),
        (np.full((4, 3), np.nan, np.float32), np.array([0, 0, 1, 1]), {}, "NaN"),
        (np.eye(3, dtype=np.float32), np.array([0, 1, 2]), {}, "2 or more items"),
        (np.eye(3, dtype=np.float32), np.array([0, 0, 1]), {"ks": (0,)}, "positive"),
        (np.eye(3, dtype=np.float32), np.array([0, 0, 1]), {"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_input_is_a_clear_error(embeddings: np.ndarray, labels: np.ndarray, kwargs: dict,
                                    message: str) -> None:
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(embeddings, labels, **kwargs)


def test_query_top1_hits_are_recall_at_1_per_query() -> None:
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(6), 5)
    vectors = rng.normal(size=(6, 8))[labels] + 0.8 * rng.normal(size=(30, 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    metrics, scores = query_scores(vectors, labels, chunk_size=7)
    hits = scores.top1
    assert set(np.unique(hits)) <= {0.0, 1.0} and 0.0 < hits.mean() < 1.0
    assert hits.mean() == pytest.approx(metrics["recall@1"])
    for query in np.flatnonzero(hits == 0)[:3]:  # a miss: its nearest other item is of another class
        scores = vectors @ vectors[query]
        scores[query] = -np.inf
        assert labels[int(np.argmax(scores))] != labels[query]
