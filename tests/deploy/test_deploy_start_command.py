"""The CPU image's start command, run here outside Docker, serves /health and searches the default model.

The command is docker/Dockerfile.cpu's CMD and the environment its final-stage ENV, both read from the
Dockerfile; only the data directory (the image's /data volume) moves to tmp_path and the port to a free
one. `cgd` is the venv's console script, found through the image's PATH with /opt/venv/bin mapped to
this venv. The embedded default model needs no network, as in the image.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.deploy.test_deploy_dockerfiles import CPU_DOCKERFILE, Dockerfile

VENV_BIN = Path(sys.executable).parent
IMAGE_VENV_BIN = "/opt/venv/bin"
START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def image_environment(dockerfile: Dockerfile, data_dir: Path, port: int) -> dict[str, str]:
    """This process's environment without CGD_* variables, plus the image's ENV (PATH mapped to this venv)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CGD_")}
    for name, value in dockerfile.env().items():
        if name == "PATH":
            value = value.replace(IMAGE_VENV_BIN, str(VENV_BIN)).replace("$PATH", os.environ.get("PATH", ""))
        env[name] = value
    assert env["CGD_DATA_DIR"] == "/data", "the image keeps its data in the /data volume"
    env["CGD_DATA_DIR"] = str(data_dir)
    env["CGD_PORT"] = str(port)
    return env


def start_command(dockerfile: Dockerfile, port: int) -> list[str]:
    """The image's CMD with the --port value replaced."""
    cmd = dockerfile.exec_form("CMD")
    position = cmd.index("--port") + 1
    return [*cmd[:position], str(port), *cmd[position + 1 :]]


def pattern_image(kind: int) -> bytes:
    """Distinct 160 px PNGs: stripes, a disc, a checkerboard."""
    image = Image.new("RGB", (160, 160), (240, 240, 235))
    draw = ImageDraw.Draw(image)
    if kind == 0:
        for x in range(0, 160, 20):
            draw.rectangle([x, 0, x + 9, 159], fill=(200, 30, 30))
    elif kind == 1:
        draw.ellipse([30, 30, 130, 130], fill=(20, 60, 200))
    else:
        for x in range(0, 160, 32):
            for y in range(0, 160, 32):
                if (x // 32 + y // 32) % 2 == 0:
                    draw.rectangle([x, y, x + 31, y + 31], fill=(10, 120, 40))
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wait_for(
    client: httpx.Client, path: str, process: subprocess.Popen, log: Path, deadline: float
) -> httpx.Response:
    while True:
        if process.poll() is not None:
            pytest.fail(
                f"the service exited with {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
            )
        try:
            response = client.get(path)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"GET {path} did not answer 200 in {START_TIMEOUT_S:.0f} s:\n"
                f"{log.read_text(errors='replace')[-4000:]}"
            )
        time.sleep(0.25)


@pytest.mark.slow
def test_image_start_command_serves_health_and_search(tmp_path):
    dockerfile = Dockerfile.read(CPU_DOCKERFILE)
    port = free_port()
    data_dir = tmp_path / "data"
    env = image_environment(dockerfile, data_dir, port)
    command = start_command(dockerfile, port)
    resolved = shutil.which(command[0], path=env["PATH"])
    assert resolved and Path(resolved).resolve() == (VENV_BIN / command[0]).resolve(), resolved
    log = tmp_path / "service.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0, trust_env=False) as client:
            deadline = time.monotonic() + START_TIMEOUT_S
            assert wait_for(client, "/health", process, log, deadline).json()["status"] == "ok"
            wait_for(client, "/ready", process, log, deadline)

            images = [pattern_image(kind) for kind in range(3)]
            added = client.post(
                "/gallery",
                files=[("files", (f"p{i}.png", data, "image/png")) for i, data in enumerate(images)],
            )
            assert added.status_code == 201, added.text
            ids = [item["id"] for item in added.json()["items"]]
            assert len(ids) == 3

            found = client.post(
                "/search", files={"file": ("query.png", images[1], "image/png")}, data={"k": "3"}
            )
            assert found.status_code == 200, found.text
            results = found.json()["results"]
            assert [hit["id"] for hit in results][:1] == [ids[1]], "the image must find itself first"
            assert sorted(hit["id"] for hit in results) == sorted(ids)
            assert results[0]["score"] > 0.99
            assert results[0]["score"] > results[1]["score"]
        assert list(data_dir.rglob("*.sqlite3")), "the gallery must live in CGD_DATA_DIR (the volume)"
    finally:
        process.send_signal(signal.SIGTERM)  # docker stop sends STOPSIGNAL (SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, (
        f"SIGTERM must stop the service cleanly:\n{log.read_text(errors='replace')[-4000:]}"
    )
