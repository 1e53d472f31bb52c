"""Auxiliary classification loss against a manual smoothed log-softmax on small hand-made logits."""

from __future__ import annotations

import math

import pytest
import torch

from model.losses import ClassificationLoss

LOGITS = [[2.0, -1.0, 0.5, 0.0], [0.1, 0.3, -0.2, 1.5], [-1.0, 2.5, 0.0, 0.4]]
TARGETS = [0, 3, 2]


@pytest.mark.parametrize(("temperature", "smoothing"), [(0.5, 0.1), (1.0, 0.0), (0.25, 0.3)])
def test_classification_matches_manual_smoothed_log_softmax(temperature: float, smoothing: float) -> None:
    total = 0.0
    for row, target in zip(LOGITS, TARGETS, strict=True):
        z = [v / temperature for v in row]
        log_norm = math.log(sum(math.exp(v) for v in z))
        log_p = [v - log_norm for v in z]
        classes = len(row)
        q = [(1 - smoothing) * (c == target) + smoothing / classes for c in range(classes)]
        total += -sum(qc * lp for qc, lp in zip(q, log_p, strict=True))
    loss = ClassificationLoss(temperature, smoothing)(torch.tensor(LOGITS), torch.tensor(TARGETS))
    assert loss.item() == pytest.approx(total / len(LOGITS), rel=1e-5)


def test_classification_defaults_are_cgd_values() -> None:
    loss = ClassificationLoss()
    assert (loss.temperature, loss.label_smoothing) == (0.5, 0.1)


def test_classification_rejects_labels_outside_the_logits() -> None:
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        ClassificationLoss()(torch.tensor(LOGITS), torch.tensor([0, 4, 1]))
