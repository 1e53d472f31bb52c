"""Criterion and build_criterion: composition of the terms, gradients, parameter groups, errors."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from model.losses import (
    BatchHardTripletLoss,
    ClassificationLoss,
    ContrastiveLoss,
    Criterion,
    MDRRegularizer,
    UnknownLossError,
    available_losses,
    build_criterion,
    scale_by_mean_distance,
)

CLASSES, DIM = 6, 8


class Output(NamedTuple):
    """Stands in for model.cgd.CGDOutput: the criterion only needs these three fields."""

    embedding: torch.Tensor
    raw: torch.Tensor
    logits: torch.Tensor | None


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(12, DIM, generator=generator, requires_grad=True)
    logits = torch.randn(12, CLASSES, generator=generator, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 4, 4, 4])
    return raw, logits, labels


def test_available_losses_and_unknown_name() -> None:
    assert available_losses() == ["contrastive", "proxy_anchor", "triplet", "triplet_mdr"]
    with pytest.raises(UnknownLossError, match="available: contrastive, proxy_anchor, triplet, triplet_mdr"):
        build_criterion("arcface", num_classes=CLASSES, embedding_dim=DIM)
    assert issubclass(UnknownLossError, ValueError)


@pytest.mark.parametrize("name", ["contrastive", "proxy_anchor", "triplet", "triplet_mdr"])
def test_every_criterion_gives_finite_nonzero_gradients(name: str) -> None:
    raw, logits, labels = _batch()
    criterion = build_criterion(name, num_classes=CLASSES, embedding_dim=DIM, aux_weight=1.0)
    out = criterion(Output(F.normalize(raw, dim=1), raw, logits), labels)
    assert out.total.dim() == 0 and torch.isfinite(out.total)
    assert out.total.item() == pytest.approx(sum(out.parts.values()), rel=1e-5)
    out.total.backward()
    grads = [raw.grad, logits.grad] + [p.grad for p in criterion.parameters()]
    for grad in grads:
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_triplet_is_cgd_recipe_triplet_plus_classification() -> None:
    raw, logits, labels = _batch(1)
    embedding = F.normalize(raw, dim=1)
    criterion = build_criterion("triplet", num_classes=CLASSES, embedding_dim=DIM)
    out = criterion(Output(embedding, raw, logits), labels)
    triplet = BatchHardTripletLoss(0.1)(embedding, labels)
    classification = ClassificationLoss(0.5, 0.1)(logits, labels)
    assert set(out.parts) == {"ranking", "classification"}
    assert out.parts["ranking"] == pytest.approx(triplet.item())
    assert out.parts["classification"] == pytest.approx(classification.item())
    assert out.total.item() == pytest.approx((triplet + classification).item())


def test_contrastive_uses_gem_margin_with_auxiliary_loss() -> None:
    raw, logits, labels = _batch(2)
    embedding = F.normalize(raw, dim=1)
    out = build_criterion("contrastive", num_classes=CLASSES, embedding_dim=DIM, aux_weight=0.5)(
        Output(embedding, raw, logits), labels)
    expected = ContrastiveLoss(0.85)(embedding, labels) + 0.5 * ClassificationLoss()(logits, labels)
    assert out.total.item() == pytest.approx(expected.item())


def test_triplet_mdr_ranks_scaled_raw_and_regularises_raw() -> None:
    raw, logits, labels = _batch(3)
    criterion = build_criterion("triplet_mdr", num_classes=CLASSES, embedding_dim=DIM, mdr_weight=0.6)
    out = criterion(Output(F.normalize(raw, dim=1), raw, logits), labels)
    triplet = BatchHardTripletLoss(0.2, normalize=False)(scale_by_mean_distance(raw), labels)
    mdr = MDRRegularizer(weight=0.6)(raw)
    assert out.parts["ranking"] == pytest.approx(triplet.item())
    assert out.parts["mdr"] == pytest.approx(mdr.item())
    assert out.parts["classification"] == pytest.approx(ClassificationLoss()(logits, labels).item())
    assert criterion.mdr.num_batches_tracked.item() == 1


def test_proxy_anchor_needs_no_logits_by_default() -> None:
    raw, _, labels = _batch(4)
    criterion = build_criterion("proxy_anchor", num_classes=CLASSES, embedding_dim=DIM)
    out = criterion(Output(F.normalize(raw, dim=1), raw, None), labels)
    assert set(out.parts) == {"ranking"} and criterion.classification is None
    assert criterion.ranking.num_classes == CLASSES


def test_auxiliary_loss_without_logits_is_a_clear_error() -> None:
    raw, _, labels = _batch()
    out = Output(F.normalize(raw, dim=1), raw, None)
    with pytest.raises(ValueError, match="no logits"):
        build_criterion("triplet", num_classes=CLASSES, embedding_dim=DIM)(out, labels)
    no_aux = build_criterion("triplet", num_classes=CLASSES, embedding_dim=DIM, aux_weight=0.0)
    assert set(no_aux(out, labels).parts) == {"ranking"}


def test_param_groups_scale_proxies_and_keep_levels_at_base_lr() -> None:
    proxy = build_criterion("proxy_anchor", num_classes=CLASSES, embedding_dim=DIM)
    [group] = proxy.param_groups(1e-4)
    assert group["lr"] == pytest.approx(1e-2) and group["params"] == [proxy.ranking.proxies]
    mdr = build_criterion("triplet_mdr", num_classes=CLASSES, embedding_dim=DIM)
    [group] = mdr.param_groups(1e-4)
    assert group["lr"] == pytest.approx(1e-4) and group["params"] == [mdr.mdr.levels]
    assert build_criterion("triplet", num_classes=CLASSES, embedding_dim=DIM).param_groups(1e-4) == []
    proxy.ranking.grow(3)
    [group] = proxy.param_groups(1e-4)
    assert group["params"][0].shape == (CLASSES + 3, DIM)


def test_overrides_reach_the_losses() -> None:
    criterion = build_criterion("triplet", num_classes=CLASSES, embedding_dim=DIM, margin=0.3,
                                temperature=1.0)
    assert isinstance(criterion, Criterion)
    assert criterion.ranking.margin == 0.3 and criterion.classification.temperature == 1.0
    proxy = build_criterion("proxy_anchor", num_classes=CLASSES, embedding_dim=DIM, alpha=16.0, delta=0.2)
    assert (proxy.ranking.alpha, proxy.ranking.delta) == (16.0, 0.2)
    with pytest.raises(TypeError):
        build_criterion("triplet", num_classes=CLASSES, embedding_dim=DIM, alpha=16.0)
