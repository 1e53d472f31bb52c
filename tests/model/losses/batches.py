"""A small hand-made batch for the pair losses: 7 embeddings of 4 classes, and the loop-side helpers."""

from __future__ import annotations

import math

# 7 embeddings of 4 classes; classes 2 and 3 have a single member (anchors without a positive).
POINTS = [
    [1.0, 0.2, 0.0],
    [0.8, 0.5, 0.1],
    [0.9, -0.3, 0.2],
    [0.1, 1.0, 0.3],
    [0.3, 0.9, -0.2],
    [-0.7, 0.1, 0.6],
    [0.6, 0.6, 0.5],
]
LABELS = [0, 0, 0, 1, 1, 2, 3]


def unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(c * c for c in v))
    return [c / norm for c in v]


def dist(u: list[float], v: list[float]) -> float:
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v, strict=True)))
