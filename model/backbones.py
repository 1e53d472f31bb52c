"""Backbones: CNNs that map an image batch (B, 3, H, W) to a non-negative map (B, C, h, w).

One registry, filled by `@register_backbone` and read only through `create_backbone`. Names
not registered fall through to any timm CNN. Weights come from an installed package (the
default lite0), a local file, or a hub download that happens only when asked for
(`pretrained=True` on a backbone without offline weights).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn

from model.config import Preprocessing
from model.pretrained import lite0_timm_state_dict

LOG = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# pretrained: False/None = random init; True = the backbone's default source; a path = local file.
Pretrained = bool | str | Path | None
BackboneFactory = Callable[[Pretrained], "Backbone"]

_REGISTRY: dict[str, BackboneFactory] = {}


class UnknownBackboneError(ValueError):
    """A backbone name that is neither registered nor a timm CNN."""


class Backbone(nn.Module):
    """A feature extractor with `num_features` output channels and its preprocessing."""

    def __init__(self, body: nn.Module, num_features: int, preprocessing: Preprocessing,
                 forward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.body = body
        self.num_features = num_features
        self.preprocessing = preprocessing
        self._forward_fn = forward_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w)."""
        return self._forward_fn(x) if self._forward_fn is not None else self.body(x)


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator adding a backbone constructor to the registry under `name`."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorate


def list_backbones() -> list[str]:
    """Registered backbone names (any timm CNN name works too)."""
    return sorted(_REGISTRY)


def create_backbone(name: str, pretrained: Pretrained = False) -> Backbone:
    """Build a backbone by name; raises `UnknownBackboneError` before building anything."""
    if name in _REGISTRY:
        return _REGISTRY[name](pretrained)
    if timm.is_model(name):
        return _timm_cnn(name, pretrained)
    raise UnknownBackboneError(
        f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}, "
        "or any timm CNN name (see timm.list_models())"
    )


def _load_local(module: nn.Module, path: str | Path) -> None:
    """Load weights from a local file; classifier keys the body lacks are ignored."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"weights file {path} lacks {len(missing)} backbone keys, e.g. {missing[:3]}")
    LOG.info("loaded %s (ignored %d keys: %s)", path, len(unexpected), unexpected[:3])


def _timm_preprocessing(model: nn.Module) -> Preprocessing:
    cfg = model.pretrained_cfg
    return Preprocessing(
        image_size=224,
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
    )


def _timm_backbone(model: nn.Module, preprocessing: Preprocessing | None = None) -> Backbone:
    return Backbone(model, model.num_features, preprocessing or _timm_preprocessing(model),
                    forward_fn=model.forward_features)


def _timm_cnn(name: str, pretrained: Pretrained) -> Backbone:
    hub = pretrained is True
    model = timm.create_model(name, pretrained=hub, num_classes=0, global_pool="")
    if isinstance(pretrained, str | Path):
        _load_local(model, pretrained)
    with torch.no_grad():
        probe = model.eval().forward_features(torch.zeros(1, 3, 64, 64))
    if probe.dim() != 4:
        raise UnknownBackboneError(f"{name!r} is not a CNN: its features have shape {tuple(probe.shape)}")
    return _timm_backbone(model.train())


def _remove_last_downsampling(model: nn.Module) -> None:
    """ResNet stage 4 at stride 1 (CGD): a 224 px input gives a 14 x 14 map instead of 7 x 7."""
    first = model.layer4[0]
    first.conv2.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)


def _resnet(name: str, pretrained: Pretrained) -> Backbone:
    backbone = _timm_cnn(name, pretrained)
    _remove_last_downsampling(backbone.body)
    return backbone


@register_backbone("tf_efficientnet_lite0")
def tf_efficientnet_lite0(pretrained: Pretrained = False) -> Backbone:
    """EfficientNet-Lite0 (1280 channels, 7 x 7 at 224 px); ImageNet weights ship offline."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained is True:
        model.load_state_dict(lite0_timm_state_dict(), strict=True)
    model.reset_classifier(0, "")
    if isinstance(pretrained, str | Path):
        _load_local(model, pretrained)
    return _timm_backbone(model, Preprocessing(interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3))


@register_backbone("resnet50")
def resnet50(pretrained: Pretrained = False) -> Backbone:
    """ResNet-50 with stage-4 downsampling removed (2048 channels, 14 x 14 at 224 px)."""
    return _resnet("resnet50", pretrained)


@register_backbone("seresnet50")
def seresnet50(pretrained: Pretrained = False) -> Backbone:
    """SE-ResNet-50 with stage-4 downsampling removed (2048 channels, 14 x 14 at 224 px)."""
    return _resnet("seresnet50", pretrained)


@register_backbone("shufflenet_v2")
def shufflenet_v2(pretrained: Pretrained = False) -> Backbone:
    """torchvision ShuffleNet-V2 x1.0 up to conv5 (1024 channels, 7 x 7 at 224 px)."""
    from torchvision.models import ShuffleNet_V2_X1_0_Weights, shufflenet_v2_x1_0

    net = shufflenet_v2_x1_0(weights=ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1 if pretrained is True else None)
    if isinstance(pretrained, str | Path):
        _load_local(net, pretrained)
    body = nn.Sequential(net.conv1, net.maxpool, net.stage2, net.stage3, net.stage4, net.conv5)
    return Backbone(body, 1024, Preprocessing(interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD))
