"""Prometheus metrics of one app, in that app's own `CollectorRegistry`.

No metric lives in prometheus-client's global registry, so several apps can run in one process
(tests). The app builds one `ServiceMetrics`, calls `instrument(app)` before it starts, serves
`response()` at `/metrics`, and hands the object to the inference worker, which reports through
`observe_batch` and `set_queue_depth`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RUNTIMES = ("torch", "onnxruntime", "openvino")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
UNMATCHED_ROUTE = "<unmatched>"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """The service's metrics; `registry` defaults to a fresh `CollectorRegistry`.

    - `request_seconds{method, route, status}`: latency per route template (`/items/{item_id}`,
      never the raw URL; `<unmatched>` for unknown paths).
    - `batch_size`: images per forward pass of the inference worker.
    - `search_batch_size`: queries answered by one FAISS call (the search batcher).
    - `queue_depth`: images preprocessed and waiting for the model.
    - `gallery_size`: items in the gallery.
    - `training_jobs{state}`: training jobs per state.
    - `inference_runtime{runtime}`: 1 for the runtime the serving model runs on, 0 for the others.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = "cgd") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.request_seconds = Histogram(
            "http_request_duration_seconds", "HTTP request latency by route template",
            ("method", "route", "status"), namespace=namespace, registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "embed_batch_size", "Images per forward pass of the inference worker",
            namespace=namespace, registry=self.registry, buckets=BATCH_BUCKETS,
        )
        self.search_batch_size = Histogram(
            "search_batch_size", "Queries answered by one FAISS call",
            namespace=namespace, registry=self.registry, buckets=BATCH_BUCKETS,
        )
        self.queue_depth = Gauge(
            "embed_queue_depth", "Images waiting for the model", namespace=namespace, registry=self.registry,
        )
        self.gallery_size = Gauge(
            "gallery_items", "Items in the gallery", namespace=namespace, registry=self.registry,
        )
        self.training_jobs = Gauge(
            "training_jobs", "Training jobs by state", ("state",), namespace=namespace,
            registry=self.registry,
        )
        self.inference_runtime = Gauge(
            "inference_runtime", "1 for the inference runtime in use", ("runtime",), namespace=namespace,
            registry=self.registry,
        )
        self._job_states: set[str] = set(JOB_STATES)
        for state in JOB_STATES:
            self.training_jobs.labels(state=state).set(0)

    def observe_batch(self, size: int) -> None:
        """One forward pass of `size` images (called by the inference worker)."""
        self.batch_size.observe(size)

    def observe_search_batch(self, size: int) -> None:
        """One FAISS call answering `size` queries (called by the search batcher)."""
        self.search_batch_size.observe(size)

    def set_queue_depth(self, depth: int) -> None:
        """Images now waiting for the model (called by the inference worker)."""
        self.queue_depth.set(depth)

    def observe_jobs(self, counts: Mapping[str, int]) -> None:
        """Training jobs per state, e.g. `{"queued": 1, "succeeded": 3}`; absent states are 0."""
        self._job_states.update(counts)
        for state in self._job_states:
            self.training_jobs.labels(state=state).set(counts.get(state, 0))

    def set_runtime(self, runtime: str) -> None:
        """The inference runtime in use now (torch, onnxruntime or openvino)."""
        for name in {runtime, *RUNTIMES}:
            self.inference_runtime.labels(runtime=name).set(1 if name == runtime else 0)

    def instrument(self, app: FastAPI) -> None:
        """Time every HTTP request of `app` (call before the app starts)."""
        app.add_middleware(_LatencyMiddleware, histogram=self.request_seconds)

    def response(self) -> Response:
        """The `/metrics` response: the registry in Prometheus text format."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class _LatencyMiddleware:
    """Pure ASGI middleware: observes the latency of each HTTP request under its route template."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless a response starts: an exception escaped the app
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path_format", None) if isinstance(route, BaseRoute) else None
            labels = {"method": scope["method"], "route": template or UNMATCHED_ROUTE, "status": str(status)}
            self.histogram.labels(**labels).observe(elapsed)
