"""Checkpoints: one file with the weights, the model config, the class list, metrics and a version.

The version is a content hash of the config and the weights, so equal models have equal versions.
Files load with `torch.load(weights_only=True)`: only tensors and plain Python types inside.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.backbones import create_backbone
from model.cgd import CGD
from model.config import CGDConfig

FORMAT = "cgd-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable CGD checkpoint."""


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, with what was stored beside it."""

    model: CGD
    version: str
    classes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> CGDConfig:
        return self.model.config


def model_version(config: CGDConfig, state_dict: dict[str, torch.Tensor]) -> str:
    """12 hex digits of sha256 over the config and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def save_checkpoint(
    path: str | Path,
    model: CGD,
    *,
    classes: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write `model` atomically to `path` (temp file, fsync, rename); returns its version."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    version = model_version(model.config, state)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "config": model.config.to_dict(),
        "state_dict": state,
        "classes": list(classes or []),
        "metrics": dict(metrics or {}),
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return version


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw payload of a checkpoint file, checked for format and integrity."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a CGD checkpoint (no '{FORMAT}' header)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload.get('format_version')}, expected {FORMAT_VERSION}"
        )
    try:
        config = CGDConfig.from_dict(payload["config"])
        intact = model_version(config, payload["state_dict"]) == payload["version"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has a malformed header: {exc}") from exc
    if not intact:
        raise CheckpointError(f"{path} is corrupt: its content does not match its version hash")
    return payload


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model of a checkpoint (no pretrained weights are fetched); eval mode."""
    payload = read_checkpoint(path)
    config = CGDConfig.from_dict(payload["config"])
    model = CGD(config, create_backbone(config.backbone, pretrained=False))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match its own model config: {exc}") from exc
    return LoadedCheckpoint(
        model=model.to(map_location).eval(),
        version=payload["version"],
        classes=list(payload["classes"]),
        metrics=dict(payload["metrics"]),
        extra=dict(payload["extra"]),
    )
