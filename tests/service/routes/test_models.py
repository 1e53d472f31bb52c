"""`/models` on a real app: the model list, activation jobs (202, progress, cancel) and their 404s."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.service.test_model_swap import fill, register, variant_checkpoint


@pytest.fixture(scope="module")
def variant(tmp_path_factory) -> Path:
    return variant_checkpoint(tmp_path_factory.mktemp("variant") / "variant.pt")


def wait(client, job_id: str, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/models/activations/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] != "running" or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_activation_is_a_job_with_progress(tmp_path, open_app, make_image, variant, expect_error):
    with open_app(tmp_path / "data", max_batch_size=4) as client:
        fill(client, make_image, 12)
        old = client.get("/models").json()["active"]
        version = register(client, variant)
        listed = client.get("/models")
        assert listed.status_code == 200
        has_vectors = {m["version"]: m["has_vectors"] for m in listed.json()["models"]}
        assert has_vectors == {old: True, version: False}

        accepted = client.post(f"/models/{version}/activate")
        assert accepted.status_code == 202, accepted.text
        assert set(accepted.json()) == {"job_id"}
        job = wait(client, accepted.json()["job_id"])
        assert job["status"] == "succeeded" and job["error"] is None, job
        assert job["version"] == version and job["reembedded"] == job["to_reembed"] == 12
        assert job["seconds"] is not None and job["finished_at"] >= job["created_at"]
        models = client.get("/models").json()
        assert models["active"] == version
        assert all(m["has_vectors"] for m in models["models"])
        hits = client.post("/search", files={"file": ("q.png", make_image(1))}).json()
        assert hits["model_version"] == version and hits["results"][0]["score"] > 0.99

        # rollback: the old version's vectors are kept, nothing to re-embed
        rollback = wait(client, client.post(f"/models/{old}/activate").json()["job_id"])
        assert rollback["status"] == "succeeded" and rollback["to_reembed"] == 0
        assert client.get("/models").json()["active"] == old
        expect_error(client.post(f"/models/activations/{rollback['id']}/cancel"), 409, "conflict")


def test_cancelled_activation_keeps_the_old_model(tmp_path, open_app, make_image, variant):
    with open_app(tmp_path / "data", max_batch_size=1) as client:
        fill(client, make_image, 16)
        old = client.get("/models").json()["active"]
        version = register(client, variant)
        job_id = client.post(f"/models/{version}/activate").json()["job_id"]
        cancelled = client.post(f"/models/activations/{job_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        job = wait(client, job_id)
        assert job["status"] == "cancelled", job
        assert job["reembedded"] < 16
        assert client.get("/models").json()["active"] == old
        assert client.post("/search", files={"file": ("q.png", make_image(1))}).json()["model_version"] == old


def test_unknown_versions_and_jobs_are_404(tmp_path, open_app, expect_error):
    with open_app(tmp_path / "data") as client:
        expect_error(client.post("/models/nope/activate"), 404, "not_found")
        expect_error(client.get("/models/activations/nope"), 404, "not_found")
        expect_error(client.post("/models/activations/nope/cancel"), 404, "not_found")
