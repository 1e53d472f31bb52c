"""Inference runtimes: every runtime installed here embeds real photos as torch fp32 does.

One ONNX export per module (the embedded default model with a learned whitening at the end, so the
whole `CGD.forward` is checked), made in a child process as the service makes it.
"""

from __future__ import annotations

import csv
import importlib.util
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import runtimes
from model.cgd import CGD
from model.default import default_model
from model.embedder import Embedder
from model.malloc import keep_freed_memory
from model.onnx_export import ensure_onnx, onnx_path
from model.runtime_select import Measurement, choose, select_engine
from model.runtimes import RuntimeUnavailable, TorchEngine, create_engine

CPU = torch.device("cpu")
MIN_COSINE = 0.999
PHOTOS = 8
VERSION = "whitened-default"


def _skip_unless_installed(name: str) -> None:
    package = {"onnxruntime": "onnxruntime", "openvino": "openvino"}.get(name)
    if package is not None and importlib.util.find_spec(package) is None:
        pytest.skip(f"runtime {name}: the {package!r} package is not installed")


@pytest.fixture(scope="module")
def engines_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def photos(caltech_dir: Path) -> list[Image.Image]:
    """`PHOTOS` real caltech101 photos of different classes."""
    chosen: dict[str, Path] = {}
    with (caltech_dir / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["label"] not in chosen and len(chosen) < PHOTOS:
                chosen[row["label"]] = caltech_dir / row["path"]
    return [Image.open(path).convert("RGB") for path in chosen.values()]


def _whitened_model() -> CGD:
    """The embedded default model followed by a learned whitening (a fixed random rotation and shift)."""
    model = default_model()
    dim = model.embedding_dim
    generator = torch.Generator().manual_seed(5)
    projection, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    model.set_whitening(torch.randn(dim, generator=generator) * 0.01, projection.float())
    return model


@pytest.fixture(scope="module")
def reference() -> Embedder:
    """The whitened default model on torch fp32."""
    return Embedder(_whitened_model(), VERSION, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def batch(reference: Embedder, photos: list[Image.Image]) -> torch.Tensor:
    return torch.stack([reference.preprocess(photo) for photo in photos])


@pytest.fixture(scope="module")
def onnx_file(engines_dir: Path) -> Path:
    """The one export of this module: the whole `CGD.forward`, whitening included."""
    pytest.importorskip("onnxscript", reason="onnxscript (torch.onnx's exporter) is not installed")
    return ensure_onnx(_whitened_model(), VERSION, engines_dir)


@pytest.mark.parametrize("name", runtimes.RUNTIMES)
def test_each_runtime_agrees_with_torch_fp32_on_real_photos(name, reference, batch, onnx_file):
    _skip_unless_installed(name)
    embedder = Embedder(_whitened_model(), VERSION, device="cpu", precision="fp32", runtime=name,
                        cache_dir=onnx_file.parent, threads=2)
    assert embedder.runtime == name and embedder.dim == reference.dim
    expected = reference.embed_tensors(batch)
    for rows in (batch, batch[:1], batch[:3]):  # the batch dimension is dynamic
        vectors = embedder.embed_tensors(rows)
        assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
        assert vectors.shape == (len(rows), reference.dim)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert (vectors * expected[:len(rows)]).sum(axis=1).min() >= MIN_COSINE


def test_the_export_carries_learned_whitening(batch, onnx_file):
    _skip_unless_installed("onnxruntime")
    vectors = create_engine("onnxruntime", default_model(), CPU, onnx_file=onnx_file, threads=2).run(batch)
    with torch.inference_mode():
        unwhitened = default_model()(batch).numpy()
    assert (vectors * unwhitened).sum(axis=1).max() < 0.9  # not the plain model's vectors


def test_auto_picks_the_fastest_agreeing_runtime_and_caches_the_choice(batch, onnx_file):
    engine, measurements = select_engine(_whitened_model(), VERSION, CPU, precision="fp32",
                                         cache_dir=onnx_file.parent, threads=2, samples=batch)
    by_name = {m.runtime: m for m in measurements}
    installed = {name for name in runtimes.RUNTIMES if runtimes.runtime_installed(name)}
    assert set(by_name) == installed
    chosen = by_name[engine.runtime]
    assert chosen.agrees and chosen.images_per_s == max(m.images_per_s for m in measurements if m.agrees)
    assert chosen.images_per_s >= by_name["torch"].images_per_s
    again, cached = select_engine(_whitened_model(), VERSION, CPU, precision="fp32",
                                  cache_dir=onnx_file.parent, threads=2, samples=batch)
    assert again.runtime == engine.runtime and cached == measurements


def test_choose_never_takes_a_disagreeing_or_slower_candidate():
    measurements = [Measurement("torch", 20.0, 1.0), Measurement("onnxruntime", 90.0, 0.99),
                    Measurement("openvino", 15.0, 0.9999)]
    assert choose(measurements).runtime == "torch"
    measurements.append(Measurement("other", 25.0, 0.9995))
    assert choose(measurements).runtime == "other"


def test_unknown_runtime_missing_package_and_impossible_precision_are_clear_errors(monkeypatch):
    model = default_model()
    with pytest.raises(RuntimeUnavailable, match="unknown runtime 'tensorflow'"):
        Embedder(model, "v", device="cpu", runtime="tensorflow")
    with pytest.raises(RuntimeUnavailable, match="cannot run precision 'fp16'"):
        create_engine("onnxruntime", model, CPU, precision="fp16", onnx_file=Path("unused.onnx"))
    monkeypatch.setitem(runtimes._PACKAGES, "openvino", "cgd_no_such_package")
    with pytest.raises(RuntimeUnavailable, match="'cgd_no_such_package' package is not installed"):
        create_engine("openvino", model, CPU, onnx_file=Path("unused.onnx"))
    assert not runtimes.runtime_installed("openvino")


def test_torch_engine_keeps_fp32_here_and_the_onnx_cache_is_per_version(tmp_path):
    engine = TorchEngine(default_model(), CPU, "fp32")
    assert engine.runtime == "torch" and engine.dtype == torch.float32
    assert onnx_path(tmp_path, "abc") == tmp_path / "abc.onnx"


def test_malloc_tuning_applies_on_glibc():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not a glibc system: the tuning is a no-op")
    assert keep_freed_memory()
