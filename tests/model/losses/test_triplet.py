"""Batch-hard triplet loss against a loop-based computation of its formula on a small hand-made batch;
input checks of the pair losses (triplet and contrastive)."""

from __future__ import annotations

import pytest
import torch

from model.losses import BatchHardTripletLoss, ContrastiveLoss
from tests.model.losses.batches import LABELS, POINTS, dist, unit


def _batch_hard_terms(points: list[list[float]], labels: list[int], margin: float) -> list[float]:
    terms = []
    pairs = list(zip(points, labels, strict=True))
    for a, (pa, la) in enumerate(pairs):
        pos = [dist(pa, p) for i, (p, lp) in enumerate(pairs) if i != a and lp == la]
        neg = [dist(pa, p) for p, lp in pairs if lp != la]
        if pos and neg:
            terms.append(max(0.0, margin + max(pos) - min(neg)))
    return terms


@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_batch_hard_triplet_matches_loop_on_unit_vectors(margin: float) -> None:
    terms = _batch_hard_terms([unit(p) for p in POINTS], LABELS, margin)
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
