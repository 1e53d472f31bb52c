"""Device and numeric precision: CUDA when present, else CPU with channels_last and bf16 autocast."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Literal

import torch

LOG = logging.getLogger(__name__)

DeviceName = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class DeviceError(ValueError):
    """A device that was asked for but is not available."""


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when available, else the CPU; `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but CUDA is not available")
    if name != "cpu" and not name.startswith("cuda"):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when oneDNN has fast bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The autocast dtype: fp16 on CUDA, bf16 on CPUs that support it, else float32."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise DeviceError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Autocast to `dtype` on `device`; a no-op for float32."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def _fp32_convolution(conv: torch.nn.Conv2d, inputs: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", enabled=False):
        return type(conv).forward(conv, inputs.float())


@contextlib.contextmanager
def training_autocast(device: torch.device, dtype: torch.dtype, module: torch.nn.Module) -> Iterator[None]:
    """`autocast` for a training forward of `module`. On a CPU under bf16, its depthwise convolutions
    run in fp32: oneDNN's bf16 depthwise backward is slower than fp32 on CPUs without AMX, while the
    other layers gain from bf16 (a cached tail's step: 108.7 images/s, against 68.1 in plain bf16 and
    83.0 in fp32 on avx512_bf16 without AMX; docs/RESULTS.md). The backward follows the precision each
    layer's forward ran in."""
    if device.type != "cpu" or dtype != torch.bfloat16:
        with autocast(device, dtype):
            yield
        return
    depthwise = [conv for conv in module.modules() if isinstance(conv, torch.nn.Conv2d)
                 and conv.groups > 1 and conv.groups == conv.in_channels]
    for conv in depthwise:
        conv.forward = functools.partial(_fp32_convolution, conv)
    try:
        with autocast(device, dtype):
            yield
    finally:
        for conv in depthwise:
            del conv.forward
