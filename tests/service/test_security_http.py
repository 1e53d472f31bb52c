"""API keys on a real app: X-API-Key guards writes (`api_key`) and, when `read_api_key` is set, reads.

A missing key is 401 (with WWW-Authenticate), a wrong one 403; the write key also grants reads,
the read key never grants writes. /health, /ready and /metrics stay open.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

WRITE_KEY = "write-key-1234"
READ_KEY = "read-key-5678"
NON_ASCII_WRITE_KEY = "schreib-schlüssel"  # compared as the UTF-8 bytes of the header
WRONG = {"X-API-Key": "not-the-key"}


@pytest.fixture(scope="module")
def write_guarded(tmp_path_factory, open_app, make_image) -> Iterator[tuple[TestClient, dict]]:
    """An app with only a write key, one stored item; yields the client and that item."""
    with open_app(tmp_path_factory.mktemp("auth-write"), api_key=WRITE_KEY) as client:
        added = client.post("/gallery", files=[("files", ("seed.png", make_image(1)))],
                            data={"labels": "seed", "external_ids": "seed-1"},
                            headers={"X-API-Key": WRITE_KEY})
        assert added.status_code == 201, added.text
        yield client, added.json()["items"][0]


@pytest.fixture(scope="module")
def fully_guarded(tmp_path_factory, open_app, make_image) -> Iterator[tuple[TestClient, dict]]:
    """An app with a (non-ASCII) write key and a read key, one stored item."""
    with open_app(tmp_path_factory.mktemp("auth-read"), api_key=NON_ASCII_WRITE_KEY,
                  read_api_key=READ_KEY) as client:
        added = client.post("/gallery", files=[("files", ("seed.png", make_image(2)))],
                            data={"labels": "seed", "external_ids": "seed-1"},
                            headers={"X-API-Key": NON_ASCII_WRITE_KEY.encode()})
        assert added.status_code == 201, added.text
        yield client, added.json()["items"][0]


def write_requests(client: TestClient, item: dict, make_image) -> dict[str, dict]:
    """Every state-changing request, as kwargs of `client.request` (valid, were it authorised)."""
    version = client.get("/ready").json()["model_version"]
    return {
        "add": {"method": "POST", "url": "/gallery", "files": [("files", ("new.png", make_image(3)))]},
        "patch": {"method": "PATCH", "url": f"/gallery/{item['id']}", "json": {"label": "changed"}},
        "delete": {"method": "DELETE", "url": f"/gallery/{item['id']}"},
        "delete_external": {"method": "DELETE", "url": "/gallery/external/seed-1"},
        "train": {"method": "POST", "url": "/train", "json": {}},
        "cancel": {"method": "POST", "url": "/train/some-job/cancel"},
        "activate": {"method": "POST", "url": f"/models/{version}/activate"},
    }


def read_requests(item: dict, make_image) -> dict[str, dict]:
    """Every read and search, as kwargs of `client.request`."""
    image = make_image(2)
    return {
        "list": {"method": "GET", "url": "/gallery"},
        "get": {"method": "GET", "url": f"/gallery/{item['id']}"},
        "external": {"method": "GET", "url": "/gallery/external/seed-1"},
        "image": {"method": "GET", "url": f"/gallery/{item['id']}/image"},
        "similar": {"method": "GET", "url": f"/gallery/{item['id']}/similar"},
        "search": {"method": "POST", "url": "/search", "files": {"file": ("q.png", image)}},
        "batch": {"method": "POST", "url": "/search/batch", "files": [("files", ("q.png", image))]},
        "embed": {"method": "POST", "url": "/embed", "files": [("files", ("q.png", image))]},
        "jobs": {"method": "GET", "url": "/train"},
        "job": {"method": "GET", "url": "/train/some-job"},
        "models": {"method": "GET", "url": "/models"},
    }


WRITES = ["add", "patch", "delete", "delete_external", "train", "cancel", "activate"]
READS = ["list", "get", "external", "image", "similar", "search", "batch", "embed", "jobs", "job", "models"]


@pytest.mark.parametrize("name", WRITES)
def test_writes_need_the_write_key(write_guarded, make_image, expect_error, name):
    client, item = write_guarded
    request = write_requests(client, item, make_image)[name]
    missing = client.request(**request)
    expect_error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == "APIKey"
    expect_error(client.request(**request, headers=WRONG), 403, "forbidden")
    expect_error(client.request(**request, headers={"X-API-Key": WRITE_KEY.upper()}), 403, "forbidden")
    expect_error(client.request(**request, headers={"X-API-Key": ""}), 401, "unauthorized")
    assert client.get(f"/gallery/{item['id']}").json() == item, "a refused write changed the item"


def test_writes_succeed_with_the_write_key(write_guarded, make_image, expect_error):
    client, _ = write_guarded
    key = {"X-API-Key": WRITE_KEY}
    total = client.get("/gallery").json()["total"]
    added = client.post("/gallery", files=[("files", ("w.png", make_image(4)))], data={"external_ids": "w-1"},
                        headers=key)
    assert added.status_code == 201, added.text
    new_id = added.json()["items"][0]["id"]
    patched = client.patch(f"/gallery/{new_id}", json={"label": "keyed"}, headers=key)
    assert patched.status_code == 200 and patched.json()["label"] == "keyed"
    version = client.get("/ready").json()["model_version"]
    activated = client.post(f"/models/{version}/activate", headers=key)
    assert activated.status_code == 202, activated.text
    job = client.get(f"/models/activations/{activated.json()['job_id']}", headers=key).json()
    assert job["version"] == version and job["status"] == "succeeded"  # already serving: done at once
    # an authorised request is then checked as usual: the body and the ids
    expect_error(client.post("/train", json={}, headers=key), 422, "invalid_parameter")
    expect_error(client.post("/train/some-job/cancel", headers=key), 404, "not_found")
    assert client.delete("/gallery/external/w-1", headers=key).status_code == 204
    assert client.get("/gallery").json()["total"] == total


@pytest.mark.parametrize("name", READS)
def test_reads_stay_open_without_a_read_key(write_guarded, make_image, name):
    client, item = write_guarded
    response = client.request(**read_requests(item, make_image)[name])
    assert response.status_code in (200, 404), response.text  # 404: the job id does not exist
    assert response.status_code == 200 or name == "job"


@pytest.mark.parametrize("name", READS)
def test_reads_need_the_read_or_the_write_key_when_a_read_key_is_set(fully_guarded, make_image,
                                                                      expect_error, name):
    client, item = fully_guarded
    request = read_requests(item, make_image)[name]
    expect_error(client.request(**request), 401, "unauthorized")
    expect_error(client.request(**request, headers=WRONG), 403, "forbidden")
    expected = 404 if name == "job" else 200
    for key in (READ_KEY, NON_ASCII_WRITE_KEY.encode()):
        response = client.request(**request, headers={"X-API-Key": key})
        assert response.status_code == expected, (key, response.text)


def test_the_read_key_does_not_grant_writes(fully_guarded, make_image, expect_error):
    client, item = fully_guarded
    for request in write_requests(client, item, make_image).values():
        expect_error(client.request(**request, headers={"X-API-Key": READ_KEY}), 403, "forbidden")
    assert client.get(f"/gallery/{item['id']}", headers={"X-API-Key": READ_KEY}).json() == item
    right = client.patch(f"/gallery/{item['id']}", json={"label": "x"},
                         headers={"X-API-Key": NON_ASCII_WRITE_KEY.encode()})
    assert right.status_code == 200 and right.json()["label"] == "x"


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_operations_endpoints_stay_open(write_guarded, fully_guarded, path):
    for client, _ in (write_guarded, fully_guarded):
        assert client.get(path).status_code == 200


@pytest.mark.slow
def test_training_and_cancel_need_the_write_key(tmp_path, open_app, make_image, expect_error):
    key = {"X-API-Key": WRITE_KEY}
    with open_app(tmp_path / "data", api_key=WRITE_KEY) as client:
        labels = [f"class-{i % 2}" for i in range(16)]
        files = [("files", (f"t{i}.png", make_image(200 + i, size=64))) for i in range(16)]
        assert client.post("/gallery", files=files, data={"labels": labels}, headers=key).status_code == 201
        tiny = {"epochs": 2, "image_size": 32, "max_minutes": 0.05, "promote": "never"}
        expect_error(client.post("/train", json=tiny), 401, "unauthorized")
        expect_error(client.post("/train", json=tiny, headers=WRONG), 403, "forbidden")
        assert client.get("/train").json()["jobs"] == []
        accepted = client.post("/train", json=tiny, headers=key)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        expect_error(client.post(f"/train/{job_id}/cancel"), 401, "unauthorized")
        expect_error(client.post(f"/train/{job_id}/cancel", headers=WRONG), 403, "forbidden")
        cancelled = client.post(f"/train/{job_id}/cancel", headers=key)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] in ("cancelled", "running")  # running: stops at its next step
        deadline = time.monotonic() + 120
        while (job := client.get(f"/train/{job_id}").json())["status"] not in ("cancelled", "failed",
                                                                                "succeeded"):
            assert time.monotonic() < deadline, f"the cancelled job did not end: {job}"
            time.sleep(0.5)
        assert job["status"] == "cancelled" and job["promoted"] is not True, job
        assert job["message"] in (None, "cancelled by request"), job  # None: cancelled while queued
        expect_error(client.post(f"/train/{job_id}/cancel", headers=key), 409, "conflict")
