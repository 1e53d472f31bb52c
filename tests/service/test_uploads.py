"""service/uploads.py: a request's decoded pixels are bounded, and metadata is checked before anything is
stored (real `cgd serve`)."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.service.conftest import Server, start_server

PIXEL_BUDGET = 100_000_000  # per request and across requests, for this server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("uploads")
    budget = {"CGD_MAX_REQUEST_PIXELS": str(PIXEL_BUDGET), "CGD_MAX_DECODED_PIXELS": str(PIXEL_BUDGET)}
    running = start_server(root / "data", root / "server.log", budget)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def png_40mp() -> bytes:
    """A blank 8000 x 5000 PNG: 40 megapixels in about 50 kB."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 5000), 128).save(buffer, "PNG")
    return buffer.getvalue()


def resident_mb(server: Server) -> float:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def blobs(server: Server) -> list[Path]:
    root = Path(server.process.args[-1]) / "gallery" / "blobs"
    return [path for path in root.glob("??/*") if path.is_file()]


class PeakRss:
    """The server's resident memory sampled every 20 ms in a thread while the block runs."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._stop = threading.Event()
        self.before = resident_mb(server)
        self.peak = self.before

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._sample)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, resident_mb(self._server))

    @property
    def growth(self) -> float:
        return self.peak - self.before


def test_64_images_of_40_megapixels_are_refused_before_decoding(server: Server, png_40mp: bytes) -> None:
    files = [("files", (f"{i}.png", png_40mp, "image/png")) for i in range(64)]
    with PeakRss(server) as rss:
        response = server.client.post("/embed", files=files)
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "too_many_pixels"
    assert rss.growth < 1024


def test_concurrent_requests_share_one_pixel_budget(server: Server, png_40mp: bytes) -> None:
    """Three requests of 80 MP at once: a budget of 100 MP decodes one at a time, the others get 503."""
    files = [("files", (f"{i}.png", png_40mp, "image/png")) for i in range(2)]
    responses: list[httpx.Response] = []
    barrier = threading.Barrier(3)

    def send() -> None:
        with httpx.Client(base_url=server.client.base_url, timeout=120, trust_env=False) as client:
            barrier.wait()
            responses.append(client.post("/embed", files=files))

    with PeakRss(server) as rss:
        threads = [threading.Thread(target=send) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
    refused = next(response for response in responses if response.status_code == 503)
    assert refused.json()["code"] == "overloaded" and refused.headers["retry-after"] == "1"
    assert rss.growth < 1024  # 80 MP decoded at once: about 6 bytes a pixel at the peak
    time.sleep(0.2)  # the budget is given back when the request ends
    assert server.client.post("/embed", files=files[:1]).status_code == 200


def deep_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("metadata", [
    deep_object(17), deep_object(300), deep_object(990), deep_object(100_000),
    '{"x": NaN}', '{"x": [Infinity]}', f'{{"n": {10**30}}}', f'{{"n": {2**63}}}',
    json.dumps({"s": "x" * 70_000}), "[1]",
])
def test_bad_metadata_is_422_and_stores_nothing(server: Server, make_image, metadata: str) -> None:
    client = server.client
    total = client.get("/gallery").json()["total"]
    stored = blobs(server)
    response = client.post("/gallery", files={"files": ("a.png", make_image(7), "image/png")},
                           data={"metadata": metadata})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_parameter"
    assert client.get("/gallery").json()["total"] == total
    assert blobs(server) == stored


def test_metadata_within_the_limits_is_stored_and_served(server: Server, make_image) -> None:
    metadata = json.loads(deep_object(16))
    response = server.client.post("/gallery", files={"files": ("a.png", make_image(8), "image/png")},
                                  data={"metadata": json.dumps({**metadata, "n": 2**63 - 1})})
    assert response.status_code == 201, response.text
    item = response.json()["items"][0]
    assert item["metadata"]["n"] == 2**63 - 1
    search = server.client.post("/search", files={"file": ("q.png", make_image(8), "image/png")},
                                data={"k": "5"})
    assert search.status_code == 200 and search.json()["results"][0]["id"] == item["id"]


@pytest.mark.parametrize("route", ["/search", "/search/batch"])
@pytest.mark.parametrize("metadata", [deep_object(100_000), f'{{"a": {10**30}}}', '{"a": {"b": 1}}',
                                      '{"a": NaN}'])
def test_bad_filters_are_422(server: Server, make_image, route: str, metadata: str) -> None:
    field = "file" if route == "/search" else "files"
    response = server.client.post(route, files={field: ("q.png", make_image(9), "image/png")},
                                  data={"metadata": metadata})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_parameter"


def test_a_request_that_ended_before_its_decode_takes_no_pixels(tmp_path: Path, make_image) -> None:
    """The decode job runs on the executor; when the request has ended meanwhile (its client left), the
    job takes nothing from the budget, so nothing stays held."""
    from fastapi import UploadFile

    from service.errors import NotReady
    from service.gallery_gateway import GalleryGateway
    from service.pixel_budget import PixelBudget
    from service.settings import Settings
    from service.uploads import UploadReader

    async def scenario() -> tuple[int, int]:
        gateway = await GalleryGateway.open(tmp_path / "g", threads=1)
        budget = PixelBudget(PIXEL_BUDGET)
        try:
            def upload() -> UploadFile:
                return UploadFile(io.BytesIO(make_image(1)), filename="a.png")

            reader = UploadReader(Settings(data_dir=tmp_path), budget, gateway.run)
            (decoded,) = await reader.read([upload()])
            held = budget.held
            reader.release()
            with pytest.raises(NotReady, match="request ended"):
                await reader.read([upload()])
            assert decoded.image.width * decoded.image.height == held
            return held, budget.held
        finally:
            await gateway.close()

    held, after = asyncio.run(scenario())
    assert held > 0 and after == 0
