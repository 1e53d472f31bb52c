"""The training queue: one job at a time, on a background thread, each in its own process.

A job collects the labelled gallery items that have an image (items imported as vectors without one are
left out, and counted in the job), fine-tunes the serving model on them in a child process
(`training_process`), compares old and new model on the held-out validation split,
registers the new checkpoint and, per the job's promotion policy, makes it live through
`ModelSwapper` (re-embedding the gallery while the old model keeps serving). When the service runs an
ONNX runtime (`export_onnx`), the child also exports the new model beside its checkpoint, at its low
priority, and the registry keeps that file with it: loading the model for the swap then exports nothing.

Replicas on one database share the queue (`JobStore.claim`: one job at a time cluster-wide). A second
thread sends the running job's heartbeat every `HEARTBEAT_S`, picks up cancel requests made on any
replica, and fails the jobs of replicas silent for `STALE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from index import EngineUnavailable
from model.data import LabelledImage
from model.splits import split_validation
from model.train_config import TrainConfig
from model.trainer import Progress, TrainResult
from service.errors import Conflict, InvalidParameter
from service.job_store import FINISHED, Job, JobStore
from service.model_registry import ModelRegistry
from service.model_swap import ModelSwapper, SwapCancelled
from service.schemas import Promotion, TrainRequest
from service.training_process import ServingEngine, TrainingSpec, run_training

LOG = logging.getLogger(__name__)
MIN_IMAGES_PER_LABEL = 2
DATABASE_RETRY_S = 5
HEARTBEAT_S = 2.0  # how often the running job's owner says it is alive and reads cancel requests
STALE_S = 30.0  # a running job whose owner has been silent this long is failed (its replica died)


def trainable_labels(label_counts: Counter[str]) -> list[str]:
    """Labels with enough images to form positive pairs."""
    return sorted(label for label, n in label_counts.items() if n >= MIN_IMAGES_PER_LABEL)


def check_trainable(images: list[LabelledImage], config: TrainConfig) -> None:
    """`InvalidParameter` for a job the trainer would refuse: a validation split (made as the
    trainer makes it) without 2 labels and a pair."""
    try:
        _, val, _ = split_validation(images, config.val_fraction, config.val_mode, config.seed)
    except ValueError as exc:
        raise InvalidParameter(f"training cannot start: {exc}") from exc
    per_label = Counter(image.label for image in val)
    if len(per_label) < 2 or max(per_label.values()) < 2:
        raise InvalidParameter(
            f"training cannot start: its validation split (val_fraction {config.val_fraction}) would hold "
            f"{dict(per_label)} images per label, and validation needs 2 labels, one with 2 images; "
            f"add labelled images or raise val_fraction"
        )


class TrainingQueue:
    """Persisted FIFO of training jobs with a single runner thread."""

    def __init__(self, jobs: JobStore, gallery, registry: ModelRegistry, swapper: ModelSwapper,
                 loop: asyncio.AbstractEventLoop, *, workdir: Path, threads: int,
                 default_max_minutes: float, replica: str | None = None, export_onnx: bool = False,
                 processes: int = 1, serving: Callable[[], ServingEngine] | None = None) -> None:
        """`replica`: this process's name among replicas sharing `jobs` (None: it has the store alone);
        `export_onnx`: the job's child exports a new model to ONNX beside its checkpoint; `processes`:
        data-parallel training processes of a job; `serving()`: the engine the service runs its model
        on, which validates the start model when it is that model (else torch does)."""
        self.jobs = jobs
        self._replica = replica
        self._owner = replica or socket.gethostname()
        self._gallery = gallery
        self._registry = registry
        self._swapper = swapper
        self._loop = loop
        self._workdir = workdir
        self._threads = threads
        self._default_max_minutes = default_max_minutes
        self._export_onnx = export_onnx
        self._processes = processes
        self._serving = serving
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancelled: set[str] = set()
        self._running: str | None = None
        self._thread = threading.Thread(target=self._run_forever, name="cgd-training-queue", daemon=True)
        self._heart = threading.Thread(target=self._beat_forever, name="cgd-training-heartbeat", daemon=True)

    def start(self) -> None:
        interrupted = self.jobs.fail_interrupted(self._replica)
        if interrupted:
            LOG.warning("%d training job(s) were interrupted by a restart and marked failed", interrupted)
        self._thread.start()
        self._heart.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop taking jobs and cancel the running one (it ends at its next step)."""
        self._stopping.set()
        running = self._running  # this process's job (not another replica's on a shared database)
        if running is not None:
            self._cancelled.add(running)
        self._wake.set()
        for thread in (self._thread, self._heart):
            if thread.is_alive():
                thread.join(timeout)

    def training_images(self, labels: list[str] | None) -> tuple[list[LabelledImage], int]:
        """The labelled gallery images a job trains on (those of labels with a pair or more), and how many
        labelled items (of `labels`) are left out because they have no image."""
        labelled = self._gallery.labelled_items(set(labels) if labels else None)
        items = [item for item in labelled if item.has_image]
        counts = Counter(item.label for item in items)
        usable = trainable_labels(counts)
        without_image = len(labelled) - len(items)
        if len(usable) < 2:
            raise InvalidParameter(
                f"training needs at least 2 labels with at least {MIN_IMAGES_PER_LABEL} images each; "
                f"the gallery has {len(usable)} (label counts: {dict(counts.most_common(10))})"
                + (f"; {without_image} labelled items have no image and cannot be trained on"
                   if without_image else "")
            )
        return [LabelledImage(self._gallery.image_path(item.id), item.label)
                for item in items if item.label in set(usable)], without_image

    def _serving_engine(self, start_version: str | None) -> ServingEngine | None:
        """The serving engine, when it runs the start model (its cached export is then that model's)."""
        serving = self._serving() if self._serving is not None else None
        return serving if serving is not None and serving.version == start_version else None

    def submit(self, request: TrainRequest) -> Job:
        """Queue a job after checking that the gallery has enough labelled items for it."""
        try:
            config = request.train_config(self._default_max_minutes)
        except ValueError as exc:
            raise InvalidParameter(f"training cannot start: {exc}") from exc
        check_trainable(self.training_images(request.labels)[0], config)
        job = self.jobs.create(request.model_dump(mode="json", exclude_none=True))
        self._wake.set()
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask the running job's owner (any replica) to stop it."""
        job = self.jobs.get(job_id)
        if job.status in FINISHED:
            raise Conflict(f"job {job_id} has already {job.status}")
        if not self.jobs.cancel_queued(job_id):  # it started meanwhile, here or on another replica
            if job_id == self._running:
                self._cancelled.add(job_id)
            self.jobs.request_cancel(job_id)
        return self.jobs.get(job_id)

    def _beat_forever(self) -> None:
        """The running job's heartbeat and cancel requests; other replicas' silent jobs failed."""
        while not self._stopping.wait(HEARTBEAT_S):
            running = self._running
            try:
                if running is not None and self.jobs.heartbeat(running):
                    self._cancelled.add(running)
                stale = self.jobs.fail_stale(STALE_S)
            except EngineUnavailable:  # the queue's thread reports it
                continue
            if stale:
                LOG.warning("%d training job(s) of a replica that stopped answering marked failed", stale)

    def _run_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.jobs.claim(self._owner)
            except EngineUnavailable as exc:  # the jobs' database is down: wait for it, do not die
                LOG.warning("training queue: %s; trying again in %d s", exc, DATABASE_RETRY_S)
                self._stopping.wait(DATABASE_RETRY_S)
                continue
            if job is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._running = job.id
            try:
                self._run(job)
            except Exception as exc:  # one failed job must not stop the queue
                LOG.exception("training job %s failed", job.id)
                with contextlib.suppress(EngineUnavailable):  # else marked failed at the next start
                    self.jobs.update(job.id, status="failed", finished_at=time.time(),
                                      error=f"{type(exc).__name__}: {exc}")
            finally:
                self._running = None

    def _run(self, job: Job) -> None:
        started = job.started_at or time.time()
        request = TrainRequest.model_validate(job.params)
        images, without_image = self.training_images(request.labels)
        if without_image:
            LOG.warning("training job %s: %d labelled items have no image and are left out", job.id,
                        without_image)
        start_model = self._registry.active
        spec = TrainingSpec(images=[(str(image.path), image.label) for image in images],
                            config=request.train_config(self._default_max_minutes),
                            start_checkpoint=start_model.checkpoint if start_model else None,
                            out=str(self._workdir / f"{job.id}.pt"), threads=self._threads,
                            export_onnx=self._export_onnx, processes=self._processes,
                            serving=self._serving_engine(start_model.version if start_model else None))

        last: dict[str, Any] = {"history": []}  # the epochs' records so far, for the job's curves

        def on_progress(progress: Progress) -> None:
            if progress.epoch_record is not None:  # an epoch validated: its record joins the history
                last["history"] = [*last["history"], progress.epoch_record]
            else:
                last.update({k: v for k, v in asdict(progress).items() if k != "epoch_record"})
            self.jobs.update(job.id, progress=dict(last))

        outcome = run_training(spec, on_progress, lambda: job.id in self._cancelled)
        summary = {
            "baseline_metrics": outcome.baseline,
            "new_metrics": outcome.best,
            "improved": outcome.improved,
            "training_seconds": round(time.time() - started, 1),
            "images": len(images),
            "labels": len({image.label for image in images}),
            "left_out_of_training": without_image,
            "start_model": start_model.version if start_model else None,
            "recipe": outcome.recipe,
            "history": outcome.history,
        }
        if outcome.stopped == "cancelled":
            reason = "cancelled: the service stopped" if self._stopping.is_set() else "cancelled by request"
            self.jobs.update(job.id, status="cancelled", finished_at=time.time(),
                              result={**summary, "promoted": False, "message": reason})
            return
        if outcome.kept_start_model:  # unchanged weights: no new version, nothing to re-embed
            summary.update(model_version=None, promoted=False,
                           message=_message(outcome, False, request.promote))
            self.jobs.update(job.id, status="succeeded", finished_at=time.time(), result=summary,
                              progress=_done(last))
            return
        record = self._registry.add_checkpoint(Path(outcome.checkpoint))
        promote = request.promote is Promotion.ALWAYS or (
            request.promote is Promotion.IF_BETTER and outcome.improved)
        summary.update(model_version=record.version, promoted=promote,
                       message=_message(outcome, promote, request.promote))
        if promote:
            self.jobs.update(job.id, result=summary, progress={**last, "phase": "re-embedding"})
            future = asyncio.run_coroutine_threadsafe(
                self._swapper.activate(record.version, on_progress=self._reembed_progress(job.id, last),
                                       cancelled=lambda: job.id in self._cancelled),
                self._loop,
            )
            try:
                swapped = future.result()
            except SwapCancelled:  # the old model keeps serving
                why = "the service stopped" if self._stopping.is_set() else "by request"
                summary.update(promoted=False,
                               message=f"cancelled {why} while re-embedding; the old model serves")
                self.jobs.update(job.id, status="cancelled", finished_at=time.time(), result=summary,
                                  progress={**last, "phase": "re-embedding"})
                return
            summary.update(reembedding_seconds=round(swapped.seconds, 1),
                           left_out_of_version=swapped.left_out)
            if swapped.left_out:
                summary["message"] += (f"; {swapped.left_out} items without an image are not in version "
                                       f"{record.version} (cgd import can supply their images)")
        self.jobs.update(job.id, status="succeeded", finished_at=time.time(), result=summary,
                          progress=_done(last))

    def _reembed_progress(self, job_id: str, training: dict[str, Any]) -> Callable[[int, int], None]:
        """Re-embedding progress: the training figures stay, `reembedded` / `to_reembed` count images
        (kept in `training`, so the job's final progress still has them)."""
        def report(done: int, total: int) -> None:
            training.update(reembedded=done, to_reembed=total)
            self.jobs.update(job_id, progress={**training, "phase": "re-embedding"})

        return report


def _done(last: dict[str, Any]) -> dict[str, Any]:
    """A finished job's progress: the steps and epochs it ran (a run may converge before its plan),
    nothing left to wait for."""
    return {**last, "phase": "done", "steps": last.get("step", 0), "epochs": last.get("epoch", 0),
            "eta_s": 0.0}


def _message(outcome: TrainResult, promoted: bool, policy: Promotion) -> str:
    old, new = outcome.baseline.get("map@r"), outcome.best.get("map@r")
    gain = outcome.recipe.get("map_gain") or {}
    comparison = f"validation MAP@R {old:.4f} -> {new:.4f}" if old is not None and new is not None else ""
    if gain:
        comparison += f", gain {gain['mean']:+.4f} with bootstrap lower bound {gain['lower']:+.4f}"
    if promoted:
        return f"promoted: the new model serves the gallery ({comparison})"
    if outcome.kept_start_model:
        return (f"kept the serving model: training did not beat it beyond validation noise ({comparison}); "
                f"no new model version was registered")
    if policy is Promotion.NEVER:
        return f"not promoted (promote=never) ({comparison})"
    return f"not promoted: training did not beat the serving model beyond validation noise ({comparison})"
