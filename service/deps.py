"""FastAPI dependencies: each handler's signature says what it needs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from index import Gallery
from service.errors import NotReady
from service.runtime import Runtime
from service.settings import Settings
from service.training_queue import TrainingQueue
from service.worker import InferenceWorker


def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise NotReady("the service is starting: the model and the gallery are not loaded yet")
    return runtime


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_gallery(runtime: RuntimeDep) -> Gallery:
    return runtime.gallery


def get_worker(runtime: RuntimeDep) -> InferenceWorker:
    return runtime.worker


def get_training(runtime: RuntimeDep) -> TrainingQueue:
    return runtime.training


GalleryDep = Annotated[Gallery, Depends(get_gallery)]
WorkerDep = Annotated[InferenceWorker, Depends(get_worker)]
TrainingDep = Annotated[TrainingQueue, Depends(get_training)]
