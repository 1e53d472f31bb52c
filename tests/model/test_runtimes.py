"""Inference runtimes: every runtime installed here embeds real photos as torch fp32 does.

One ONNX export per module (the embedded default model at 64 px, the graph it has at 224 and cheaper to
run, with a learned whitening at the end, so the whole `CGD.forward` is checked), made in a child process
as the service makes it.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import platform
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import runtimes
from model.cgd import CGD
from model.default import default_model
from model.device import cpu_supports_bf16
from model.embedder import Embedder
from model.malloc import keep_freed_memory
from model.onnx_export import ensure_onnx, onnx_path
from model.quantize import int8_path
from model.runtime_select import Measurement, candidates, choose, read_choice, select_engine
from model.runtimes import RuntimeUnavailable, TorchEngine, check_runtime, create_engine
from model.sample_images import SAMPLE_DIR, sample_images
from tests.model.conftest import small_default_model
from tests.without_packages import run_without

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
    """The embedded default model at 64 px followed by a learned whitening (a fixed random rotation and
    shift)."""
    model = small_default_model()
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
    return reference.model_input(torch.stack([reference.preprocess(photo) for photo in photos]))


@pytest.fixture(scope="module")
def onnx_file(engines_dir: Path) -> Path:
    """The one export of this module: the whole `CGD.forward`, whitening included."""
    pytest.importorskip("onnxscript", reason="onnxscript (torch.onnx's exporter) is not installed")
    return ensure_onnx(_whitened_model(), VERSION, engines_dir)


@pytest.mark.parametrize("name", [name for name in runtimes.RUNTIMES if runtimes.precisions(name, CPU)])
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
        unwhitened = small_default_model()(batch).numpy()
    assert (vectors * unwhitened).sum(axis=1).max() < 0.9  # not the plain model's vectors


def test_auto_picks_the_fastest_agreeing_runtime_and_caches_the_choice(batch, onnx_file):
    calls = []

    def samples() -> tuple[torch.Tensor, str]:
        calls.append(1)
        return batch, "gallery"

    engine, choice = select_engine(_whitened_model(), VERSION, CPU, precision="auto",
                                   cache_dir=onnx_file.parent, threads=2, samples=samples)
    by_name = {m.name: m for m in choice.measurements}
    assert set(by_name) == {runtime if precision == "fp32" else f"{runtime}-{precision}"
                            for runtime, precision in candidates(CPU, "auto")}
    chosen = by_name[engine.runtime if engine.precision == "fp32" else f"{engine.runtime}-{engine.precision}"]
    assert (choice.runtime, choice.precision) == (engine.runtime, engine.precision)
    fastest = max(m.images_per_s for m in choice.measurements if m.agrees)
    assert chosen.agrees and chosen.images_per_s == fastest
    assert chosen.images_per_s >= by_name["torch"].images_per_s
    assert (choice.images, choice.source) == (len(batch), "gallery") and chosen.name in choice.why()
    assert read_choice(onnx_file.parent, VERSION, CPU, 2, "auto") == choice
    again, cached = select_engine(_whitened_model(), VERSION, CPU, precision="auto",
                                  cache_dir=onnx_file.parent, threads=2, samples=samples)
    assert (again.runtime, again.precision) == (engine.runtime, engine.precision) and cached == choice
    assert len(calls) == 1  # the cached choice reads no images


def test_auto_measures_on_the_shipped_photos_until_the_gallery_has_images(onnx_file, tmp_path, photos):
    """No gallery images (`samples` gives none): the package's own photos, real images, are used; the
    next start that has gallery images measures again on those."""
    cache = tmp_path / "engines"
    cache.mkdir()
    shutil.copy(onnx_file, cache / onnx_file.name)
    options = {"device": "cpu", "precision": "fp32", "runtime": "auto", "cache_dir": cache, "threads": 2}
    embedder = Embedder(_whitened_model(), VERSION, samples=lambda: [], **options)
    assert embedder.choice is not None and embedder.choice.source == "shipped sample"
    assert embedder.choice.images == len(sample_images()) >= 8
    assert all(m.min_cosine >= MIN_COSINE for m in embedder.choice.measurements if m.agrees)
    again = Embedder(_whitened_model(), VERSION, samples=lambda: photos, **options)
    assert (again.choice.source, again.choice.images) == ("gallery", len(photos))
    assert read_choice(cache, VERSION, CPU, 2, "fp32") == again.choice


def test_the_shipped_photos_are_real_distinct_images_with_a_licence():
    images = sample_images()
    assert all(image.mode == "RGB" and min(image.size) >= 224 for image in images)
    pixels = [np.asarray(image.resize((32, 32)), dtype=np.float32) for image in images]
    assert min(np.abs(a - b).mean() for i, a in enumerate(pixels) for b in pixels[i + 1:]) > 5
    licence = (SAMPLE_DIR / "LICENSE.txt").read_text()
    assert all(path.name in licence for path in SAMPLE_DIR.glob("*.jpg"))


def test_choose_never_takes_a_disagreeing_or_slower_candidate():
    measurements = [Measurement("torch", 20.0, 1.0), Measurement("onnxruntime", 90.0, 0.99),
                    Measurement("openvino", 15.0, 0.9999)]
    assert choose(measurements).runtime == "torch"
    measurements.append(Measurement("other", 25.0, 0.9995))
    assert choose(measurements).runtime == "other"


def test_unknown_runtime_and_impossible_precision_are_clear_errors():
    model = default_model()
    with pytest.raises(RuntimeUnavailable, match="unknown runtime 'tensorflow'"):
        Embedder(model, "v", device="cpu", runtime="tensorflow")
    with pytest.raises(RuntimeUnavailable, match="cannot run precision 'fp16'"):
        create_engine("onnxruntime", model, CPU, precision="fp16", onnx_file=Path("unused.onnx"))
    with pytest.raises(RuntimeUnavailable, match="'torch' cannot run precision 'int8'"):
        Embedder(model, "v", device="cpu", runtime="torch", precision="int8")
    with pytest.raises(RuntimeUnavailable, match="unknown precision 'int4'"):
        check_runtime("torch", CPU, "int4")


def test_cuda_runtimes_asked_for_without_a_gpu_are_clear_errors(onnx_file):
    """The CUDA branches that run on a CPU-only machine: each refuses with the reason, before any work."""
    cuda = torch.device("cuda")
    with pytest.raises(RuntimeUnavailable, match="'tensorrt' needs a CUDA device, and the model runs on cpu"):
        Embedder(default_model(), "v", device="cpu", runtime="tensorrt")
    with pytest.raises(RuntimeUnavailable, match="'openvino' cannot run on cuda"):
        check_runtime("openvino", cuda, "auto")
    assert runtimes.resolve_runtime_precision("torch", cuda, "auto") == "fp16"
    assert runtimes.resolve_runtime_precision("tensorrt", cuda, "auto") == "fp16"
    _skip_unless_installed("onnxruntime")
    if "CUDAExecutionProvider" in importlib.import_module("onnxruntime").get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(RuntimeUnavailable, match="on CUDA needs the onnxruntime-gpu package"):
        create_engine("onnxruntime", default_model(), cuda, onnx_file=onnx_file)
    with pytest.raises(RuntimeUnavailable, match="'tensorrt' needs onnxruntime-gpu with the TensorRT"):
        create_engine("tensorrt", default_model(), cuda, onnx_file=onnx_file)


def test_cuda_graphs_cover_every_batch_size_with_few_captures():
    assert [runtimes.graph_batch(n) for n in (1, 2, 3, 4, 5, 8, 9, 32, 33)] == [1, 2, 4, 4, 8, 8, 16, 32, 64]


def test_auto_measures_fp32_and_native_reduced_precisions_never_int8():
    pairs = candidates(CPU, "auto")
    assert ("torch", "fp32") in pairs and all(precision != "int8" for _, precision in pairs)
    assert (("torch", "bf16") in pairs) == cpu_supports_bf16()
    assert not [pair for pair in pairs if pair[0] == "tensorrt"]  # CUDA only
    assert candidates(CPU, "int8") == []
    assert all(precision == "fp32" for _, precision in candidates(CPU, "fp32"))


def test_int8_only_on_request_close_to_fp32_on_real_photos(reference, batch, onnx_file):
    """`precision=int8` with `runtime=auto` is onnxruntime's static quantization, calibrated here on the
    photos themselves; its vectors stay close to fp32 (the retrieval cost is in docs/BENCHMARKS.md)."""
    _skip_unless_installed("onnxruntime")
    embedder = Embedder(_whitened_model(), VERSION, device="cpu", precision="int8", runtime="auto",
                        cache_dir=onnx_file.parent, threads=2, calibration=batch)
    assert (embedder.runtime, embedder.dtype) == ("onnxruntime", torch.int8)
    assert int8_path(onnx_file.parent, VERSION).is_file()
    vectors, expected = embedder.embed_tensors(batch), reference.embed_tensors(batch)
    assert vectors.shape == expected.shape and vectors.dtype == np.float32
    cosine = (vectors * expected).sum(axis=1)
    assert cosine.min() >= 0.9
    assert (vectors @ vectors.T).argmax(axis=1).tolist() == list(range(len(batch)))


def test_a_missing_runtime_package_is_skipped_by_auto_and_an_error_by_name(onnx_file, tmp_path):
    """In a process where the openvino package cannot be imported (blocked, as if not installed)."""
    cache = tmp_path / "engines"
    cache.mkdir()
    shutil.copy(onnx_file, cache / onnx_file.name)  # the export is reused; nothing is measured yet
    code = f"""
import json, torch
from pathlib import Path
from model.embedder import Embedder
from model.runtimes import RuntimeUnavailable
from tests.model.test_runtimes import _whitened_model
try:
    import openvino
    imported = True
except ImportError:
    imported = False
try:
    Embedder(_whitened_model(), {VERSION!r}, device="cpu", runtime="openvino", cache_dir=Path({str(cache)!r}))
    named = "no error"
except RuntimeUnavailable as exc:
    named = str(exc)
auto = Embedder(_whitened_model(), {VERSION!r}, device="cpu", runtime="auto", precision="fp32",
                cache_dir=Path({str(cache)!r}), threads=2)
print(json.dumps({{"imported": imported, "named": named, "chosen": auto.runtime,
                  "measured": [m.name for m in auto.choice.measurements]}}))
"""
    done = run_without(["openvino"], ["-c", code], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["imported"] is False
    assert "runtime 'openvino' asked for but the 'openvino' package is not installed" in result["named"]
    expected = {runtime for runtime, _ in candidates(CPU, "fp32")} - {"openvino"}
    assert set(result["measured"]) == expected and result["chosen"] in expected


def test_torch_engine_keeps_fp32_here_and_the_onnx_cache_is_per_version(tmp_path):
    engine = TorchEngine(default_model(), CPU, "fp32")
    assert engine.runtime == "torch" and engine.dtype == torch.float32
    assert onnx_path(tmp_path, "abc") == tmp_path / "abc.onnx"


def test_malloc_tuning_applies_on_glibc():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not a glibc system: the tuning is a no-op")
    assert keep_freed_memory()
