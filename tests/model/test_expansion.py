"""Search defaults judged on validation: exact leave-one-out QE / DBA scores and the choice rule."""

from __future__ import annotations

import numpy as np
import pytest

from index.postprocess import l2_normalize
from model.expansion import EXACT_COPY_SCORE, choose_expansion, exact_copy_scores, expanded_scores
from model.metrics import query_scores


def chains(classes: int = 6, per_class: int = 12, noise: float = 0.02,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each class a noisy arc on the sphere: neighbours chain along it, so expansion helps."""
    rng = np.random.default_rng(seed)
    vectors, labels = [], []
    for label in range(classes):
        a, b = rng.normal(size=(2, 32))
        for t in np.linspace(0.0, 1.2, per_class):
            vectors.append(np.cos(t) * a + np.sin(t) * b + noise * rng.normal(size=32))
            labels.append(label)
    return l2_normalize(np.asarray(vectors)), np.asarray(labels)


def brute_force_ap(vectors: np.ndarray, labels: np.ndarray, qe_n: int, dba_n: int,
                   alpha: float = 3.0) -> np.ndarray:
    """AP@R of each item querying a gallery of the others, DBA and QE computed without it."""
    aps = np.full(len(vectors), np.nan)
    for i in range(len(vectors)):
        others = np.delete(np.arange(len(vectors)), i)
        gallery = vectors[others]
        if dba_n:
            augmented = []
            for j in range(len(gallery)):
                scores = gallery @ gallery[j]
                scores[j] = -np.inf
                top = np.argsort(-scores, kind="stable")[:dba_n]
                weights = np.clip(scores[top], 0, None) ** alpha
                augmented.append(gallery[j] + weights @ gallery[top])
            gallery = l2_normalize(np.asarray(augmented))
        query = vectors[i]
        if qe_n:
            scores = gallery @ query
            top = np.argsort(-scores, kind="stable")[:qe_n]
            query = l2_normalize((query + (np.clip(scores[top], 0, None) ** alpha) @ gallery[top])[None])[0]
        ranked = others[np.argsort(-(gallery @ query), kind="stable")]
        relevant = int((labels[others] == labels[i]).sum())
        if relevant:
            match = labels[ranked[:relevant]] == labels[i]
            aps[i] = float((np.cumsum(match) / np.arange(1, relevant + 1) * match).sum() / relevant)
    return aps


def test_without_expansion_the_scores_are_the_plain_ones() -> None:
    vectors, labels = chains(noise=0.3)
    plain, plain_scores = query_scores(vectors, labels)
    metrics, ap = expanded_scores(vectors, labels, ks=(1, 2, 4, 8))
    assert metrics == pytest.approx(plain, abs=1e-6)
    np.testing.assert_allclose(ap, plain_scores.ap, atol=1e-5)


@pytest.mark.parametrize(("qe_n", "dba_n"), [(1, 0), (2, 0), (0, 1), (0, 2), (2, 2), (3, 1)])
def test_expanded_scores_are_an_exact_leave_one_out(qe_n: int, dba_n: int) -> None:
    vectors, labels = chains(classes=4, per_class=8, noise=0.4, seed=qe_n + 10 * dba_n)
    _, ap = expanded_scores(vectors, labels, qe_n, dba_n)
    np.testing.assert_allclose(ap, brute_force_ap(vectors, labels, qe_n, dba_n), atol=1e-4)


def test_exact_copies_score_one_without_expansion_and_less_with_dba() -> None:
    vectors, _ = chains(noise=0.3)
    np.testing.assert_allclose(exact_copy_scores(vectors), 1.0, atol=1e-5)
    np.testing.assert_allclose(exact_copy_scores(vectors, qe_n=1), 1.0, atol=1e-5)  # its own hit
    augmented = exact_copy_scores(vectors, dba_n=2)
    assert (augmented < 0.999).any() and (np.abs(augmented) <= 1.0 + 1e-6).all()


def test_expansion_is_chosen_only_within_the_rule() -> None:
    vectors, labels = chains(noise=0.05)
    chosen = choose_expansion(vectors, labels)
    assert (chosen.qe_n, chosen.dba_n) != (0, 0)
    plain, _ = expanded_scores(vectors, labels)
    assert chosen.gain is not None and chosen.gain.lower > 0
    assert chosen.metrics["recall@1"] >= plain["recall@1"]
    assert exact_copy_scores(vectors, chosen.qe_n, chosen.dba_n).min() >= EXACT_COPY_SCORE


def test_no_expansion_on_labels_without_structure() -> None:
    rng = np.random.default_rng(1)
    vectors = l2_normalize(rng.normal(size=(120, 32)))
    chosen = choose_expansion(vectors, rng.integers(0, 6, size=120))
    assert (chosen.qe_n, chosen.dba_n, chosen.gain) == (0, 0, None)
