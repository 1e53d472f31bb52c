"""BatchNorm folded into the preceding convolution, for eager inference.

`W' = W * g / sqrt(v + eps)`, `b' = (b - m) * g / sqrt(v + eps) + beta` per output channel. A pair is
a `Conv2d` child immediately followed, among its parent's children, by a `BatchNorm2d` child (timm's
`BatchNormAct2d` too: its activation is kept). The folded copy is checked against the original on a
sample input; when they differ (a backbone whose forward order is not its registration order), the
original is used.
"""

from __future__ import annotations

import copy
import itertools
import logging

import torch
from torch import nn

LOG = logging.getLogger(__name__)

MIN_COSINE = 0.9999


def _fold_pair(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Module:
    """Fold `norm` into `conv` in place; returns what replaces `norm` (its activation, or identity)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)
    drop, act = getattr(norm, "drop", None), getattr(norm, "act", None)
    parts = [module for module in (drop, act) if module is not None and not isinstance(module, nn.Identity)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def _fold_children(module: nn.Module) -> int:
    folded = 0
    children = list(module.named_children())
    for (_, first), (name, second) in itertools.pairwise(children):
        if (isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d)
                and second.track_running_stats and second.affine):
            setattr(module, name, _fold_pair(first, second))
            folded += 1
    return folded + sum(_fold_children(child) for _, child in module.named_children())


@torch.no_grad()
def fold_batchnorm(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """An eval-mode copy of `model` with BatchNorm folded into convolutions, or `model` itself when the
    copy's output on `sample` (B, 3, S, S) does not match (min cosine < `MIN_COSINE`)."""
    model = model.eval()
    folded = copy.deepcopy(model)
    count = _fold_children(folded)
    if count == 0:
        return model
    expected, got = model(sample), folded(sample)
    cosine = float(torch.nn.functional.cosine_similarity(expected, got, dim=1).min())
    if cosine < MIN_COSINE:
        LOG.warning("BatchNorm folding changed the embedding (min cosine %.5f): not folded", cosine)
        return model
    LOG.debug("folded %d BatchNorm layers into their convolutions", count)
    return folded
