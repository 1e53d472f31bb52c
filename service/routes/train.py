"""`/train`: start, follow and cancel fine-tuning jobs on the labelled gallery."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, status

from service.deps import GatewayDep, TrainingDep
from service.job_store import Job
from service.schemas import JobAccepted, JobList, JobProgress, JobPublic, TrainRequest
from service.security import require_read_key, require_write_key

router = APIRouter(prefix="/train", tags=["training"])


def job_public(job: Job) -> JobPublic:
    result = job.result
    progress = {k: v for k, v in (job.progress or {}).items() if k in JobProgress.model_fields}
    return JobPublic(
        id=job.id, status=job.status, params=job.params, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at,
        progress=JobProgress(**progress) if job.progress else None,
        baseline_metrics=result.get("baseline_metrics"), new_metrics=result.get("new_metrics"),
        model_version=result.get("model_version"), promoted=result.get("promoted"),
        message=result.get("message"), error=job.error,
        training_seconds=result.get("training_seconds"),
        reembedding_seconds=result.get("reembedding_seconds"), recipe=result.get("recipe"),
        left_out_of_training=result.get("left_out_of_training"),
        left_out_of_version=result.get("left_out_of_version"),
        history=result.get("history") or (job.progress or {}).get("history") or [],
        replica=job.owner, cancel_requested=job.cancel_requested,
    )


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted,
             dependencies=[Depends(require_write_key)])
async def start_training(training: TrainingDep, gateway: GatewayDep,
                         request: TrainRequest | None = None) -> JobAccepted:
    """Queue a fine-tuning job on the labelled gallery items (all fields optional)."""
    job = await gateway.run(training.submit, request or TrainRequest())
    return JobAccepted(job_id=job.id, status=job.status)


@router.get("", response_model=JobList, dependencies=[Depends(require_read_key)])
async def list_jobs(training: TrainingDep, gateway: GatewayDep,
                    limit: int = Query(100, ge=1, le=1000)) -> JobList:
    """Most recent jobs first."""
    return JobList(jobs=[job_public(j) for j in await gateway.run(training.jobs.list, limit)])


@router.get("/{job_id}", response_model=JobPublic, dependencies=[Depends(require_read_key)])
async def get_job(training: TrainingDep, gateway: GatewayDep, job_id: str) -> JobPublic:
    """Status, progress, old and new validation metrics, resulting model version, error."""
    return job_public(await gateway.run(training.jobs.get, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic, dependencies=[Depends(require_write_key)])
async def cancel_job(training: TrainingDep, gateway: GatewayDep, job_id: str) -> JobPublic:
    """Cancel a queued job at once, or a running one at its next training step or re-embedding chunk
    (the model serving now keeps serving)."""
    return job_public(await gateway.run(training.cancel, job_id))
