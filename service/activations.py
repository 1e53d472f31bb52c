"""Activation jobs: `POST /models/{version}/activate` runs the swap in the background and answers at once.

A job re-embeds the gallery for the version (progress: `reembedded` of `to_reembed`), then switches
model and index (`ModelSwapper`); `left_out_of_version` counts the items without an image that the
version does not hold. Jobs live in memory, the last `KEEP_FINISHED` finished ones kept:
an activation interrupted by a restart never switched, so the old model serves after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

from service.errors import Conflict, NotFound
from service.model_swap import ModelSwapper, SwapCancelled

LOG = logging.getLogger(__name__)

KEEP_FINISHED = 100
ActivationStatus = Literal["running", "succeeded", "failed", "cancelled"]


@dataclass
class ActivationJob:
    """One activation: what it switches to, how far it is, how it ended."""

    id: str
    version: str
    created_at: float
    status: ActivationStatus = "running"
    reembedded: int = 0
    to_reembed: int = 0
    finished_at: float | None = None
    seconds: float | None = None
    left_out_of_version: int | None = None
    error: str | None = None
    cancel_requested: bool = field(default=False, repr=False)


class Activations:
    """Starts, follows and cancels activation jobs; one swap runs at a time (the swapper's lock)."""

    def __init__(self, swapper: ModelSwapper) -> None:
        self._swapper = swapper
        self._jobs: dict[str, ActivationJob] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, version: str) -> ActivationJob:
        """A running job switching to `version` (already checked to be registered)."""
        job = ActivationJob(id=uuid.uuid4().hex[:16], version=version, created_at=time.time())
        self._jobs[job.id] = job
        self._tasks[job.id] = asyncio.create_task(self._run(job), name=f"cgd-activation-{job.id}")
        self._forget_old()
        return job

    def get(self, job_id: str) -> ActivationJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"unknown activation job {job_id!r}")
        return job

    def cancel(self, job_id: str) -> ActivationJob:
        """Stop a running job at its next chunk (before the switch); the old model keeps serving."""
        job = self.get(job_id)
        if job.status != "running":
            raise Conflict(f"activation job {job_id} has already {job.status}")
        job.cancel_requested = True
        return job

    async def stop(self) -> None:
        """Cancel the running jobs and wait for them (at shutdown)."""
        for job in self._jobs.values():
            job.cancel_requested = True
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, job: ActivationJob) -> None:
        def progress(done: int, total: int) -> None:
            job.reembedded, job.to_reembed = done, total

        try:
            result = await self._swapper.activate(job.version, progress, lambda: job.cancel_requested)
            job.seconds, job.left_out_of_version = round(result.seconds, 1), result.left_out
            job.status = "succeeded"
        except SwapCancelled:
            job.status = "cancelled"
        except Exception as exc:  # reported in the job, which is how the client learns of it
            LOG.exception("activation of %s failed", job.version)
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_at = time.time()
            self._tasks.pop(job.id, None)

    def _forget_old(self) -> None:
        finished = [job for job in self._jobs.values() if job.status != "running"]
        for job in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job.id]
