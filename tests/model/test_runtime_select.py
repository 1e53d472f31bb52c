"""Runtime choice reuse: a new version of a measured architecture takes the choice measured for it,
checked for agreement on the new model only; a choice that cannot serve here is measured again.

Two versions of the embedded default model at 64 px (the second's weights moved by N(0, 1e-3)), each
exported once; the first is measured on real photos by `select_engine`, as the service's auto does.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.default import DEFAULT_CONFIG
from model.embedder import Embedder
from model.onnx_export import export_onnx, onnx_path
from model.runtime_select import (
    MIN_COSINE,
    RuntimeChoice,
    architecture_key,
    architecture_path,
    read_choice,
    select_engine,
)
from model.runtimes import TorchEngine

CPU = torch.device("cpu")
THREADS = 2
MEASURED, NEW = "measured-version", "new-version"


@pytest.fixture(scope="module", autouse=True)
def _onnx_runtime() -> None:
    if importlib.util.find_spec("onnxscript") is None:
        pytest.skip("onnxscript (torch.onnx's exporter) is not installed: auto has torch alone")


@pytest.fixture(scope="module")
def images(caltech_dir: Path, small_model) -> torch.Tensor:
    """8 real photos as the models' input."""
    from PIL import Image

    with (caltech_dir / "labels.csv").open(newline="") as handle:
        rows = [row for _, row in zip(range(8), csv.DictReader(handle), strict=False)]
    embedder = Embedder(small_model(), MEASURED, device="cpu", precision="fp32")
    photos = [Image.open(caltech_dir / row["path"]).convert("RGB") for row in rows]
    return embedder.model_input(torch.stack([embedder.preprocess(photo) for photo in photos]))


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory, images: torch.Tensor,
             small_model) -> tuple[Path, RuntimeChoice]:
    """An engine cache in which the first version was measured, and the second version's export."""
    cache = tmp_path_factory.mktemp("engines")
    _, choice = select_engine(small_model(), MEASURED, CPU, cache_dir=cache, threads=THREADS,
                              samples=lambda: (images, "gallery"))
    export_onnx(small_model(seed=1), onnx_path(cache, NEW), NEW)  # what a training job leaves
    return cache, choice


def _cache_copy(measured: tuple[Path, RuntimeChoice], tmp_path: Path) -> Path:
    cache = tmp_path / "engines"
    shutil.copytree(measured[0], cache)
    return cache


def test_the_architecture_key_ignores_what_fine_tuning_changes():
    config = DEFAULT_CONFIG
    tuned = config.with_changes(num_classes=12, whitening=True, qe_n=2, dba_n=3, gem_p=4.0)
    assert architecture_key(tuned) == architecture_key(config)
    others = [config.with_changes(backbone="resnet50"), config.with_changes(descriptors="GS"),
              config.with_changes(embedding_dim=768), config.with_changes(scales=(1.0, 0.707)),
              config.with_changes(preprocessing=replace(config.preprocessing, image_size=160))]
    assert len({architecture_key(other) for other in [config, *others]}) == 1 + len(others)


def test_a_new_version_reuses_the_choice_measured_for_its_architecture(measured, tmp_path, images,
                                                                        small_model):
    cache = _cache_copy(measured, tmp_path)
    first = measured[1]
    assert first.reused_from is None
    assert json.loads(architecture_path(cache, small_model().config, CPU, THREADS, "auto").read_text())[
        "version"] == MEASURED
    calls = []

    def samples() -> tuple[torch.Tensor, str]:
        calls.append(1)
        return images, "gallery"

    engine, choice = select_engine(small_model(seed=1), NEW, CPU, cache_dir=cache, threads=THREADS,
                                   samples=samples)
    assert choice.reused_from == MEASURED and (choice.images, choice.source) == (len(images), "gallery")
    assert [m.images_per_s for m in choice.measurements] == [m.images_per_s for m in first.measurements]
    served = next(m for m in choice.measurements if m.name == choice.name)
    assert served.agrees  # checked on the new model
    assert all(not m.agrees for m in choice.measurements if m.images_per_s > served.images_per_s)
    assert (engine.runtime, engine.precision) == (choice.runtime, choice.precision)
    vectors = engine.run(images)
    reference = TorchEngine(small_model(seed=1), CPU, "fp32").run(images)
    assert (vectors * reference).sum(axis=1).min() >= MIN_COSINE
    assert read_choice(cache, NEW, CPU, THREADS, "auto") == choice
    assert f"for model {MEASURED} of the same architecture" in choice.why()
    assert len(calls) == 1


def test_a_reused_choice_that_cannot_serve_here_is_measured_again(measured, tmp_path, images, small_model):
    """The measured version's choice names only a runtime this machine cannot run (as if measured where
    another package was installed): the new version is measured itself."""
    cache = _cache_copy(measured, tmp_path)
    choice_file = next(cache.glob(f"{MEASURED}.*.auto.runtime.json"))
    stored = json.loads(choice_file.read_text())
    stored.update(runtime="tensorrt", precision="fp16",
                  measurements=[{"runtime": "tensorrt", "precision": "fp16", "images_per_s": 1e6,
                                 "min_cosine": 1.0}])
    choice_file.write_text(json.dumps(stored))
    _, choice = select_engine(small_model(seed=1), NEW, CPU, cache_dir=cache, threads=THREADS,
                              samples=lambda: (images, "gallery"))
    assert choice.reused_from is None
    assert {m.name for m in choice.measurements} == {m.name for m in measured[1].measurements}
    assert json.loads(architecture_path(cache, small_model().config, CPU, THREADS, "auto").read_text())[
        "version"] == NEW
    assert onnx_path(cache, NEW).is_file()
