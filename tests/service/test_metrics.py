"""ServiceMetrics on real FastAPI apps: per-app registries, route templates, the /metrics response."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST

from service.errors import NotFound, register_exception_handlers
from service.metrics import JOB_STATES, UNMATCHED_ROUTE, ServiceMetrics


def build_app() -> FastAPI:
    app = FastAPI()
    app.state.metrics = ServiceMetrics()
    app.state.metrics.instrument(app)
    register_exception_handlers(app)

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        if item_id == 0:
            raise NotFound("no item 0")
        return {"item_id": item_id}

    @app.get("/bug")
    def bug() -> None:
        raise RuntimeError("boom")

    @app.get("/metrics")
    def metrics(request: Request) -> Response:
        return request.app.state.metrics.response()

    return app


def requests_seen(metrics: ServiceMetrics, route: str, status: str, method: str = "GET") -> float:
    value = metrics.registry.get_sample_value(
        "cgd_http_request_duration_seconds_count", {"method": method, "route": route, "status": status}
    )
    return value or 0.0


def test_latency_is_labelled_by_route_template_not_url() -> None:
    app = build_app()
    client = TestClient(app, raise_server_exceptions=False)
    for item_id in (1, 2, 3):
        assert client.get(f"/items/{item_id}").status_code == 200
    assert client.get("/items/0").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    assert client.get("/bug").status_code == 500
    metrics = app.state.metrics
    assert requests_seen(metrics, "/items/{item_id}", "200") == 3
    assert requests_seen(metrics, "/items/{item_id}", "404") == 1
    assert requests_seen(metrics, UNMATCHED_ROUTE, "404") == 1
    assert requests_seen(metrics, "/bug", "500") == 1
    assert requests_seen(metrics, "/items/1", "200") == 0


def test_two_apps_keep_separate_registries() -> None:
    first, second = build_app(), build_app()
    TestClient(first).get("/items/1")
    assert requests_seen(first.state.metrics, "/items/{item_id}", "200") == 1
    assert requests_seen(second.state.metrics, "/items/{item_id}", "200") == 0


def test_metrics_response_is_prometheus_text() -> None:
    app = build_app()
    metrics: ServiceMetrics = app.state.metrics
    metrics.gallery_size.set(42)
    metrics.observe_batch(8)
    metrics.set_queue_depth(3)
    response = TestClient(app).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    text = response.text
    assert "cgd_gallery_items 42.0" in text
    assert "cgd_embed_queue_depth 3.0" in text
    assert 'cgd_embed_batch_size_bucket{le="8.0"} 1.0' in text
    assert 'cgd_embed_batch_size_bucket{le="4.0"} 0.0' in text


def test_training_jobs_per_state_reset_when_absent() -> None:
    metrics = ServiceMetrics()
    sample = metrics.registry.get_sample_value
    assert all(sample("cgd_training_jobs", {"state": state}) == 0 for state in JOB_STATES)
    metrics.observe_jobs({"queued": 2, "running": 1, "paused": 1})
    assert sample("cgd_training_jobs", {"state": "queued"}) == 2
    assert sample("cgd_training_jobs", {"state": "paused"}) == 1
    metrics.observe_jobs({"succeeded": 3})
    assert sample("cgd_training_jobs", {"state": "queued"}) == 0
    assert sample("cgd_training_jobs", {"state": "paused"}) == 0
    assert sample("cgd_training_jobs", {"state": "succeeded"}) == 3
