"""Fixtures of the HTTP API tests: pattern images, real caltech101 photos, apps and real servers.

Every app runs the real service: the embedded default model (EfficientNet-Lite0 CGD), FAISS and
SQLite in a temporary data directory. `CGD_*` variables of the environment are removed so that
only the settings a test passes apply.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from service.app import create_app
from service.settings import Settings

VENV_BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT_S = 180.0
SERVER_STOP_TIMEOUT_S = 60.0
# Visually distinct caltech101 classes (the default model separates them well).
CALTECH_CLASSES = ("sunflower", "stop_sign", "soccer_ball", "Motorbikes")
CALTECH_PER_CLASS = 8

ImageMaker = Callable[..., bytes]
ClientFactory = Callable[..., AbstractContextManager[TestClient]]


@pytest.fixture(scope="session", autouse=True)
def _no_cgd_environment() -> Iterator[None]:
    """The tests' settings only: no CGD_* variable (or settings file) of the shell applies."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("CGD_")]:
            patch.delenv(name)
        yield


def pattern_image(seed: int, *, fmt: str = "PNG", size: int = 96) -> bytes:
    """A small synthetic image, clearly different for every `seed`: a 6 x 6 grid of random colours
    with a disc on top, encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize((size, size), Image.Resampling.NEAREST)
    low, high = sorted(rng.integers(size // 8, size - size // 8, 2))
    ImageDraw.Draw(image).ellipse([low, low, max(high, low + 4), max(high, low + 4)],
                                  fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    buffer = BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def make_image() -> ImageMaker:
    """`make_image(seed, fmt="PNG", size=96) -> bytes`."""
    return pattern_image


@dataclass(frozen=True)
class Photo:
    """One real labelled photo: file name, label, encoded bytes."""

    name: str
    label: str
    data: bytes


@pytest.fixture(scope="session")
def caltech_photos(caltech_dir: Path) -> list[Photo]:
    """The first `CALTECH_PER_CLASS` photos of each of `CALTECH_CLASSES`, in a fixed order."""
    chosen: dict[str, list[Photo]] = {label: [] for label in CALTECH_CLASSES}
    with (caltech_dir / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            photos = chosen.get(row["label"])
            if photos is not None and len(photos) < CALTECH_PER_CLASS:
                path = caltech_dir / row["path"]
                photos.append(Photo(path.name, row["label"], path.read_bytes()))
    for label, photos in chosen.items():
        assert len(photos) == CALTECH_PER_CLASS, f"caltech101 has too few {label} photos"
    return [photo for photos in chosen.values() for photo in photos]


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    """Test settings: CPU, one decode thread, small queue wait, the torch runtime (auto would export
    and measure ONNX engines at every start: tests/service/test_runtime.py covers it); `overrides`
    win."""
    values: dict[str, Any] = {"data_dir": data_dir, "device": "cpu", "decode_threads": 2, "max_wait_ms": 2.0,
                              "runtime": "torch"}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def make_settings() -> Callable[..., Settings]:
    """`make_settings(data_dir, **overrides) -> Settings`, as the apps of these tests use."""
    return settings_for


@contextmanager
def running_app(data_dir: Path, **overrides: Any) -> Iterator[TestClient]:
    """A TestClient whose lifespan (model, gallery, worker, training queue) runs inside the block."""
    app = create_app(settings_for(data_dir, **overrides))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="session")
def open_app() -> ClientFactory:
    """`with open_app(data_dir, **settings) as client:` runs one app for the block."""
    return running_app


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app per test module, default limits; tests must not depend on each other's items."""
    with running_app(tmp_path_factory.mktemp("shared-data")) as client:
        yield client


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A `cgd serve` child process and an httpx client pointed at it."""

    process: subprocess.Popen
    client: httpx.Client
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit code (kills and fails on a hang)."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the server ignored SIGTERM for {SERVER_STOP_TIMEOUT_S:.0f} s:\n{self.log_tail()}")


def start_server(data_dir: Path, log: Path, env: dict[str, str] | None = None, *,
                 until: str = "/ready") -> Server:
    """`cgd serve --port <free> --data-dir <data_dir>`, waited for until `until` (/ready, or /health:
    the process serves HTTP) answers 200."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("CGD_")}
    environment.update({"CGD_DEVICE": "cpu", "CGD_TRAIN_THREADS": "1", "CGD_RUNTIME": "torch", **(env or {})})
    command = [str(VENV_BIN / "cgd"), "serve", "--port", str(port), "--data-dir", str(data_dir)]
    with log.open("ab") as log_file:
        process = subprocess.Popen(command, env=environment, cwd=data_dir.parent, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    server = Server(process, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0,
                                          trust_env=False), log)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if server.client.get(until).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"{until} did not answer 200 in {SERVER_START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")
        time.sleep(0.25)


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    """`serve(data_dir, log, env, until="/ready")` starts a real server; any still running at teardown is
    stopped."""
    started: list[Server] = []

    def _serve(data_dir: Path, log: Path, env: dict[str, str] | None = None, *,
               until: str = "/ready") -> Server:
        server = start_server(data_dir, log, env, until=until)
        started.append(server)
        return server

    yield _serve
    for server in started:
        if server.process.poll() is None:
            server.stop()


def assert_error(response: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict:
    """The response is an error of that status with the JSON body {"detail", "code"}; returns it."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"detail", "code"}, body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert isinstance(body["code"], str) and body["code"], body
    if code is not None:
        assert body["code"] == code, body
    return body


@pytest.fixture(scope="session")
def expect_error() -> Callable[..., dict]:
    """`expect_error(response, status_or_statuses, code=None) -> body`: the one error shape."""
    return assert_error
