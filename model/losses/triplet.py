"""Batch-hard triplet loss (Hermans, Beyer, Leibe, "In Defense of the Triplet Loss", arXiv 1703.07737,
the "batch hard" loss), the ranking loss of CGD (Jun et al., arXiv 1903.10663; margin 0.1):

    L = 1/|A| * sum_{a in A} max(0, m + max_{p: y_p = y_a, p != a} D(a, p) - min_{n: y_n != y_a} D(a, n))

D is the Euclidean distance and A the anchors that have at least one positive and one negative
in the batch. This is exactly pytorch-metric-learning's `TripletMarginLoss` over the triplets of
`BatchHardMiner` with a `MeanReducer` (its default `AvgNonZeroReducer` would average only the
non-zero terms, which is not the formula), so the library computes it.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner
from pytorch_metric_learning.reducers import MeanReducer

from model.losses.base import MetricLoss


class BatchHardTripletLoss(MetricLoss):
    """Batch-hard triplet loss over (B, d) embeddings and (B,) labels; returns a scalar.

    normalize: L2-normalise the embeddings first (CGD: True; the MDR recipe feeds scaled raw
    embeddings and sets False). A batch with no valid anchor gives 0.
    """

    def __init__(self, margin: float = 0.1, *, normalize: bool = True) -> None:
        super().__init__()
        self.margin = margin
        self.normalize = normalize
        distance = LpDistance(normalize_embeddings=normalize, p=2, power=1)
        self.miner = BatchHardMiner(distance=distance)
        self.loss = TripletMarginLoss(margin=margin, distance=distance, reducer=MeanReducer())

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(embeddings, labels, self.miner(embeddings, labels))

    def extra_repr(self) -> str:
        return f"margin={self.margin}, normalize={self.normalize}"
