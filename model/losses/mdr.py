"""MDR: Multi-level Distance Regularization (Kim, Park, "Multi-level Distance Regularization for
Deep Metric Learning", AAAI 2021, and the authors' TensorFlow reference code).

For the pairwise Euclidean distances d_ij (i < j) of the batch's un-normalised embeddings:

    d_norm = (d - mu) / sigma            mu, sigma: running mean / std of the batch distances
    L_MDR  = mean_{i<j} min_k |d_norm_ij - level_k|      (pull to the nearest level)
    R      = lambda * L_MDR + nu * ||levels||^2

levels are learnable, initialised to (-3, 0, 3); nu = 0.01; lambda = 0.1 here (the paper uses 0.6
on CUB, 0.2 on Cars, 0.1 on SOP and In-Shop). mu and sigma start at the first batch's statistics,
then follow mu <- 0.9 mu + 0.1 mean(d) (no gradient), updated before normalising, in training mode
only. Two quirks of the reference code are not reproduced: the statistics are buffers (saved in a
state_dict), and they are taken over the off-diagonal pairs (the reference includes the zero
diagonal). As in the reference, the ranking loss sees the embeddings divided by the batch's mean
pairwise distance (`scale_by_mean_distance`) while MDR regularises the distances of the raw ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model.losses.base import check_embeddings


def scale_by_mean_distance(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, d) embeddings divided by their mean pairwise distance over pairs i < j (with gradient)."""
    check_embeddings(embeddings)
    return embeddings / torch.pdist(embeddings).mean()


class MDRRegularizer(nn.Module):
    """MDR term `lambda * L_MDR + nu * ||levels||^2` for (B, d) raw embeddings (B >= 3); returns a
    scalar. It is label-free, so `forward` takes the embeddings only.

    Buffers: `running_mean`, `running_std` (scalars) and `num_batches_tracked` (0 until the first
    training batch sets the statistics).
    """

    lr_multiplier: float = 1.0

    def __init__(self, levels: Sequence[float] = (-3.0, 0.0, 3.0), *, weight: float = 0.1,
                 nu: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__()
        if len(levels) < 1:
            raise ValueError("MDR needs at least one level")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.weight = weight
        self.nu = nu
        self.momentum = momentum
        self.levels = nn.Parameter(torch.tensor([float(level) for level in levels]))
        self.register_buffer("running_mean", torch.tensor(0.0))
        self.register_buffer("running_std", torch.tensor(1.0))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def update_statistics(self, distances: torch.Tensor) -> None:
        """Fold one batch's (P,) pair distances into the running mean and std (no gradient)."""
        mean, std = distances.detach().mean(), distances.detach().std(correction=0)
        if self.num_batches_tracked == 0:
            self.running_mean.copy_(mean)
            self.running_std.copy_(std)
        else:
            self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * mean)
            self.running_std.mul_(self.momentum).add_((1 - self.momentum) * std)
        self.num_batches_tracked += 1

    def distance_loss(self, embeddings: torch.Tensor) -> torch.Tensor:
        """L_MDR alone: the mean distance of each normalised pair distance to its nearest level."""
        check_embeddings(embeddings, min_batch=3)
        distances = torch.pdist(embeddings.float())  # (B(B-1)/2,): the pairs i < j
        if self.training:
            self.update_statistics(distances)
        normalised = (distances - self.running_mean) / self.running_std.clamp(min=1e-12)
        return (normalised[:, None] - self.levels[None, :]).abs().min(dim=1).values.mean()

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.weight * self.distance_loss(embeddings) + self.nu * self.levels.pow(2).sum()

    def extra_repr(self) -> str:
        return f"levels={len(self.levels)}, weight={self.weight}, nu={self.nu}, momentum={self.momentum}"
