"""`create_app(settings)`: builds the FastAPI application; nothing happens at import."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

import index
from service.content_policy import ContentPolicy
from service.errors import ErrorTable, register_exception_handlers
from service.gc_freeze import freeze_startup_objects
from service.limits import BodyLimits
from service.metrics import ServiceMetrics
from service.openapi import install_openapi
from service.pixel_budget import PixelBudget
from service.routes import gallery, health, models, search, train
from service.routes.console import install_console
from service.runtime import GALLERY_DIR
from service.settings import Settings
from service.startup import RuntimeStarter
from service.storage_health import StorageHealth, register_storage_faults
from service.thumbnails import THUMBNAIL_DIR, Thumbnails

LOG = logging.getLogger(__name__)

DESCRIPTION = """
Finds the gallery images most similar to an uploaded one, with CGD embeddings (SPoC + GeM
descriptors over EfficientNet-Lite0) and a FAISS inner-product index, and fine-tunes itself on
the labelled gallery on request (`POST /train`). Errors are JSON: `{"detail": ..., "code": ...}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service app; the model and the gallery open in its lifespan, not here."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        freeze_startup_objects()  # before the model loads: full GC passes skip the imported modules
        starter = RuntimeStarter(app, settings)  # an unreachable database or Milvus: 503s and retries
        await starter.start()
        try:
            yield
        finally:
            await starter.stop()
            LOG.info("stopped cleanly")

    # /docs and /redoc come from install_console: their assets are served from the package
    app = FastAPI(title="CGD image retrieval", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.runtime = None
    app.state.metrics = ServiceMetrics()
    app.add_middleware(BodyLimits, max_bytes=settings.max_request_bytes, timeout_s=settings.body_timeout_s)
    app.state.metrics.instrument(app)  # outside BodyLimits: its 408/413 are counted too
    app.add_middleware(ContentPolicy)  # outermost: every response carries the CSP
    app.state.pixel_budget = PixelBudget(settings.max_decoded_pixels)
    app.state.storage = StorageHealth([settings.data_dir, settings.data_dir / GALLERY_DIR])
    app.state.thumbnails = Thumbnails(settings.data_dir / THUMBNAIL_DIR)
    register_gallery_errors(register_exception_handlers(app))
    register_storage_faults(app)
    for module in (gallery, search, train, models, health):
        app.include_router(module.router)
    install_console(app)
    install_openapi(app)
    return app


def register_gallery_errors(errors: ErrorTable) -> None:
    """The status and code of each `index/` exception that can reach a client."""
    for exc_type, status_code, code in (
        (index.ItemNotFound, 404, "not_found"),
        (index.VectorNotFound, 404, "not_found"),
        (index.NoImage, 404, "no_image"),
        (index.UnknownVersion, 404, "unknown_version"),
        (index.InvalidItem, 422, "invalid_parameter"),
        (index.InvalidFilter, 422, "invalid_parameter"),
        (index.InvalidQuery, 422, "invalid_parameter"),
        (index.VersionInUse, 409, "conflict"),
        (index.NotEnoughData, 409, "not_enough_data"),
        (index.GalleryLocked, 503, "not_ready"),
        (index.EngineUnavailable, 503, "unavailable"),
        (index.VersionMoved, 503, "unavailable"),
    ):
        errors.register(exc_type, status_code, code)
