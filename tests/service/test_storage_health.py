"""service/storage_health.py: a full disk answers 507, an unwritable store 503, the connection stays usable,
/ready is 503 until the fault clears, and nothing acknowledged is lost (real `cgd serve` on a tmpfs)."""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import Server, start_server

TMPFS_BYTES = 64 * 1024 * 1024


def run(*command: str) -> bool:
    return subprocess.run(command, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A small tmpfs of our own (needs the right to mount; skipped otherwise)."""
    mount = tmp_path_factory.mktemp("volume")
    if os.geteuid() != 0 or not run("mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount)):
        pytest.skip("mounting a tmpfs is not allowed here")
    yield mount
    run("umount", "-l", str(mount))


@pytest.fixture(scope="module")
def server(volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(volume / "data", tmp_path_factory.mktemp("logs") / "server.log")
    yield running
    running.stop()


class Connection:
    """One keep-alive HTTP/1.1 connection; `same()` says whether it is still the first socket."""

    def __init__(self, server: Server) -> None:
        self._conn = http.client.HTTPConnection(server.client.base_url.host, server.client.base_url.port,
                                                timeout=60)
        self._conn.connect()
        self._socket = self._conn.sock

    def send(self, request: httpx.Request) -> tuple[int, dict[str, str], bytes]:
        body = request.read()
        headers = {name: value for name, value in request.headers.items() if name.lower() != "host"}
        self._conn.request(request.method, request.url.raw_path.decode(), body=body, headers=headers)
        response = self._conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    def same(self) -> bool:
        return self._conn.sock is self._socket

    def close(self) -> None:
        self._conn.close()


def upload(make_image, seed: int) -> httpx.Request:
    return httpx.Request("POST", "http://test/gallery", files={"files": (f"{seed}.png", make_image(seed),
                                                                         "image/png")},
                         data={"external_ids": f"item-{seed}"})


def search(make_image) -> httpx.Request:
    return httpx.Request("POST", "http://test/search", files={"file": ("q.png", make_image(1), "image/png")})


def blobs(volume: Path) -> set[Path]:
    return {path for path in (volume / "data" / "gallery" / "blobs").glob("??/*") if path.is_file()}


def fill(volume: Path) -> Path:
    """Take every free byte of the tmpfs."""
    filler = volume / "filler"
    stat = os.statvfs(volume)
    with filler.open("wb") as handle, contextlib.suppress(OSError):  # the very last bytes may be refused
        handle.write(b"\0" * (stat.f_bavail * stat.f_frsize))
    return filler


def test_a_full_disk_answers_507_keeps_the_connection_and_turns_ready_503(server: Server, volume: Path,
                                                                          make_image) -> None:
    connection = Connection(server)
    status, _, body = connection.send(upload(make_image, 1))
    assert status == 201, body
    kept = httpx.Response(status, content=body).json()["items"][0]["id"]
    before = blobs(volume)
    filler = fill(volume)
    try:
        for seed in (2, 3):
            status, headers, body = connection.send(upload(make_image, seed))
            assert status == 507, body
            assert httpx.Response(status, content=body).json()["code"] == "insufficient_storage"
            assert headers.get("connection") != "close"
        assert blobs(volume) == before  # nothing half-written stays
        status, _, _ = connection.send(httpx.Request("GET", "http://test/health"))
        assert status == 200 and connection.same()
        status, _, body = connection.send(search(make_image))  # searches need no write
        assert status == 200, body
        ready = server.client.get("/ready")
        assert ready.status_code == 503
        assert not ready.json()["ready"] and any("storage" in reason for reason in ready.json()["reasons"])
        assert ready.json()["store"]["writable"] is False
    finally:
        filler.unlink()
    assert server.client.get("/ready").status_code == 200
    status, _, body = connection.send(upload(make_image, 2))
    assert status == 201, body
    assert server.client.get(f"/gallery/{kept}").status_code == 200  # acknowledged before: still there
    assert connection.same()
    connection.close()


def test_an_unwritable_store_answers_503_and_turns_ready_503(server: Server, volume: Path,
                                                             make_image) -> None:
    gallery = volume / "data" / "gallery"
    if not (run("mount", "--bind", str(gallery), str(gallery))
            and run("mount", "-o", "remount,bind,ro", str(gallery))):
        run("umount", "-l", str(gallery))
        pytest.skip("a read-only bind mount is not allowed here")
    connection = Connection(server)
    try:
        total = server.client.get("/gallery").json()["total"]
        status, headers, body = connection.send(upload(make_image, 10))
        assert status == 503, body
        assert httpx.Response(status, content=body).json()["code"] == "storage_unavailable"
        assert int(headers["retry-after"]) > 0
        status, _, _ = connection.send(httpx.Request("GET", "http://test/gallery"))
        assert status == 200 and connection.same()
        status, _, body = connection.send(search(make_image))
        assert status == 200, body
        ready = server.client.get("/ready")
        assert ready.status_code == 503 and "Read-only" in " ".join(ready.json()["reasons"])
        assert server.client.get("/gallery").json()["total"] == total
    finally:
        run("umount", "-l", str(gallery))
    assert server.client.get("/ready").status_code == 200
    status, _, body = connection.send(upload(make_image, 10))
    assert status == 201, body
    connection.close()
