"""`/models`: the known model versions, and activation jobs (promotion by hand, or rollback)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status

from service.activations import ActivationJob
from service.deps import RuntimeDep
from service.runtime import Runtime
from service.schemas import ActivationAccepted, ActivationPublic, ModelList, ModelPublic
from service.security import require_read_key, require_write_key

router = APIRouter(prefix="/models", tags=["models"])


async def _models(runtime: Runtime) -> ModelList:
    stored = set(await runtime.gateway.versions())
    active = runtime.worker.version
    return ModelList(
        active=active,
        models=[
            ModelPublic(version=r.version, active=r.version == active, created_at=r.created_at,
                        metrics=r.metrics, config=r.config, has_vectors=r.version in stored)
            for r in await runtime.gateway.run(runtime.registry.records)  # PostgreSQL: off the loop
        ],
    )


def _activation(job: ActivationJob) -> ActivationPublic:
    return ActivationPublic(id=job.id, version=job.version, status=job.status, reembedded=job.reembedded,
                            to_reembed=job.to_reembed, created_at=job.created_at,
                            finished_at=job.finished_at, seconds=job.seconds,
                            left_out_of_version=job.left_out_of_version, error=job.error)


@router.get("", response_model=ModelList, dependencies=[Depends(require_read_key)])
async def list_models(runtime: RuntimeDep) -> ModelList:
    return await _models(runtime)


@router.post("/{version}/activate", status_code=status.HTTP_202_ACCEPTED, response_model=ActivationAccepted,
             dependencies=[Depends(require_write_key)])
async def activate_model(runtime: RuntimeDep, version: str) -> ActivationAccepted:
    """Start serving `version`: a job re-embeds the gallery where it lacks its vectors, then swaps at once."""
    await runtime.gateway.run(runtime.registry.get, version)  # 404 for an unknown version, before any job
    return ActivationAccepted(job_id=runtime.activations.start(version).id)


@router.get("/activations/{job_id}", response_model=ActivationPublic,
            dependencies=[Depends(require_read_key)])
async def get_activation(runtime: RuntimeDep, job_id: str) -> ActivationPublic:
    """Status, progress (`reembedded` of `to_reembed`) and error of an activation job."""
    return _activation(runtime.activations.get(job_id))


@router.post("/activations/{job_id}/cancel", response_model=ActivationPublic,
             dependencies=[Depends(require_write_key)])
async def cancel_activation(runtime: RuntimeDep, job_id: str) -> ActivationPublic:
    """Stop a running activation at its next chunk; the model serving now keeps serving."""
    return _activation(runtime.activations.cancel(job_id))
