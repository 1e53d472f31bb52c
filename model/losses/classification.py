"""CGD's auxiliary classification loss (Jun et al., arXiv 1903.10663): softmax
cross-entropy with temperature scaling and label smoothing,

    L = -1/B * sum_i sum_c q_ic * log softmax(z_i / tau)_c,   q_ic = (1 - eps) [c = y_i] + eps / C

with tau = 0.5 and eps = 0.1 (the paper's values). `torch.nn.functional.cross_entropy` with
`label_smoothing=eps` computes exactly this target distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.losses.base import check_embeddings, check_labels


class ClassificationLoss(nn.Module):
    """Smoothed, temperature-scaled cross-entropy: (B, C) logits and (B,) labels -> scalar."""

    def __init__(self, temperature: float = 0.5, label_smoothing: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.temperature = temperature
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_embeddings(logits, name="logits", min_batch=1)
        check_labels(labels, logits.shape[0], num_classes=logits.shape[1])
        return F.cross_entropy(logits.float() / self.temperature, labels.long(),
                               label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, label_smoothing={self.label_smoothing}"
