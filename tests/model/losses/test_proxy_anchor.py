"""Proxy Anchor: against a loop over its formula, against pytorch-metric-learning, proxy init and growth."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning.losses import ProxyAnchorLoss as PMLProxyAnchorLoss

from model.losses import ProxyAnchorLoss

# 6 embeddings in 3-D; 5 classes, of which 2 and 4 are absent from the batch.
POINTS = [
    [1.0, 0.2, 0.0],
    [0.8, 0.5, 0.1],
    [0.1, 1.0, 0.3],
    [0.3, 0.9, -0.2],
    [-0.7, 0.1, 0.6],
    [0.6, -0.6, 0.5],
]
LABELS = [0, 0, 1, 1, 3, 3]


def _cos(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    return dot / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def _proxy_anchor_loop(points: list[list[float]], labels: list[int], proxies: list[list[float]],
                       alpha: float, delta: float) -> float:
    positive_terms, negative_terms = [], []
    pairs = list(zip(points, labels, strict=True))
    for c, proxy in enumerate(proxies):
        pos = [math.exp(-alpha * (_cos(x, proxy) - delta)) for x, y in pairs if y == c]
        neg = [math.exp(alpha * (_cos(x, proxy) + delta)) for x, y in pairs if y != c]
        if pos:
            positive_terms.append(math.log(1 + sum(pos)))
        negative_terms.append(math.log(1 + sum(neg)))
    return sum(positive_terms) / len(positive_terms) + sum(negative_terms) / len(proxies)


@pytest.mark.parametrize(("alpha", "delta"), [(32.0, 0.1), (4.0, 0.3)])
def test_matches_loop_over_the_formula(alpha: float, delta: float) -> None:
    torch.manual_seed(0)
    loss = ProxyAnchorLoss(5, 3, alpha=alpha, delta=delta).double()
    expected = _proxy_anchor_loop(POINTS, LABELS, loss.proxies.tolist(), alpha, delta)
    value = loss(torch.tensor(POINTS, dtype=torch.float64), torch.tensor(LABELS))
    assert value.item() == pytest.approx(expected, rel=1e-9)


def test_matches_pytorch_metric_learning() -> None:
    torch.manual_seed(1)
    ours = ProxyAnchorLoss(5, 3)
    theirs = PMLProxyAnchorLoss(5, 3, margin=0.1, alpha=32)
    with torch.no_grad():
        theirs.proxies.copy_(ours.proxies)
    x, y = torch.tensor(POINTS), torch.tensor(LABELS)
    assert ours(x, y).item() == pytest.approx(theirs(x, y).item(), rel=1e-5)


def test_defaults_proxy_init_and_lr_hint() -> None:
    torch.manual_seed(0)
    loss = ProxyAnchorLoss(200, 512)
    assert (loss.alpha, loss.delta, loss.num_classes, loss.lr_multiplier) == (32.0, 0.1, 200, 100.0)
    # kaiming_normal with fan_out on a (classes, d) table: zero mean, std sqrt(2 / classes).
    assert loss.proxies.mean().item() == pytest.approx(0.0, abs=0.005)
    assert loss.proxies.std().item() == pytest.approx(math.sqrt(2 / 200), rel=0.02)


def test_gradients_reach_embeddings_and_proxies() -> None:
    loss = ProxyAnchorLoss(5, 3)
    x = torch.tensor(POINTS, requires_grad=True)
    loss(x, torch.tensor(LABELS)).backward()
    for grad in (x.grad, loss.proxies.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_grow_keeps_old_proxies_and_adds_new_ones() -> None:
    torch.manual_seed(0)
    loss = ProxyAnchorLoss(5, 3)
    old = loss.proxies.detach().clone()
    before = loss.proxies
    loss.grow(2)
    assert loss.num_classes == 7 and loss.proxies.shape == (7, 3)
    assert torch.equal(loss.proxies[:5], old)
    new_rows = loss.proxies[5:]
    assert torch.isfinite(new_rows).all() and new_rows.norm(dim=1).min() > 0
    assert not torch.equal(new_rows[0], new_rows[1])
    assert loss.proxies is not before and loss.proxies.requires_grad
    labels = torch.tensor([0, 0, 6, 6, 5, 3])  # the new classes are usable labels
    value = loss(torch.tensor(POINTS), labels)
    expected = _proxy_anchor_loop(POINTS, labels.tolist(), loss.proxies.tolist(), 32.0, 0.1)
    assert value.item() == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="positive"):
        loss.grow(0)


def test_rejects_unknown_labels_and_wrong_dimension() -> None:
    loss = ProxyAnchorLoss(3, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        loss(torch.tensor(POINTS), torch.tensor(LABELS))
    with pytest.raises(ValueError, match="dimension"):
        loss(torch.ones(4, 5), torch.tensor([0, 1, 2, 0]))


def test_init_from_embeddings_puts_each_proxy_at_its_class_centre() -> None:
    torch.manual_seed(0)
    loss = ProxyAnchorLoss(num_classes=4, embedding_dim=8)
    untouched = loss.proxies[3].detach().clone()
    embeddings = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])  # no image of class 3
    assert loss.per_class_parameters
    loss.init_from_embeddings(embeddings, labels)
    for label in range(3):
        centre = embeddings[labels == label].mean(dim=0)
        assert torch.allclose(loss.proxies[label], centre / centre.norm(), atol=1e-6)
    assert torch.equal(loss.proxies[3], untouched)
    # the loss now sees the embeddings near their proxies: lower than from random proxies
    fresh = ProxyAnchorLoss(num_classes=4, embedding_dim=8)
    assert loss(embeddings, labels) < fresh(embeddings, labels)


def test_init_from_embeddings_rejects_a_wrong_dimension_or_label() -> None:
    loss = ProxyAnchorLoss(num_classes=2, embedding_dim=8)
    with pytest.raises(ValueError, match="shape"):
        loss.init_from_embeddings(torch.randn(4, 5), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="labels"):
        loss.init_from_embeddings(torch.randn(4, 8), torch.tensor([0, 0, 1, 2]))
