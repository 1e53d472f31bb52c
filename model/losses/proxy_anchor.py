"""Proxy Anchor loss (Kim, Kim, Cho, Kwak, "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020;
reference code https://github.com/tjddus9597/Proxy-Anchor-CVPR2020):

    L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X+_p} exp(-alpha (s(x, p) - delta)))
      + 1/|P|  sum_{p in P}  log(1 + sum_{x in X-_p} exp( alpha (s(x, p) + delta)))

s is cosine similarity, P all proxies (one per class), P+ the proxies of classes present in the
batch, X+_p the batch embeddings of p's class and X-_p the others; alpha = 32, delta = 0.1.

Written here rather than taken from pytorch-metric-learning's `ProxyAnchorLoss` (which computes the
same value; the tests compare both) because the proxy table must grow with new classes, and the
library casts its proxies in place to the embeddings' dtype, which breaks an optimiser under
mixed precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.losses.base import MetricLoss, check_labels


def _log1p_sum_exp(logits: torch.Tensor) -> torch.Tensor:
    """log(1 + sum_i exp(logits_i)) over dim 0 of (B, C) -> (C,), stably; entries at the dtype's
    minimum count as absent."""
    zeros = logits.new_zeros((1, logits.shape[1]))
    return torch.logsumexp(torch.cat([zeros, logits]), dim=0)


class ProxyAnchorLoss(MetricLoss):
    """Proxy Anchor loss over (B, d) embeddings and (B,) labels in [0, num_classes); a scalar.

    `proxies` is a (num_classes, d) parameter drawn with kaiming_normal (fan_out), as in the
    reference code, which trains it at 100x the base learning rate (`lr_multiplier`); the trainer
    then moves them to the class centres of the start model (`init_from_embeddings`).
    """

    lr_multiplier = 100.0
    per_class_parameters = True

    def __init__(self, num_classes: int, embedding_dim: int, *, alpha: float = 32.0,
                 delta: float = 0.1) -> None:
        super().__init__()
        if num_classes < 1 or embedding_dim < 1:
            raise ValueError(f"num_classes and embedding_dim must be positive, got {num_classes}, "
                             f"{embedding_dim}")
        self.alpha = alpha
        self.delta = delta
        self.proxies = nn.Parameter(nn.init.kaiming_normal_(torch.empty(num_classes, embedding_dim),
                                                            mode="fan_out"))

    @property
    def num_classes(self) -> int:
        return self.proxies.shape[0]

    def grow(self, num_new_classes: int) -> None:
        """Append `num_new_classes` proxies (labels num_classes, num_classes + 1, ...); the old rows
        are kept as they are. The new rows follow the initial distribution of a table of the grown
        size. The parameter object is replaced: rebuild the optimiser's groups afterwards."""
        if num_new_classes < 1:
            raise ValueError(f"num_new_classes must be positive, got {num_new_classes}")
        total = self.num_classes + num_new_classes
        fresh = nn.init.kaiming_normal_(torch.empty(total, self.proxies.shape[1]), mode="fan_out")
        new_rows = fresh[self.num_classes:].to(self.proxies)
        self.proxies = nn.Parameter(torch.cat([self.proxies.detach(), new_rows]))

    @torch.no_grad()
    def init_from_embeddings(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Each proxy at its class's mean embedding (unit length); a class without embeddings keeps
        its random proxy. Random proxies pull every embedding towards arbitrary directions for the
        first hundreds of steps, which scrambles a start model that already retrieves well; proxies
        at the class centres make the loss measure the start model's real mistakes from step one."""
        check_labels(labels, embeddings.shape[0], num_classes=self.num_classes)
        if embeddings.dim() != 2 or embeddings.shape[1] != self.proxies.shape[1]:
            raise ValueError(f"embeddings must have shape (N, {self.proxies.shape[1]}), got "
                             f"{tuple(embeddings.shape)}")
        embeddings = embeddings.to(self.proxies)
        sums = torch.zeros_like(self.proxies).index_add_(0, labels.to(self.proxies.device), embeddings)
        present = torch.bincount(labels, minlength=self.num_classes).to(self.proxies.device) > 0
        self.proxies[present] = F.normalize(sums[present], dim=1)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_labels(labels, embeddings.shape[0], num_classes=self.num_classes)
        if embeddings.shape[1] != self.proxies.shape[1]:
            raise ValueError(f"embeddings have dimension {embeddings.shape[1]}, proxies "
                             f"{self.proxies.shape[1]}")
        cos = F.normalize(embeddings.to(self.proxies.dtype), dim=1) @ F.normalize(self.proxies, dim=1).T
        positive = F.one_hot(labels, self.num_classes).bool()  # (B, C)
        minus_inf = torch.finfo(cos.dtype).min
        pos_term = _log1p_sum_exp(torch.where(positive, -self.alpha * (cos - self.delta), minus_inf))
        neg_term = _log1p_sum_exp(torch.where(positive, minus_inf, self.alpha * (cos + self.delta)))
        with_positives = positive.any(dim=0)
        return pos_term[with_positives].sum() / with_positives.sum() + neg_term.sum() / self.num_classes

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, alpha={self.alpha}, delta={self.delta}"
