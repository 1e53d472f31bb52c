"""Contrastive loss against a loop over all pairs of a small hand-made batch."""

from __future__ import annotations

import pytest
import torch

from model.losses import ContrastiveLoss
from tests.model.losses.batches import LABELS, POINTS, dist, unit


@pytest.mark.parametrize("margin", [0.85, 2.0])
def test_contrastive_matches_loop_over_all_pairs(margin: float) -> None:
    points = [unit(p) for p in POINTS]
    terms = []
    for i in range(len(points)):
        for j in range(i + 1, len(points)):
            d = dist(points[i], points[j])
            if LABELS[i] == LABELS[j]:
                terms.append(0.5 * d * d)
            else:
                terms.append(0.5 * max(0.0, margin - d) ** 2)
    assert len(terms) == 21
    loss = ContrastiveLoss(margin)(torch.tensor(points), torch.tensor(LABELS))
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_contrastive_default_margin_and_finite_gradient_on_duplicates() -> None:
    assert ContrastiveLoss().margin == 0.85
    x = torch.tensor([unit(p) for p in POINTS] + [unit(POINTS[0])], requires_grad=True)
    labels = torch.tensor([*LABELS, 1])  # an exact duplicate of item 0, in another class: d = 0
    ContrastiveLoss()(x, labels).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
