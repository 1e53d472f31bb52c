"""service/limits.py: request bodies are bounded in size and in time while they stream (real `cgd serve`)."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import Server, start_server

MAX_REQUEST_BYTES = 64 * 1024 * 1024  # the default
BODY_TIMEOUT_S = 2.0
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("limits")
    running = start_server(root / "data", root / "server.log", {"CGD_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)})
    yield running
    running.stop()


def resident_mb(server: Server) -> float:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def connect(server: Server) -> socket.socket:
    return socket.create_connection((server.client.base_url.host, server.client.base_url.port), timeout=30)


def response_of(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """Read one HTTP response with a Content-Length from the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {name.lower(): value for name, value in headers.items()}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


MULTIPART_HEAD = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
                  b"Content-Type: image/png\r\n\r\n")


def test_a_200_mb_streamed_body_gets_413_after_at_most_64_mib(server: Server) -> None:
    before = resident_mb(server)
    sock = connect(server)
    sock.sendall(b"POST /embed HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n" + chunk(MULTIPART_HEAD))
    sent, payload = len(MULTIPART_HEAD), b"\0" * CHUNK
    while sent < 200 * 1024 * 1024 and not select.select([sock], [], [], 0)[0]:
        sock.sendall(chunk(payload))
        sent += CHUNK
        time.sleep(0.0005)  # paced, so that the bytes counted are those the server read, not buffered ones
    status, headers, body = response_of(sock)
    sock.close()
    assert status == 413 and body["code"] == "too_large", body
    assert headers["connection"] == "close"
    # what the server read, plus at most what the sockets buffer meanwhile
    assert MAX_REQUEST_BYTES < sent <= MAX_REQUEST_BYTES + 2 * 1024 * 1024
    assert resident_mb(server) - before < 50


def test_a_declared_length_over_the_limit_is_refused_before_the_body(server: Server) -> None:
    sock = connect(server)
    sock.sendall(b"POST /gallery HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: %d\r\n\r\n" % (MAX_REQUEST_BYTES + 1))
    status, _, body = response_of(sock)  # not a byte of the body was sent
    sock.close()
    assert status == 413 and "declares" in body["detail"]


def test_a_trickling_body_gets_408_after_the_body_timeout(server: Server) -> None:
    body = MULTIPART_HEAD + b"\0" * 200
    sock = connect(server)
    sock.sendall(b"POST /embed HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body))
    started = time.monotonic()
    for position in range(len(body)):  # 10 bytes a second
        if select.select([sock], [], [], 0)[0]:
            break
        sock.sendall(body[position:position + 1])
        time.sleep(0.1)
    status, headers, answer = response_of(sock)
    elapsed = time.monotonic() - started
    assert status == 408 and answer["code"] == "request_timeout", answer
    assert BODY_TIMEOUT_S - 0.5 < elapsed < BODY_TIMEOUT_S + 2
    assert headers["connection"] == "close"
    sock.settimeout(5)
    assert sock.recv(1) == b""  # the server closed the connection: a slow client cannot hold it
    sock.close()


def test_requests_within_the_limits_pass_and_keep_their_connection(server: Server, make_image) -> None:
    client = server.client
    for seed in range(2):
        response = client.post("/embed", files={"files": ("a.png", make_image(seed), "image/png")})
        assert response.status_code == 200, response.text
    assert client.get("/health").status_code == 200
