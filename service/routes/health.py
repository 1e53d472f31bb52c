"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.errors import NotReady
from service.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """The process is up (liveness)."""
    return Health(status="ok")


@router.get("/ready", response_model=Readiness, responses={503: {"description": "still starting"}})
async def ready(request: Request) -> Readiness:
    """The model is loaded and the gallery is open (readiness); 503 until then."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise NotReady("starting: the model and the gallery are loading")
    return Readiness(status="ready", model_version=runtime.worker.version,
                     gallery_size=runtime.gallery.count())


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.metrics.gallery_size.set(runtime.gallery.count())
        runtime.metrics.observe_jobs(runtime.jobs.count_by_status())
    return request.app.state.metrics.response()
