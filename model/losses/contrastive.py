"""Contrastive loss of the GeM paper (Radenovic, Tolias, Chum, "Fine-tuning CNN Image Retrieval
with No Human Annotation", TPAMI 2018, Siamese learning), over every pair of the batch:

    L = 1/|Pairs| * sum_{i < j} [ 1/2 Y_ij ||f_i - f_j||^2 + 1/2 (1 - Y_ij) max(0, m - ||f_i - f_j||)^2 ]

Y_ij = 1 when i and j share a class; m = 0.85 (the reference code's margin for ResNet-101).
Reduction: the mean over all B(B-1)/2 unordered pairs. pytorch-metric-learning's
`ContrastiveLoss` is not this formula (no squares, no 1/2, and it averages positive and negative
pairs separately over the non-zero terms), so it is written here.
"""

from __future__ import annotations

import torch

from model.losses.base import MetricLoss


class ContrastiveLoss(MetricLoss):
    """Mean contrastive loss over all unordered pairs of (B, d) embeddings; returns a scalar."""

    def __init__(self, margin: float = 0.85) -> None:
        super().__init__()
        self.margin = margin

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # The direct (not matrix-product) kernel: exact distances, finite gradients at zero.
        distances = torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist")
        rows, cols = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
        d = distances[rows, cols]
        same = labels[rows] == labels[cols]
        losses = torch.where(same, 0.5 * d.pow(2), 0.5 * (self.margin - d).clamp(min=0).pow(2))
        return losses.mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
