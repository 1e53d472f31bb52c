"""ONNX export of the whole `CGD.forward` (whitening and all), once per model version, in a cache directory.

The export runs in a child process (`python -m model.onnx_export MODEL_FILE OUT`): it takes tens of
seconds of CPU, and a serving process keeps its interpreter free and its memory untouched meanwhile.
The graph has a dynamic batch dimension: input `images` (B, 3, S, S) float32, output `embedding`
(B, d) float32 unit rows.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from model.cgd import CGD

LOG = logging.getLogger(__name__)

EXPORT_TIMEOUT_S = 600.0
MAX_EXPORT_BATCH = 1024


class ExportError(RuntimeError):
    """The model could not be exported to ONNX."""


def onnx_path(cache_dir: Path, version: str) -> Path:
    """Where the ONNX file of model `version` is cached."""
    return cache_dir / f"{version}.onnx"


def export_onnx(model: CGD, path: Path) -> Path:
    """Export `model.forward` (float32, on the CPU, dynamic batch) to `path`, atomically; in this process."""
    size = model.config.image_size
    model = model.eval().float().cpu().to(memory_format=torch.contiguous_format)
    sample = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    program = torch.onnx.export(model, (sample,), input_names=["images"], output_names=["embedding"],
                                dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    program.save(str(partial))
    os.replace(partial, path)
    return path


def ensure_onnx(model: CGD, version: str, cache_dir: Path) -> Path:
    """The cached ONNX file of `version`, exported first in a child process when missing."""
    path = onnx_path(cache_dir, version)
    if path.is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        model_file = Path(tmp) / "model.pt"
        torch.save(model, model_file)
        done = subprocess.run([sys.executable, "-m", "model.onnx_export", str(model_file), str(path)],
                              capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S, check=False)
    if done.returncode != 0 or not path.is_file():
        raise ExportError(f"ONNX export of model {version} failed: {done.stderr.strip()[-2000:]}")
    LOG.info("exported model %s to %s in %.1f s", version, path, time.perf_counter() - started)
    return path


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: export the model pickled in MODEL_FILE to OUT."""
    parser = argparse.ArgumentParser(description="export a pickled CGD model to ONNX")
    parser.add_argument("model_file", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    model = torch.load(args.model_file, map_location="cpu", weights_only=False)
    export_onnx(model, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
