"""Query expansion and database-side augmentation as a model's search defaults, judged on validation.

Both are alpha-QE (METHODS.md section 2, `index.postprocess.query_expansion`): DBA replaces each
gallery vector x by L2norm(x + sum_j s_j^alpha x_j) over its top-`dba_n` other items; QE does the same
to a query against the augmented gallery with its top-`qe_n` hits. The service applies a model's
defaults (`CGDConfig.qe_n`, `CGDConfig.dba_n`) to its searches and its gallery, `cgd eval` to its
figures.

`expanded_scores` is an exact leave-one-out: when item i queries the others, the gallery items that
had i among their DBA neighbours are augmented without it (a query is never in the gallery it
searches). `choose_expansion` keeps a candidate only when validation MAP@R gains beyond noise
(`model.selection.map_gain`), Recall@1 does not fall, and an exact copy of every validation image
still returns that image first with score >= `EXACT_COPY_SCORE`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from index.postprocess import l2_normalize, query_expansion
from model.metrics import average_precision_at_r
from model.selection import Gain, map_gain

LOG = logging.getLogger(__name__)

QE_CANDIDATES = (0, 1, 2, 3)
DBA_CANDIDATES = (0, 1, 2, 3)
ALPHA = 3.0
EXACT_COPY_SCORE = 0.99
QUERY_CHUNK = 1024


def _weights(similarities: np.ndarray, alpha: float) -> np.ndarray:
    return np.power(np.clip(similarities, 0.0, None), np.float32(alpha)).astype(np.float32)


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """(rows, n) column indices of each row's n highest scores, best first."""
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _nearest_others(vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, n) ids and scores of each item's n nearest other items, in query chunks."""
    ids, sims = [], []
    for start in range(0, len(vectors), QUERY_CHUNK):
        scores = vectors[start:start + QUERY_CHUNK] @ vectors.T
        rows = np.arange(len(scores))
        scores[rows, rows + start] = -np.inf
        top = _top(scores, n)
        ids.append(top)
        sims.append(np.take_along_axis(scores, top, axis=1))
    return np.concatenate(ids), np.concatenate(sims)


@dataclass(frozen=True)
class _Augmented:
    """A DBA'd gallery and, for each item j and each of its neighbours p, j's vector without p."""

    vectors: np.ndarray  # (N, d)
    neighbours: np.ndarray  # (N, dba_n) ids
    without: np.ndarray  # (N, dba_n, d): j augmented as if neighbours[j, p] were not in the gallery


def _augment(vectors: np.ndarray, n: int, alpha: float) -> _Augmented:
    count = len(vectors)
    if n == 0:
        nothing = np.zeros((count, 0, vectors.shape[1]), np.float32)
        return _Augmented(vectors, np.zeros((count, 0), np.int64), nothing)
    ids, sims = _nearest_others(vectors, min(n + 1, count - 1))
    if ids.shape[1] < n + 1:  # fewer items than n + 1 others: pad with a zero-weight neighbour
        ids = np.concatenate([ids, ids[:, :1]], axis=1)
        sims = np.concatenate([sims, np.full((count, 1), -1.0, np.float32)], axis=1)
    weights = _weights(sims, alpha)
    augmented = query_expansion(vectors, vectors[ids[:, :n]], sims[:, :n], alpha)
    without = np.empty((count, n, vectors.shape[1]), np.float32)
    for p in range(n):
        keep = [q for q in range(n + 1) if q != p]  # the next neighbour moves up
        others = np.einsum("jn,jnd->jd", weights[:, keep], vectors[ids[:, keep]])
        without[:, p] = l2_normalize(vectors + others)
    return _Augmented(augmented, ids[:, :n], without)


def _patch(scores: np.ndarray, queries: np.ndarray, start: int, gallery: _Augmented) -> None:
    """Scores of queries [start, start + rows) against the items that had the query as a DBA
    neighbour, replaced by the scores against those items augmented without it."""
    rows = len(scores)
    owner, position = np.nonzero((gallery.neighbours >= start) & (gallery.neighbours < start + rows))
    query = gallery.neighbours[owner, position] - start
    scores[query, owner] = np.einsum("pd,pd->p", queries[query], gallery.without[owner, position])


def expanded_scores(vectors: np.ndarray, labels: np.ndarray, qe_n: int = 0, dba_n: int = 0,
                    alpha: float = ALPHA, ks: Sequence[int] = (1,)) -> tuple[dict[str, float], np.ndarray]:
    """Recall@K for each K in `ks` and MAP@R (fractions) with every item querying the others, under QE /
    DBA, and the per-query AP@R (NaN where the class has no other item), as `model.metrics.QueryScores.ap`
    (dense scores: (N, N) floats per `QUERY_CHUNK` queries)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    labels = np.asarray(labels).reshape(-1)
    _, classes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    relevant = counts[classes] - 1
    gallery = _augment(vectors, dba_n, alpha)
    cutoffs = {int(k): min(int(k), len(vectors) - 1) for k in ks}
    k = max(1, int(relevant.max()), *cutoffs.values())
    hits = dict.fromkeys(cutoffs, 0)
    aps = []
    for start in range(0, len(vectors), QUERY_CHUNK):
        rows = np.arange(start, min(start + QUERY_CHUNK, len(vectors)))
        queries = vectors[rows]
        if qe_n:
            scores = queries @ gallery.vectors.T
            _patch(scores, queries, start, gallery)
            scores[np.arange(len(rows)), rows] = -np.inf
            top = _top(scores, qe_n)
            found = gallery.vectors[top]
            own = np.nonzero(gallery.neighbours[top] == rows[:, None, None])  # (query, hit, position)
            found[own[0], own[1]] = gallery.without[top[own[0], own[1]], own[2]]
            queries = query_expansion(queries, found, np.take_along_axis(scores, top, axis=1), alpha)
        scores = queries @ gallery.vectors.T
        _patch(scores, queries, start, gallery)
        scores[np.arange(len(rows)), rows] = -np.inf
        ranked = _top(scores, k)
        match = classes[ranked] == classes[rows, None]
        aps.append(average_precision_at_r(match, relevant[rows]))
        for requested, cutoff in cutoffs.items():
            hits[requested] += int(match[:, :cutoff].any(axis=1).sum())
    per_query = np.concatenate(aps)
    metrics = {f"recall@{k}": count / len(vectors) for k, count in hits.items()}
    return {**metrics, "map@r": float(np.nanmean(per_query))}, per_query


def exact_copy_scores(vectors: np.ndarray, qe_n: int = 0, dba_n: int = 0, alpha: float = ALPHA) -> np.ndarray:
    """(N,) the score of each item when an exact copy of it queries the whole gallery, or -1 where
    another item ranks first."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    gallery = _augment(vectors, dba_n, alpha).vectors
    queries = vectors
    if qe_n:
        scores = queries @ gallery.T
        top = _top(scores, min(qe_n, len(gallery)))
        queries = query_expansion(queries, gallery[top], np.take_along_axis(scores, top, axis=1), alpha)
    scores = queries @ gallery.T
    own = scores[np.arange(len(vectors)), np.arange(len(vectors))]
    return np.where(scores.argmax(axis=1) == np.arange(len(vectors)), own, -1.0)


@dataclass(frozen=True)
class ExpansionChoice:
    """The search defaults chosen on validation, and their paired gain over none."""

    qe_n: int
    dba_n: int
    metrics: dict[str, float]
    gain: Gain | None


def choose_expansion(vectors: np.ndarray, labels: np.ndarray, seed: int = 0) -> ExpansionChoice:
    """The (qe_n, dba_n) of `QE_CANDIDATES` x `DBA_CANDIDATES` with the best validation MAP@R among
    those that gain beyond noise over none, keep Recall@1 and keep exact copies first at
    >= `EXACT_COPY_SCORE`; (0, 0) when none does."""
    plain, plain_ap = expanded_scores(vectors, labels)
    best = ExpansionChoice(0, 0, plain, None)
    for dba_n in DBA_CANDIDATES:
        for qe_n in QE_CANDIDATES:
            if (qe_n, dba_n) == (0, 0) or max(qe_n, dba_n) >= len(vectors) - 1:
                continue
            metrics, ap = expanded_scores(vectors, labels, qe_n, dba_n)
            gain = map_gain(ap, plain_ap, seed=seed)
            copies = float(exact_copy_scores(vectors, qe_n, dba_n).min())
            LOG.info("search defaults qe_n=%d dba_n=%d on validation: MAP@R %.4f (gain %+.4f, lower %+.4f), "
                     "R@1 %.4f, exact copies >= %.4f", qe_n, dba_n, metrics["map@r"], gain.mean, gain.lower,
                     metrics["recall@1"], copies)
            if (gain.significant and metrics["recall@1"] >= plain["recall@1"] and copies >= EXACT_COPY_SCORE
                    and metrics["map@r"] > best.metrics["map@r"]):
                best = ExpansionChoice(qe_n, dba_n, metrics, gain)
    return best
