"""What every loss shares: the training-output protocol and the input checks.

A loss subclasses `MetricLoss` and writes only `compute_loss`; `forward` checks the inputs first
and raises `ValueError` with a message saying what is wrong (never `assert`).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class TrainOutput(Protocol):
    """What a training forward pass yields (`model.cgd.CGDOutput` satisfies it).

    embedding: (B, d) L2-normalised; raw: (B, d) un-normalised concatenation of the branch
    projections; logits: (B, num_classes) or None when the model has no classifier.
    """

    @property
    def embedding(self) -> torch.Tensor: ...

    @property
    def raw(self) -> torch.Tensor: ...

    @property
    def logits(self) -> torch.Tensor | None: ...


def check_embeddings(embeddings: torch.Tensor, *, name: str = "embeddings", min_batch: int = 2) -> None:
    """Raise ValueError unless `embeddings` is a floating (B, d) tensor with B >= `min_batch`."""
    if not isinstance(embeddings, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.dim() != 2:
        raise ValueError(f"{name} must have shape (B, d), got {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {embeddings.dtype}")
    if embeddings.shape[0] < min_batch:
        raise ValueError(f"{name} needs a batch of at least {min_batch}, got {embeddings.shape[0]}")


def check_labels(labels: torch.Tensor | None, batch_size: int, *, num_classes: int | None = None) -> None:
    """Raise ValueError unless `labels` is an integer (B,) tensor, within [0, num_classes) if given."""
    if labels is None:
        raise ValueError("labels are required: an integer tensor of shape (B,)")
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != batch_size:
        raise ValueError(f"labels must have shape ({batch_size},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if num_classes is not None and batch_size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")


class MetricLoss(nn.Module):
    """Base class: `forward(embeddings (B, d), labels (B,)) -> scalar` checks, then `compute_loss`.

    `lr_multiplier` is a hint for the optimiser group of the loss's own parameters (if any).
    """

    lr_multiplier: float = 1.0
    per_class_parameters: bool = False  # True: `init_from_embeddings` starts them from the data

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_embeddings(embeddings)
        check_labels(labels, embeddings.shape[0])
        return self.compute_loss(embeddings, labels.long())

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The scalar loss for checked (B, d) embeddings and (B,) int64 labels."""
        raise NotImplementedError

    def init_from_embeddings(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Start the per-class parameters (when `per_class_parameters`) from the start model's (N, d)
        embeddings of the training images and their (N,) labels."""
