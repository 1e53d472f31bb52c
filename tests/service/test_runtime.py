"""The service serves through the inference runtime it chose (CGD_RUNTIME), named in /ready, /metrics and
`cgd info`.

One data directory for the whole module: the first app (auto) exports the default model to ONNX and
measures the runtimes; the next ones reuse the export and the choice from `<data_dir>/engines`.
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image

from model.embedder import Embedder
from model.sample_images import sample_images
from service.runtime import ENGINE_DIR, gallery_samples
from tests.without_packages import run_without

MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("onnxscript") is None:
        pytest.skip("onnxscript (torch.onnx's exporter) is not installed: no ONNX runtime can be served")
    return tmp_path_factory.mktemp("runtime-data")


def _embed(client, photos) -> np.ndarray:
    files = [("files", (photo.name, photo.data)) for photo in photos]
    response = client.post("/embed", files=files)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"], dtype=np.float32)


def _runtime_gauge(client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("cgd_inference_runtime{")}


def test_auto_serves_through_the_runtime_it_measured_fastest(open_app, data_dir, caltech_photos):
    with open_app(data_dir, runtime="auto") as client:
        ready = client.get("/ready").json()
        vectors = _embed(client, caltech_photos[:4])
        gauge = _runtime_gauge(client)
    (choice_file,) = (data_dir / ENGINE_DIR).glob(f"{ready['model_version']}.*.runtime.json")
    choice = json.loads(choice_file.read_text())
    assert ready["runtime"] == choice["runtime"]
    assert gauge[choice["runtime"]] == 1.0 and sum(gauge.values()) == 1.0
    fastest = max((m for m in choice["measurements"] if m["min_cosine"] >= MIN_COSINE),
                  key=lambda m: m["images_per_s"])
    assert fastest["runtime"] == choice["runtime"]
    shown = ready["runtime_choice"]  # an empty gallery: measured on the photos shipped with the package
    assert (shown["runtime"], shown["precision"]) == (choice["runtime"], choice["precision"])
    assert (shown["source"], shown["images"]) == ("shipped sample", len(sample_images()))
    assert [m["images_per_s"] for m in shown["measurements"]] == [m["images_per_s"]
                                                                  for m in choice["measurements"]]
    assert shown["why"].startswith(fastest["runtime"]) and "the fastest candidate that agrees" in shown["why"]
    reference = Embedder.load(None, device="cpu", precision="fp32")
    images = [Image.open(io.BytesIO(photo.data)).convert("RGB") for photo in caltech_photos[:4]]
    assert (vectors * reference.embed_images(images)).sum(axis=1).min() >= MIN_COSINE


def test_cgd_info_shows_the_choice_the_service_cached(open_app, data_dir):
    with open_app(data_dir, runtime="auto") as client:
        shown = client.get("/ready").json()["runtime_choice"]
    cgd = Path(sys.executable).with_name("cgd")
    done = subprocess.run([str(cgd), "info", "--data-dir", str(data_dir)], capture_output=True, text=True,
                          timeout=300, check=False, env={"PATH": "/usr/bin:/bin", "CGD_DEVICE": "cpu"})
    assert done.returncode == 0, done.stderr
    runtime = json.loads(done.stdout)["runtime"]
    assert runtime["setting"] == "auto" and runtime["choice"] == shown
    assert set(runtime["cpu_flags"]) >= {"avx2", "avx512_bf16", "amx_bf16"}


def test_auto_measures_on_the_gallery_images_when_there_are_some(open_app, tmp_path, caltech_photos):
    with open_app(tmp_path / "data") as client:
        files = [("files", (photo.name, photo.data)) for photo in caltech_photos[:3]]
        assert client.post("/gallery", files=files).status_code == 201
        images = gallery_samples(client.app.state.runtime.gateway.gallery)
    expected = [Image.open(io.BytesIO(photo.data)).convert("RGB") for photo in caltech_photos[:3]]
    assert [np.asarray(image).tolist() == np.asarray(photo).tolist()
            for image, photo in zip(images, expected, strict=True)] == [True] * 3


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_a_runtime_named_in_the_settings_serves(open_app, data_dir, caltech_photos, name):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"the {name!r} package is not installed")
    with open_app(data_dir, runtime=name) as client:
        ready = client.get("/ready").json()
        assert ready["runtime"] == name and ready["runtime_choice"] is None  # named: nothing measured
        vectors = _embed(client, caltech_photos[:2])
        assert _runtime_gauge(client)[name] == 1.0
    with open_app(data_dir, runtime="torch") as client:
        assert client.get("/ready").json()["runtime"] == "torch"
        assert (vectors * _embed(client, caltech_photos[:2])).sum(axis=1).min() >= MIN_COSINE


def test_an_unknown_runtime_is_refused_at_start_up(make_settings, tmp_path):
    with pytest.raises(pydantic.ValidationError, match="runtime"):
        make_settings(tmp_path, runtime="tensorflow")


# (packages blocked, environment, what `cgd serve` says): a runtime/precision pair that cannot run here
REFUSALS = [
    (("onnxruntime",), {"CGD_RUNTIME": "onnxruntime"},
     "runtime 'onnxruntime' asked for but the 'onnxruntime' package is not installed"),
    (("openvino",), {"CGD_RUNTIME": "openvino"},
     "runtime 'openvino' asked for but the 'openvino' package is not installed"),
    (("onnxruntime",), {"CGD_PRECISION": "int8"},
     "runtime 'onnxruntime' asked for but the 'onnxruntime' package is not installed"),
    ((), {"CGD_RUNTIME": "tensorrt"}, "runtime 'tensorrt' needs a CUDA device, and the model runs on cpu"),
    ((), {"CGD_RUNTIME": "torch", "CGD_PRECISION": "int8"}, "runtime 'torch' cannot run precision 'int8'"),
]
# Runs `cgd serve` (the console script's `main`) once per case given as JSON [[data dir, env], ...] in
# one process; prints [[exit code, stderr], ...]. The import of the service, most of a refused start's
# time, is made once per process.
SERVE_EACH = """
import contextlib, io, json, os, sys
from service.cli import main
results = []
for data_dir, env in json.loads(sys.argv[1]):
    os.environ.update(env)
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        code = main(["serve", "--data-dir", data_dir, "--port", "0"])
    results.append([code, stderr.getvalue()])
    for name in env:
        del os.environ[name]
print(json.dumps(results))
"""


def _refused_here(case: int) -> bool:
    """Whether case `case` of `REFUSALS` is refused on this machine (tensorrt runs where there is a GPU)."""
    return not (torch.cuda.is_available() and "tensorrt" in REFUSALS[case][2])


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[int, str, Path]]:
    """`cgd serve`'s exit code, stderr and data directory for each case of `REFUSALS` refused here, by
    position; the cases that block the same packages run one after another in one process (`SERVE_EACH`)
    where those packages cannot be imported (blocked from its start, as if not installed)."""
    outcomes: dict[int, tuple[int, str, Path]] = {}
    for blocked in dict.fromkeys(case[0] for case in REFUSALS):
        workdir = tmp_path_factory.mktemp("refused")
        positions = [i for i, case in enumerate(REFUSALS) if case[0] == blocked and _refused_here(i)]
        if not positions:
            continue
        cases = [[str(workdir / f"data-{i}"), REFUSALS[i][1]] for i in positions]
        done = run_without(list(blocked), ["-c", SERVE_EACH, json.dumps(cases)], workdir, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        results = json.loads(done.stdout.strip().splitlines()[-1])
        for i, (code, stderr) in zip(positions, results, strict=True):
            outcomes[i] = (code, stderr, workdir / f"data-{i}")
    return outcomes


def _case_id(blocked: tuple[str, ...], env: dict[str, str], message: str) -> str:
    """E.g. `CGD_RUNTIME=openvino-no-openvino`: the variables set, then the packages blocked."""
    variables = [f"{name}={value}" for name, value in env.items()]
    return "-".join([*variables, *(f"no-{name}" for name in blocked)])


@pytest.mark.parametrize("case", range(len(REFUSALS)), ids=[_case_id(*case) for case in REFUSALS])
def test_a_runtime_that_cannot_run_here_stops_cgd_serve_at_start_up(refusals, case):
    """`cgd serve` in a process where the runtime's package cannot be imported (blocked, as if not
    installed), or with a runtime/precision pair this machine cannot run: a clear error, exit code 2."""
    if not _refused_here(case):
        pytest.skip("this machine has a GPU")
    code, stderr, data_dir = refusals[case]
    assert code == 2, stderr[-3000:]
    assert REFUSALS[case][2] in stderr
    assert not data_dir.exists()  # refused before anything was opened
