"""The training criterion: a ranking loss, plus CGD's auxiliary classification loss and MDR when
configured, built by name through `build_criterion` (the names are `available_losses()`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from model.losses.base import MetricLoss, TrainOutput
from model.losses.classification import ClassificationLoss
from model.losses.contrastive import ContrastiveLoss
from model.losses.mdr import MDRRegularizer, scale_by_mean_distance
from model.losses.proxy_anchor import ProxyAnchorLoss
from model.losses.triplet import BatchHardTripletLoss


class UnknownLossError(ValueError):
    """`build_criterion` was given a name that is not registered."""


class LossOutput(NamedTuple):
    """total: the scalar to back-propagate; parts: each (weighted) term as a float, for logging."""

    total: torch.Tensor
    parts: dict[str, float]


class Criterion(nn.Module):
    """ranking + classification_weight * classification (if given) + MDR term (if given).

    Without MDR the ranking loss reads `out.embedding` (B, d); with MDR it reads `out.raw` divided
    by the batch's mean pairwise distance, and MDR regularises the distances of `out.raw`.
    """

    def __init__(self, name: str, ranking: MetricLoss, *, classification: ClassificationLoss | None = None,
                 classification_weight: float = 1.0, mdr: MDRRegularizer | None = None) -> None:
        super().__init__()
        self.name = name
        self.ranking = ranking
        self.classification = classification
        self.classification_weight = classification_weight
        self.mdr = mdr

    def forward(self, out: TrainOutput, labels: torch.Tensor) -> LossOutput:
        """Loss for one batch: `out` (embedding, raw, logits) and (B,) integer labels."""
        ranking_input = out.embedding if self.mdr is None else scale_by_mean_distance(out.raw)
        terms = {"ranking": self.ranking(ranking_input, labels)}
        if self.classification is not None:
            if out.logits is None:
                raise ValueError(f"criterion {self.name!r} adds the auxiliary classification loss, but the "
                                 "model output has no logits: give the model a classifier "
                                 "(num_classes > 0) or build the criterion with aux_weight=0")
            terms["classification"] = self.classification_weight * self.classification(out.logits, labels)
        if self.mdr is not None:
            terms["mdr"] = self.mdr(out.raw)
        ranking, *others = terms.values()
        total = sum(others, ranking)
        return LossOutput(total, {name: float(term.detach()) for name, term in terms.items()})

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimiser groups for the criterion's own parameters: Proxy Anchor's proxies at
        100 x `base_lr`, MDR's levels at `base_lr`; empty when it has none."""
        groups = []
        for part, module in (("ranking", self.ranking), ("mdr", self.mdr)):
            params = [] if module is None else [p for p in module.parameters() if p.requires_grad]
            if params:
                groups.append({"name": f"criterion.{part}", "params": params,
                               "lr": base_lr * module.lr_multiplier})
        return groups

    def extra_repr(self) -> str:
        return f"name={self.name!r}, classification_weight={self.classification_weight}"


_BUILDERS: dict[str, Callable[..., Criterion]] = {}


def register_criterion(name: str) -> Callable[[Callable[..., Criterion]], Callable[..., Criterion]]:
    """Decorator: register a builder `(num_classes, embedding_dim, **options) -> Criterion`."""

    def register(builder: Callable[..., Criterion]) -> Callable[..., Criterion]:
        _BUILDERS[name] = builder
        return builder

    return register


def available_losses() -> list[str]:
    """The names `build_criterion` accepts, sorted."""
    return sorted(_BUILDERS)


def build_criterion(name: str, *, num_classes: int, embedding_dim: int, **overrides: Any) -> Criterion:
    """The criterion registered as `name`; `overrides` replace its keyword defaults (margin, ...)."""
    if name not in _BUILDERS:
        raise UnknownLossError(f"unknown loss {name!r}; available: {', '.join(available_losses())}")
    return _BUILDERS[name](num_classes, embedding_dim, **overrides)


def _auxiliary(aux_weight: float, temperature: float, label_smoothing: float) -> dict[str, Any]:
    if aux_weight == 0:
        return {}
    return {"classification": ClassificationLoss(temperature, label_smoothing),
            "classification_weight": aux_weight}


@register_criterion("triplet")
def _triplet(num_classes: int, embedding_dim: int, *, margin: float = 0.1, aux_weight: float = 1.0,
             temperature: float = 0.5, label_smoothing: float = 0.1) -> Criterion:
    """CGD's recipe: batch-hard triplet (margin 0.1) on the unit embedding + auxiliary classification."""
    return Criterion("triplet", BatchHardTripletLoss(margin),
                     **_auxiliary(aux_weight, temperature, label_smoothing))


@register_criterion("contrastive")
def _contrastive(num_classes: int, embedding_dim: int, *, margin: float = 0.85, aux_weight: float = 1.0,
                 temperature: float = 0.5, label_smoothing: float = 0.1) -> Criterion:
    """GeM's contrastive loss (margin 0.85) over all pairs + auxiliary classification."""
    return Criterion("contrastive", ContrastiveLoss(margin),
                     **_auxiliary(aux_weight, temperature, label_smoothing))


@register_criterion("proxy_anchor")
def _proxy_anchor(num_classes: int, embedding_dim: int, *, alpha: float = 32.0, delta: float = 0.1,
                  aux_weight: float = 0.0, temperature: float = 0.5,
                  label_smoothing: float = 0.1) -> Criterion:
    """Proxy Anchor (alpha 32, delta 0.1), one proxy per class; no auxiliary loss unless aux_weight > 0."""
    return Criterion("proxy_anchor", ProxyAnchorLoss(num_classes, embedding_dim, alpha=alpha, delta=delta),
                     **_auxiliary(aux_weight, temperature, label_smoothing))


@register_criterion("triplet_mdr")
def _triplet_mdr(num_classes: int, embedding_dim: int, *, margin: float = 0.2, mdr_weight: float = 0.1,
                 nu: float = 0.01, momentum: float = 0.9, levels: Sequence[float] = (-3.0, 0.0, 3.0),
                 aux_weight: float = 1.0, temperature: float = 0.5,
                 label_smoothing: float = 0.1) -> Criterion:
    """MDR's recipe: batch-hard triplet (margin 0.2, the MDR paper's) on the raw embedding divided
    by its mean pairwise distance + MDR (lambda `mdr_weight`) + auxiliary classification."""
    return Criterion("triplet_mdr", BatchHardTripletLoss(margin, normalize=False),
                     mdr=MDRRegularizer(levels, weight=mdr_weight, nu=nu, momentum=momentum),
                     **_auxiliary(aux_weight, temperature, label_smoothing))
