"""`/models`: the known model versions, and activation (promotion by hand, or rollback)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.deps import RuntimeDep
from service.schemas import ModelList, ModelPublic
from service.security import require_read_key, require_write_key

router = APIRouter(prefix="/models", tags=["models"])


def _models(runtime) -> ModelList:
    stored = set(runtime.gallery.versions())
    active = runtime.worker.version
    return ModelList(
        active=active,
        models=[
            ModelPublic(version=r.version, active=r.version == active, created_at=r.created_at,
                        metrics=r.metrics, config=r.config, has_vectors=r.version in stored)
            for r in runtime.registry.records()
        ],
    )


@router.get("", response_model=ModelList, dependencies=[Depends(require_read_key)])
async def list_models(runtime: RuntimeDep) -> ModelList:
    return _models(runtime)


@router.post("/{version}/activate", response_model=ModelList, dependencies=[Depends(require_write_key)])
async def activate_model(runtime: RuntimeDep, version: str) -> ModelList:
    """Serve `version`: the gallery is re-embedded where it lacks its vectors, then swapped at once."""
    runtime.registry.get(version)
    await runtime.swapper.activate(version)
    return _models(runtime)
