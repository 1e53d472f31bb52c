"""ONNX export of the whole `CGD.forward` (whitening and all), once per model version, in a cache directory.

The export takes tens of seconds of CPU. A process that trains a model exports it beside its
checkpoint (`export_path`, e.g. the service's training child at nice 10), and a process that loads that
checkpoint takes the file into its cache (`adopt_onnx`) instead of exporting again. Otherwise
`ensure_onnx` exports in a child process at nice `EXPORT_NICE` (`python -m model.onnx_export MODEL_FILE
OUT VERSION`): a serving process keeps its interpreter free, its memory untouched, and its CPU first.
Every file carries the version of the model it was exported from (metadata `cgd_version`), so an
export beside a checkpoint that no longer matches it is not used. The graph has a dynamic batch
dimension: input `images` (B, 3, S, S) float32, output `embedding` (B, d) float32 unit rows. BatchNorm
is folded into the convolutions before the export (`model.bn_fold`, as the torch engine does; ONNX
Runtime and OpenVINO fuse it anyway): the exporter then has no BatchNorm to decompose, the slowest part
of exporting the default model.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from model.bn_fold import fold_batchnorm
from model.cgd import CGD

LOG = logging.getLogger(__name__)

EXPORT_TIMEOUT_S = 600.0
EXPORT_NICE = 10  # niceness added to `ensure_onnx`'s child: serving work takes the CPU first
MAX_EXPORT_BATCH = 1024
VERSION_KEY = "cgd_version"  # the ONNX metadata entry naming the model version exported


class ExportError(RuntimeError):
    """The model could not be exported to ONNX."""


def onnx_path(cache_dir: Path, version: str) -> Path:
    """Where the ONNX file of model `version` is cached."""
    return cache_dir / f"{version}.onnx"


def export_path(checkpoint: Path) -> Path:
    """Where the ONNX file exported with `checkpoint` lies: beside it, `<name>.onnx`."""
    return checkpoint.with_suffix(".onnx")


def export_onnx(model: CGD, path: Path, version: str) -> Path:
    """Export `model.forward` (float32, on the CPU, dynamic batch) to `path`, atomically, stamped with
    `version`; in this process."""
    size = model.config.image_size
    model = model.eval().float().cpu().to(memory_format=torch.contiguous_format)
    sample = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = fold_batchnorm(model, sample)  # the same vectors, and no BatchNorm left to decompose
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    program = torch.onnx.export(model, (sample,), input_names=["images"], output_names=["embedding"],
                                dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    program.model.metadata_props[VERSION_KEY] = version
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    program.save(str(partial))
    os.replace(partial, path)
    return path


def exported_version(path: Path) -> str | None:
    """The model version an ONNX file was exported from (None: unreadable, or exported without one)."""
    try:  # installed with torch.onnx's exporter, which wrote the file
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        return None
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError) as exc:
        LOG.warning("cannot read the ONNX file %s: %s", path, exc)
        return None
    return next((entry.value for entry in graph.metadata_props if entry.key == VERSION_KEY), None)


def adopt_onnx(exported: Path, version: str, cache_dir: Path) -> bool:
    """Put `exported` (an export made elsewhere, e.g. beside a checkpoint) in the cache as the ONNX file
    of `version`, linked or copied; True when the cache has that file now. A missing file, or one
    exported from another model (stale), is left out: `ensure_onnx` then exports as usual."""
    path = onnx_path(cache_dir, version)
    if path.is_file():
        return True
    if not exported.is_file():
        return False
    stamped = exported_version(exported)
    if stamped != version:
        LOG.warning("not using %s: it was exported from model %s, not %s", exported, stamped, version)
        return False
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    try:
        os.link(exported, partial)
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(exported, partial)
    os.replace(partial, path)
    LOG.info("model %s: using the ONNX file exported with its checkpoint (%s)", version, exported)
    return True


def ensure_onnx(model: CGD, version: str, cache_dir: Path) -> Path:
    """The cached ONNX file of `version`, exported first in a child process at nice `EXPORT_NICE` when
    missing."""
    path = onnx_path(cache_dir, version)
    if path.is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        model_file = Path(tmp) / "model.pt"
        torch.save(model, model_file)
        command = [sys.executable, "-m", "model.onnx_export", str(model_file), str(path), version]
        done = subprocess.run(command, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S, check=False)
    if done.returncode != 0 or not path.is_file():
        raise ExportError(f"ONNX export of model {version} failed: {done.stderr.strip()[-2000:]}")
    LOG.info("exported model %s to %s in %.1f s", version, path, time.perf_counter() - started)
    return path


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: export the model pickled in MODEL_FILE to OUT, stamped VERSION, at nice
    `EXPORT_NICE`."""
    parser = argparse.ArgumentParser(description="export a pickled CGD model to ONNX")
    parser.add_argument("model_file", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("version")
    args = parser.parse_args(argv)
    os.nice(EXPORT_NICE)
    model = torch.load(args.model_file, map_location="cpu", weights_only=False)
    export_onnx(model, args.out, args.version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
