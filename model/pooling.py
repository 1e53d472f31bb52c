"""Global descriptors: SPoC (average), MAC (max) and GeM (generalised mean) pooling.

Each maps a non-negative feature map (B, C, H, W) to (B, C). Functional twins come first.
"""

from __future__ import annotations

import torch
from torch import nn


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooled convolutional features (average pooling): (B, C, H, W) -> (B, C)."""
    return x.mean(dim=(-2, -1))


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activations of convolutions (max pooling): (B, C, H, W) -> (B, C)."""
    return x.amax(dim=(-2, -1))


def gem(x: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean pooling ((1/|X|) sum x^p)^(1/p), x clamped at eps: (B,C,H,W) -> (B,C).

    A mean over the spatial dimensions (not an `avg_pool2d` whose kernel is the input's shape),
    so that the graph exports to ONNX.
    """
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class SPoC(nn.Module):
    """Average pooling (GeM with p = 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spoc(x)


class MAC(nn.Module):
    """Max pooling (GeM with p -> infinity)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mac(x)


class GeM(nn.Module):
    """GeM pooling (Radenovic et al., TPAMI 2018); `p` is learnable when `learn_p` is set."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = False) -> None:
        super().__init__()
        self.eps = eps
        p_tensor = torch.tensor(float(p))
        if learn_p:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={float(self.p):.2f}, eps={self.eps}"


def create_pool(letter: str, *, gem_p: float = 3.0, learn_gem_p: bool = False) -> nn.Module:
    """The pooling module for one descriptor letter: S, M or G."""
    if letter == "S":
        return SPoC()
    if letter == "M":
        return MAC()
    if letter == "G":
        return GeM(p=gem_p, learn_p=learn_gem_p)
    raise ValueError(f"unknown descriptor letter {letter!r}; expected S, M or G")
