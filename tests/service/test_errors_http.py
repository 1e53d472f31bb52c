"""Every client error of the HTTP API: the status, the JSON body {"detail", "code"}, and no 500.

One app (real model, FAISS, SQLite) with small limits serves the whole module: 40 kB per file,
150 x 150 pixels, 4 files per request. Uploads are checked on every endpoint that takes images.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

MAX_BYTES = 40_000
MAX_PIXELS = 150 * 150
MAX_FILES = 4


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, open_app, make_image) -> Iterator[TestClient]:
    with open_app(tmp_path_factory.mktemp("errors-data"), max_upload_bytes=MAX_BYTES,
                  max_image_pixels=MAX_PIXELS, max_files_per_request=MAX_FILES) as client:
        # One stored vector, so that searches reach the index (an empty one answers [] at once).
        seeded = client.post("/gallery", files=[("files", ("seed.png", make_image(0)))],
                             data={"metadata": json.dumps({"shop": "seed"})})
        assert seeded.status_code == 201, seeded.text
        yield client


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noise_png(size: int) -> bytes:
    """Incompressible: about 3 x size^2 bytes."""
    pixels = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encoded(Image.fromarray(pixels), "PNG")


# name -> (bytes from make_image, status, code)
BAD_UPLOADS: dict[str, tuple[Callable[[Callable[..., bytes]], bytes], int, str]] = {
    "text": (lambda make: b"name,label\nfoo.jpg,cat\n", 400, "not_an_image"),
    "empty": (lambda make: b"", 400, "empty_file"),
    "truncated_jpeg": (lambda make: make(1, fmt="JPEG", size=140)[:1400], 400, "truncated_image"),
    "truncated_png": (lambda make: make(2)[:300], 400, "truncated_image"),
    "jpeg_header_only": (lambda make: make(3, fmt="JPEG")[:150], 400, "not_an_image"),
    "too_many_bytes": (lambda make: noise_png(140), 413, "too_large"),
    "too_many_pixels": (lambda make: encoded(Image.new("RGB", (400, 300), (9, 90, 200)), "PNG"),
                        413, "image_too_large"),
    "too_thin": (lambda make: encoded(Image.new("RGB", (2, 8000), (9, 90, 200)), "PNG"),
                 400, "extreme_aspect_ratio"),
    "tiff": (lambda make: encoded(Image.open(io.BytesIO(make(4))), "TIFF"), 415, "unsupported_format"),
    "pdf": (lambda make: b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n", 415, "unsupported_format"),
}


def upload(client: TestClient, endpoint: str, name: str, data: bytes):
    """POST one file to an image endpoint (its multipart field: `file` for /search, else `files`)."""
    field = "file" if endpoint == "/search" else "files"
    return client.post(endpoint, files=[(field, (name, data))])


def test_the_bad_upload_fixtures_are_what_they_claim(make_image):
    assert len(noise_png(140)) > MAX_BYTES
    assert len(BAD_UPLOADS["too_many_pixels"][0](make_image)) < MAX_BYTES
    assert BAD_UPLOADS["tiff"][0](make_image)[:2] in (b"II", b"MM")


@pytest.mark.parametrize("endpoint", ["/gallery", "/search", "/search/batch", "/embed"])
@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_are_refused_on_every_image_endpoint(client, make_image, expect_error, endpoint, case):
    make, status, code = BAD_UPLOADS[case]
    body = expect_error(upload(client, endpoint, f"{case}.bin", make(make_image)), status, code)
    assert f"{case}.bin" in body["detail"], "the error must name the file"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_accepted_formats_embed(client, make_image, fmt):
    response = upload(client, "/embed", f"ok.{fmt.lower()}", make_image(5, fmt=fmt))
    assert response.status_code == 200, response.text
    assert len(response.json()["embeddings"]) == 1


def test_a_long_image_within_the_aspect_ratio_limit_embeds(client):
    panorama = encoded(Image.new("RGB", (500, 10), (200, 9, 9)), "PNG")  # 50:1, the limit
    response = upload(client, "/embed", "panorama.png", panorama)
    assert response.status_code == 200, response.text


def test_a_batch_with_one_bad_file_stores_nothing(client, make_image, expect_error):
    total = client.get("/gallery").json()["total"]
    files = [("files", ("good-1.png", make_image(11))), ("files", ("broken.png", make_image(12)[:200])),
             ("files", ("good-2.png", make_image(13)))]
    body = expect_error(client.post("/gallery", files=files, data={"external_ids": ["b1", "b2", "b3"]}),
                        400, "truncated_image")
    assert "broken.png" in body["detail"] and "good-1.png" not in body["detail"]
    assert client.get("/gallery").json()["total"] == total
    for external_id in ("b1", "b2", "b3"):
        expect_error(client.get(f"/gallery/external/{external_id}"), 404, "not_found")


def test_a_batch_with_one_oversized_file_stores_nothing(client, make_image, expect_error):
    total = client.get("/gallery").json()["total"]
    files = [("files", ("small.png", make_image(14))), ("files", ("huge.png", noise_png(140)))]
    body = expect_error(client.post("/gallery", files=files), 413, "too_large")
    assert "huge.png" in body["detail"]
    assert client.get("/gallery").json()["total"] == total


def test_too_many_files(client, make_image, expect_error):
    files = [("files", (f"f{i}.png", make_image(20 + i))) for i in range(MAX_FILES + 1)]
    for endpoint in ("/gallery", "/search/batch", "/embed"):
        expect_error(client.post(endpoint, files=files), 413, "too_large")


SEARCH_FORMS = {
    "k=0": {"k": "0"},
    "k=-3": {"k": "-3"},
    "k=abc": {"k": "abc"},
    "metadata not JSON": {"metadata": "{shop: x}"},
    "metadata a list": {"metadata": "[1, 2]"},
    "metadata a string": {"metadata": '"shop"'},
    "metadata nested filter": {"metadata": json.dumps({"shop": {"id": 1}})},
    "qe_n=-1": {"qe_n": "-1"},
    "qe_n=abc": {"qe_n": "abc"},
    "qe_alpha=-1": {"qe_alpha": "-1"},
}


@pytest.mark.parametrize("endpoint", ["/search", "/search/batch"])
@pytest.mark.parametrize("case", sorted(SEARCH_FORMS))
def test_bad_search_parameters(client, make_image, expect_error, endpoint, case):
    field = "file" if endpoint == "/search" else "files"
    response = client.post(endpoint, files=[(field, ("q.png", make_image(30)))], data=SEARCH_FORMS[case])
    expect_error(response, 422, "invalid_parameter")


GALLERY_FORMS = {
    "two labels for one file": {"labels": ["a", "b"]},
    "two external ids for one file": {"external_ids": ["x1", "x2"]},
    "two metadata for one file": {"metadata": ["{}", "{}"]},
    "metadata not JSON": {"metadata": "{'a': 1}"},
    "metadata a JSON list": {"metadata": "[1]"},
    "label too long": {"labels": "x" * 257},
}


@pytest.mark.parametrize("case", sorted(GALLERY_FORMS))
def test_bad_gallery_form_fields(client, make_image, expect_error, case):
    total = client.get("/gallery").json()["total"]
    response = client.post("/gallery", files=[("files", ("g.png", make_image(31)))], data=GALLERY_FORMS[case])
    expect_error(response, 422, "invalid_parameter")
    assert client.get("/gallery").json()["total"] == total


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("POST", "/search", {}),  # no file at all
    ("POST", "/gallery", {"data": {"labels": "a"}}),
    ("GET", "/gallery", {"params": {"limit": 0}}),
    ("GET", "/gallery", {"params": {"limit": 1001}}),
    ("GET", "/gallery", {"params": {"offset": -1}}),
    ("GET", "/gallery", {"params": {"offset": 2**63}}),
    ("GET", "/gallery/0", {}),
    ("GET", f"/gallery/{2**63}", {}),
    ("DELETE", f"/gallery/{2**64}", {}),
    ("GET", f"/gallery/{2**63}/similar", {}),
    ("GET", "/gallery/1/similar", {"params": {"k": 0}}),
    ("PATCH", "/gallery/1", {"json": {"colour": "red"}}),
    ("PATCH", "/gallery/1", {"json": {"label": ""}}),
    ("PATCH", "/gallery/1", {"json": {"label": "x" * 257}}),
    ("PATCH", "/gallery/1", {"json": {"metadata": [1, 2]}}),
    ("PATCH", "/gallery/1", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
    ("GET", "/train", {"params": {"limit": 0}}),
    ("POST", "/train", {"json": {"epochs": 0}}),
    ("POST", "/train", {"json": {"loss": "hinge"}}),
    ("POST", "/train", {"json": {"promote": "sometimes"}}),
    ("POST", "/train", {"json": {"learning_rate": 0.1}}),
    ("POST", "/train", {"json": {"descriptors": "SX"}}),
    ("POST", "/train", {"content": b"[1, 2", "headers": {"content-type": "application/json"}}),
])
def test_bad_parameters_are_422(client, expect_error, method, path, kwargs):
    expect_error(client.request(method, path, **kwargs), 422, "invalid_parameter")


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("GET", "/gallery/999999", {}),
    ("GET", "/gallery/abc", {}),  # item ids are integers: no route matches
    ("PATCH", "/gallery/999999", {"json": {"label": "x"}}),
    ("DELETE", "/gallery/999999", {}),
    ("GET", "/gallery/999999/image", {}),
    ("GET", "/gallery/999999/similar", {}),
    ("GET", "/gallery/external/nope", {}),
    ("DELETE", "/gallery/external/nope", {}),
    ("GET", "/train/nope", {}),
    ("POST", "/train/nope/cancel", {}),
    ("POST", "/models/nope/activate", {}),
])
def test_unknown_ids_are_404(client, expect_error, method, path, kwargs):
    expect_error(client.request(method, path, **kwargs), 404, "not_found")


def test_unknown_routes_and_methods(client, expect_error):
    expect_error(client.get("/galleries"), 404, "not_found")
    expect_error(client.put("/gallery"), 405, "method_not_allowed")


def test_malformed_multipart_is_400(client, expect_error):
    response = client.post("/search", content=b"--x\r\nnonsense",
                           headers={"content-type": "multipart/form-data; boundary=y"})
    expect_error(response, 400)


def test_training_needs_two_labels_with_two_images(client, make_image, expect_error):
    files = [("files", (f"s{i}.png", make_image(40 + i))) for i in range(3)]
    added = client.post("/gallery", files=files, data={"labels": ["solo-a", "solo-b", "solo-b"]})
    assert added.status_code == 201, added.text
    refused = client.post("/train", json={"labels": ["solo-a", "solo-b"]})
    body = expect_error(refused, 422, "invalid_parameter")
    assert "at least 2 labels" in body["detail"]
    assert client.get("/train").json()["jobs"] == [], "a refused job must not be queued"


@pytest.mark.parametrize("request_body", [
    {},  # 4 labels x 3 images: the validation split would hold 1 image per label
    {"epochs": 1},  # the recipe warms up for one epoch
    {"batch_size": 4},  # fewer than 2 classes of 4 images per batch
    {"descriptors": "GG"},
])
def test_training_that_could_not_run_is_refused_up_front(client, make_image, expect_error, request_body):
    labels = [f"tri-{i % 4}" for i in range(12)]
    if not client.get("/gallery", params={"label": "tri-0"}).json()["total"]:
        for start in range(0, 12, MAX_FILES):
            files = [("files", (f"t{i}.png", make_image(50 + i))) for i in range(start, start + MAX_FILES)]
            added = client.post("/gallery", files=files, data={"labels": labels[start:start + MAX_FILES]})
            assert added.status_code == 201, added.text
    body = expect_error(client.post("/train", json={**request_body, "labels": sorted(set(labels))}),
                        422, "invalid_parameter")
    if not request_body:
        assert "validation" in body["detail"] and "val_fraction" in body["detail"], body
    assert client.get("/train").json()["jobs"] == []


def test_no_request_of_this_module_was_a_server_error(client):
    lines = [line for line in client.get("/metrics").text.splitlines()
             if line.startswith("cgd_http_request_duration_seconds_count")]
    assert len(lines) > 10
    assert not [line for line in lines if 'status="5' in line], lines
