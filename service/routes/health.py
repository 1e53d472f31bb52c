"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

import index
from service.readiness import readiness
from service.schemas import Health, Readiness

router = APIRouter(tags=["operations"])
READY_RETRY_AFTER_S = 5


@router.get("/health", response_model=Health)
async def health() -> Health:
    """The process is up (liveness)."""
    return Health(status="ok")


@router.get("/ready", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "not ready: `reasons` says why"}})
async def ready(request: Request) -> JSONResponse:
    """Readiness: the model, the index and the store can serve; 503 with the same body otherwise."""
    status = await readiness(request.app)
    if status.ready:
        return JSONResponse(status.model_dump(mode="json"))
    return JSONResponse(status.model_dump(mode="json"), status_code=503,
                        headers={"Retry-After": str(READY_RETRY_AFTER_S)})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.metrics.set_runtime(runtime.worker.embedder.runtime)
        with contextlib.suppress(index.EngineUnavailable):  # a database outage: the last values stay
            runtime.metrics.gallery_size.set(await runtime.gateway.count())
            runtime.metrics.observe_jobs(await runtime.gateway.run(runtime.jobs.count_by_status))
    return request.app.state.metrics.response()
