"""Losses for metric learning: one file per loss, combined by `Criterion` and built by name."""

from model.losses.base import MetricLoss, TrainOutput
from model.losses.classification import ClassificationLoss
from model.losses.contrastive import ContrastiveLoss
from model.losses.criterion import (
    Criterion,
    LossOutput,
    UnknownLossError,
    available_losses,
    build_criterion,
)
from model.losses.mdr import MDRRegularizer, scale_by_mean_distance
from model.losses.proxy_anchor import ProxyAnchorLoss
from model.losses.triplet import BatchHardTripletLoss

__all__ = [
    "BatchHardTripletLoss",
    "ClassificationLoss",
    "ContrastiveLoss",
    "Criterion",
    "LossOutput",
    "MDRRegularizer",
    "MetricLoss",
    "ProxyAnchorLoss",
    "TrainOutput",
    "UnknownLossError",
    "available_losses",
    "build_criterion",
    "scale_by_mean_distance",
]
