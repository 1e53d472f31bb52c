"""Batch-hard triplet, contrastive and auxiliary classification losses against loop-based
computations of their formulas on small hand-made batches."""

from __future__ import annotations

import math

import pytest
import torch

from model.losses import BatchHardTripletLoss, ClassificationLoss, ContrastiveLoss

# 7 embeddings of 4 classes; classes 2 and 3 have a single member (anchors without a positive).
POINTS = [
    [1.0, 0.2, 0.0],
    [0.8, 0.5, 0.1],
    [0.9, -0.3, 0.2],
    [0.1, 1.0, 0.3],
    [0.3, 0.9, -0.2],
    [-0.7, 0.1, 0.6],
    [0.6, 0.6, 0.5],
]
LABELS = [0, 0, 0, 1, 1, 2, 3]


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(c * c for c in v))
    return [c / norm for c in v]


def _dist(u: list[float], v: list[float]) -> float:
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v, strict=True)))


def _batch_hard_terms(points: list[list[float]], labels: list[int], margin: float) -> list[float]:
    terms = []
    pairs = list(zip(points, labels, strict=True))
    for a, (pa, la) in enumerate(pairs):
        pos = [_dist(pa, p) for i, (p, lp) in enumerate(pairs) if i != a and lp == la]
        neg = [_dist(pa, p) for p, lp in pairs if lp != la]
        if pos and neg:
            terms.append(max(0.0, margin + max(pos) - min(neg)))
    return terms


@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_batch_hard_triplet_matches_loop_on_unit_vectors(margin: float) -> None:
    terms = _batch_hard_terms([_unit(p) for p in POINTS], LABELS, margin)
    assert len(terms) == 5  # the two singletons are no anchors
    if margin == 0.1:  # zero terms count in the mean (not an average over non-zero terms)
        assert 0.0 in terms and any(t > 0 for t in terms)
    loss = BatchHardTripletLoss(margin)(torch.tensor(POINTS), torch.tensor(LABELS))
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_batch_hard_triplet_without_normalisation_uses_raw_distances() -> None:
    scaled = [[3 * c for c in p] for p in POINTS]
    terms = _batch_hard_terms(scaled, LABELS, 0.2)
    loss = BatchHardTripletLoss(0.2, normalize=False)(torch.tensor(scaled), torch.tensor(LABELS))
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_batch_hard_triplet_default_margin_is_cgd_value() -> None:
    assert BatchHardTripletLoss().margin == 0.1


@pytest.mark.parametrize("margin", [0.85, 2.0])
def test_contrastive_matches_loop_over_all_pairs(margin: float) -> None:
    points = [_unit(p) for p in POINTS]
    terms = []
    for i in range(len(points)):
        for j in range(i + 1, len(points)):
            d = _dist(points[i], points[j])
            if LABELS[i] == LABELS[j]:
                terms.append(0.5 * d * d)
            else:
                terms.append(0.5 * max(0.0, margin - d) ** 2)
    assert len(terms) == 21
    loss = ContrastiveLoss(margin)(torch.tensor(points), torch.tensor(LABELS))
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_contrastive_default_margin_and_finite_gradient_on_duplicates() -> None:
    assert ContrastiveLoss().margin == 0.85
    x = torch.tensor([_unit(p) for p in POINTS] + [_unit(POINTS[0])], requires_grad=True)
    labels = torch.tensor([*LABELS, 1])  # an exact duplicate of item 0, in another class: d = 0
    ContrastiveLoss()(x, labels).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


LOGITS = [[2.0, -1.0, 0.5, 0.0], [0.1, 0.3, -0.2, 1.5], [-1.0, 2.5, 0.0, 0.4]]
TARGETS = [0, 3, 2]


@pytest.mark.parametrize(("temperature", "smoothing"), [(0.5, 0.1), (1.0, 0.0), (0.25, 0.3)])
def test_classification_matches_manual_smoothed_log_softmax(temperature: float, smoothing: float) -> None:
    total = 0.0
    for row, target in zip(LOGITS, TARGETS, strict=True):
        z = [v / temperature for v in row]
        log_norm = math.log(sum(math.exp(v) for v in z))
        log_p = [v - log_norm for v in z]
        classes = len(row)
        q = [(1 - smoothing) * (c == target) + smoothing / classes for c in range(classes)]
        total += -sum(qc * lp for qc, lp in zip(q, log_p, strict=True))
    loss = ClassificationLoss(temperature, smoothing)(torch.tensor(LOGITS), torch.tensor(TARGETS))
    assert loss.item() == pytest.approx(total / len(LOGITS), rel=1e-5)


def test_classification_defaults_are_cgd_values() -> None:
    loss = ClassificationLoss()
    assert (loss.temperature, loss.label_smoothing) == (0.5, 0.1)


def test_classification_rejects_labels_outside_the_logits() -> None:
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        ClassificationLoss()(torch.tensor(LOGITS), torch.tensor([0, 4, 1]))


@pytest.mark.parametrize("loss", [BatchHardTripletLoss(), ContrastiveLoss()], ids=["triplet", "contrastive"])
def test_pair_losses_reject_bad_inputs(loss: torch.nn.Module) -> None:
    x = torch.tensor(POINTS)
    with pytest.raises(ValueError, match="labels are required"):
        loss(x, None)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        loss(x, torch.tensor(LABELS[:-1]))
    with pytest.raises(ValueError, match="integer"):
        loss(x, torch.tensor(LABELS, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"shape \(B, d\)"):
        loss(x[0], torch.tensor(LABELS[:1]))
    with pytest.raises(ValueError, match="floating point"):
        loss(x.long(), torch.tensor(LABELS))
