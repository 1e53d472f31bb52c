"""Splitting a backbone into a frozen trunk and a trainable tail, for feature-cached training.

The trunk (stem and early stages) runs once per image view and its output map is cached; training
then runs only the tail (the last stages) forward and backward. Both halves share the backbone's
modules, so training the tail trains the model itself. Supported: timm EfficientNet/MobileNet-style
bodies (`conv_stem`, `blocks`, `conv_head`) and ResNet-style bodies (`layer1..4`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from model.backbones import Backbone


class StageSplit(NamedTuple):
    """trunk: image (B, 3, S, S) -> map (B, c, S/stride, S/stride); tail: that map -> backbone map."""

    trunk: nn.Module
    tail: nn.Module
    stride: int
    channels: int


def _efficientnet_split(body: nn.Module, tail_stages: int) -> tuple[nn.Module, nn.Module] | None:
    blocks = list(body.blocks)
    if not 1 <= tail_stages < len(blocks):
        return None
    cut = len(blocks) - tail_stages
    trunk = nn.Sequential(body.conv_stem, body.bn1, *blocks[:cut])
    tail = nn.Sequential(*blocks[cut:], body.conv_head, body.bn2)
    return trunk, tail


def _resnet_split(body: nn.Module, tail_stages: int) -> tuple[nn.Module, nn.Module] | None:
    layers = [body.layer1, body.layer2, body.layer3, body.layer4]
    if not 1 <= tail_stages < len(layers):
        return None
    cut = len(layers) - tail_stages
    stem = [body.conv1, body.bn1, getattr(body, "act1", None) or body.relu, body.maxpool]
    return nn.Sequential(*stem, *layers[:cut]), nn.Sequential(*layers[cut:])


def split_backbone(backbone: Backbone, tail_stages: int = 2) -> StageSplit | None:
    """The backbone as trunk + tail with the last `tail_stages` stages in the tail; None when the
    body's layout is not one of the supported ones (training then runs the whole network)."""
    body = backbone.body
    if all(hasattr(body, name) for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        halves = _efficientnet_split(body, tail_stages)
    elif all(hasattr(body, f"layer{i}") for i in range(1, 5)):
        halves = _resnet_split(body, tail_stages)
    else:
        return None
    if halves is None:
        return None
    trunk, tail = halves
    probe_size = 64
    with torch.no_grad():
        was_training = trunk.training
        probe = trunk.eval()(torch.zeros(1, 3, probe_size, probe_size))
        trunk.train(was_training)
    return StageSplit(trunk, tail, stride=probe_size // probe.shape[-1], channels=int(probe.shape[1]))
