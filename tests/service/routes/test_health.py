"""/health, /ready and /metrics of the real app: liveness, readiness, and the Prometheus text."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.job_store import JobStore
from service.metrics import JOB_STATES, UNMATCHED_ROUTE


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(sample name, labels): value}."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(parsed: dict, name: str, **labels: str) -> float | None:
    return parsed.get((name, frozenset(labels.items())))


def test_before_the_lifespan_runs_the_app_is_alive_but_not_ready(tmp_path, make_settings, expect_error):
    client = TestClient(create_app(make_settings(tmp_path / "data")))  # no `with`: no model, no gallery
    assert client.get("/health").json() == {"status": "ok"}
    not_ready = client.get("/ready")
    assert not_ready.status_code == 503 and int(not_ready.headers["retry-after"]) >= 1
    assert not not_ready.json()["ready"] and "starting" in not_ready.json()["reasons"][0]
    expect_error(client.get("/gallery"), 503, "not_ready")
    assert client.get("/metrics").status_code == 200


def test_health_ready_and_metrics(tmp_path, open_app, make_image, expect_error):
    data_dir = tmp_path / "data"
    jobs = JobStore(data_dir / "jobs.sqlite3")
    for status in ("succeeded", "failed", "failed"):
        job = jobs.create({"epochs": 2})
        jobs.update(job.id, status=status, finished_at=time.time())
    jobs.close()

    with open_app(data_dir) as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready").json()
        assert ready["ready"] and ready["reasons"] == [] and ready["store"]["items"] == 0
        assert ready["model_version"] == client.get("/models").json()["active"]
        assert ready["device"] == "cpu" and ready["precision"] in ("fp32", "bf16")
        assert ready["index"] == {"backend": "faiss", "kind": "Flat", "dim": 1536, "size": 0, "serving": None,
                                  "coarse_dim": None, "tombstones": 0, "nprobe": None, "ef_search": None,
                                  "refine_factor": None, "use_gpu": "auto", "blas_threshold": 1}
        assert ready["store"]["backend"] == "sqlite" and ready["store"]["writable"]
        assert ready["queue_depth"] == 0 and ready["training"] is None and ready["runtime"]
        expect_error(client.get("/gallery/1/similar"), 404, "not_found")  # empty gallery, unknown item

        files = [("files", (f"m{i}.png", make_image(300 + i))) for i in range(3)]
        added = client.post("/gallery", files=files)
        assert added.status_code == 201, added.text
        first = added.json()["items"][0]["id"]
        assert client.get(f"/gallery/{first}").status_code == 200
        assert client.get(f"/gallery/{first}").status_code == 200
        assert client.post("/search", files={"file": ("q.png", make_image(300))}).status_code == 200
        assert client.get("/no/such/route").status_code == 404
        assert client.delete(f"/gallery/{first}").status_code == 204
        ready = client.get("/ready").json()
        assert ready["store"]["items"] == 2 and ready["index"]["size"] == 2

        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        parsed = samples(response.text)

    latency = "cgd_http_request_duration_seconds"
    assert value(parsed, f"{latency}_count", method="GET", route="/gallery/{item_id}", status="200") == 2
    assert value(parsed, f"{latency}_count", method="POST", route="/gallery", status="201") == 1
    assert value(parsed, f"{latency}_count", method="GET", route="/gallery/{item_id}/similar",
                 status="404") == 1
    assert value(parsed, f"{latency}_count", method="GET", route=UNMATCHED_ROUTE, status="404") == 1
    assert value(parsed, f"{latency}_bucket", method="POST", route="/search", status="200", le="+Inf") == 1
    routes = {dict(labels).get("route") for name, labels in parsed if name.startswith(latency)}
    assert f"/gallery/{first}" not in routes, "raw paths must not become label values"

    # the worker embedded 3 (ingest) + 1 (search) images, in 2 or more forward passes
    assert value(parsed, "cgd_embed_batch_size_sum") == 4
    assert value(parsed, "cgd_embed_batch_size_count") >= 2
    assert value(parsed, "cgd_search_batch_size_sum") == 1
    assert value(parsed, "cgd_embed_queue_depth") == 0
    assert value(parsed, "cgd_gallery_items") == 2
    states = {state: value(parsed, "cgd_training_jobs", state=state) for state in JOB_STATES}
    assert states == {"queued": 0, "running": 0, "succeeded": 1, "failed": 2, "cancelled": 0}


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_operations_endpoints_are_cheap_gets(shared_client, path):
    assert shared_client.get(path).status_code == 200
    assert shared_client.post(path).status_code == 405
