"""FastAPI dependencies: each handler's signature says what it needs.

They are `async` (they never block): FastAPI runs a plain `def` dependency in its thread pool, a thread
hop per dependency and request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import NotReady
from service.gallery_gateway import GalleryGateway
from service.runtime import Runtime
from service.settings import Settings
from service.thumbnails import Thumbnails
from service.training_queue import TrainingQueue
from service.worker import InferenceWorker


async def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        unreachable = getattr(request.app.state, "start_error", None)
        if unreachable:
            raise NotReady(f"the gallery's server does not answer ({unreachable}); the service retries "
                           "by itself")
        raise NotReady("the service is starting: the model and the gallery are not loaded yet")
    return runtime


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_thumbnails(request: Request) -> Thumbnails:
    return request.app.state.thumbnails


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ThumbnailsDep = Annotated[Thumbnails, Depends(get_thumbnails)]


async def get_gateway(runtime: RuntimeDep) -> GalleryGateway:
    return runtime.gateway


async def get_worker(runtime: RuntimeDep) -> InferenceWorker:
    return runtime.worker


async def get_training(runtime: RuntimeDep) -> TrainingQueue:
    return runtime.training


GatewayDep = Annotated[GalleryGateway, Depends(get_gateway)]
WorkerDep = Annotated[InferenceWorker, Depends(get_worker)]
TrainingDep = Annotated[TrainingQueue, Depends(get_training)]
