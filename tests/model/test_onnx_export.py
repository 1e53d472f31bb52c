"""ONNX exports beside a checkpoint: a loader takes a matching one into its cache instead of exporting,
and leaves a stale or missing one aside (it then exports the model itself, as before).

One export is made here as the service's training child makes it (`export_onnx` beside the checkpoint);
the stale case costs a second, made by `ensure_onnx` in its child process.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.checkpoint import load_checkpoint, save_checkpoint
from model.embedder import Embedder
from model.onnx_export import adopt_onnx, export_onnx, export_path, exported_version, onnx_path

MIN_COSINE = 0.999


@pytest.fixture(scope="module", autouse=True)
def _onnx_runtime() -> None:
    for package in ("onnxscript", "onnxruntime"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed: no ONNX export is served")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, small_model) -> Path:
    """A checkpoint with its ONNX file exported beside it, as a training job leaves them."""
    checkpoint = tmp_path_factory.mktemp("job") / "job.pt"
    save_checkpoint(checkpoint, small_model())
    loaded = load_checkpoint(checkpoint)
    export_onnx(loaded.model, export_path(checkpoint), loaded.version)
    return checkpoint


@pytest.fixture(scope="module")
def photos(caltech_dir: Path) -> list[Image.Image]:
    with (caltech_dir / "labels.csv").open(newline="") as handle:
        rows = [row for _, row in zip(range(4), csv.DictReader(handle), strict=False)]
    return [Image.open(caltech_dir / row["path"]).convert("RGB") for row in rows]


def _agrees_with_torch(embedder: Embedder, checkpoint: Path, photos: list[Image.Image]) -> bool:
    reference = Embedder.load(checkpoint, device="cpu", precision="fp32")
    cosines = (embedder.embed_images(photos) * reference.embed_images(photos)).sum(axis=1)
    return bool(cosines.min() >= MIN_COSINE)


def test_the_export_names_the_version_it_was_made_from(trained):
    assert export_path(trained) == trained.with_name("job.onnx")
    assert exported_version(export_path(trained)) == load_checkpoint(trained).version


def test_loading_a_checkpoint_takes_the_export_beside_it(trained, tmp_path, photos):
    cache = tmp_path / "engines"
    embedder = Embedder.load(trained, device="cpu", precision="fp32", runtime="onnxruntime", cache_dir=cache,
                             threads=2)
    cached = onnx_path(cache, embedder.version)
    assert os.path.samefile(cached, export_path(trained))  # linked, not exported again
    assert embedder.runtime == "onnxruntime" and _agrees_with_torch(embedder, trained, photos)


def test_a_stale_export_is_left_aside_and_the_model_exported_again(trained, tmp_path, photos, small_model):
    """An export beside a checkpoint of another model (here: another model's file copied there) is not
    used: the loader exports this model itself and serves its vectors."""
    checkpoint = tmp_path / "other.pt"
    save_checkpoint(checkpoint, small_model(seed=1))
    shutil.copyfile(export_path(trained), export_path(checkpoint))
    version = load_checkpoint(checkpoint).version
    cache = tmp_path / "engines"
    assert not adopt_onnx(export_path(checkpoint), version, cache)
    assert not onnx_path(cache, version).exists()
    embedder = Embedder.load(checkpoint, device="cpu", precision="fp32", runtime="onnxruntime",
                             cache_dir=cache, threads=2)
    cached = onnx_path(cache, version)
    assert not os.path.samefile(cached, export_path(checkpoint)) and exported_version(cached) == version
    assert _agrees_with_torch(embedder, checkpoint, photos)


def test_a_missing_or_unreadable_export_is_not_taken(trained, tmp_path):
    version = load_checkpoint(trained).version
    cache = tmp_path / "engines"
    assert not adopt_onnx(tmp_path / "missing.onnx", version, cache)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    assert exported_version(garbage) is None
    assert not adopt_onnx(garbage, version, cache)
    assert not cache.exists() or not any(cache.iterdir())
