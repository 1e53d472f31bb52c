"""Fixtures of the model tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import torch

from model.cgd import CGD
from model.default import DEFAULT_CONFIG, default_model

SmallModel = Callable[..., CGD]


def small_default_model(size: int = 64, seed: int | None = None) -> CGD:
    """The embedded default model at `size` px (the same graph as at 224, cheaper to run); with `seed`,
    its weights moved by N(0, 1e-3): another version with sensible vectors."""
    model = default_model(DEFAULT_CONFIG.with_changes(
        preprocessing=replace(DEFAULT_CONFIG.preprocessing, image_size=size)))
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 1e-3)
    return model


@pytest.fixture(scope="session")
def small_model() -> SmallModel:
    """`small_model(size=64, seed=None) -> CGD`: the embedded default model at a small input size."""
    return small_default_model
