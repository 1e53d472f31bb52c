"""The training queue: one job at a time, on a background thread, each in its own process.

A job collects the labelled gallery items, fine-tunes the serving model on them in a child
process (`training_process`), compares old and new model on the held-out validation split,
registers the new checkpoint and, per the job's promotion policy, makes it live through
`ModelSwapper` (re-embedding the gallery while the old model keeps serving).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.data import LabelledImage
from model.splits import split_validation
from model.trainer import TrainConfig
from service.errors import Conflict, InvalidParameter
from service.job_store import FINISHED, Job, JobStore
from service.model_registry import ModelRegistry
from service.model_swap import ModelSwapper
from service.training_process import TrainingSpec, run_training

LOG = logging.getLogger(__name__)
MIN_IMAGES_PER_LABEL = 2

# Request fields -> model.trainer.TrainConfig fields (only those the client set are passed).
_CONFIG_FIELDS = {"loss": "loss", "epochs": "epochs", "lr": "lr", "batch_size": "batch_size",
                  "image_size": "image_size", "descriptors": "descriptors",
                  "val_fraction": "val_fraction", "max_minutes": "max_minutes"}


def trainable_labels(label_counts: Counter[str]) -> list[str]:
    """Labels with enough images to form positive pairs."""
    return sorted(label for label, n in label_counts.items() if n >= MIN_IMAGES_PER_LABEL)


def train_config(params: dict[str, Any], default_max_minutes: float) -> dict[str, Any]:
    """The `model.trainer.TrainConfig` fields of a job's request parameters."""
    config = {field: params[key] for key, field in _CONFIG_FIELDS.items() if params.get(key) is not None}
    config.setdefault("max_minutes", default_max_minutes)
    config["progress_bar"] = False
    # promote=always promotes what training made, even when the start model validates better.
    config["keep_start_if_not_better"] = params.get("promote", "if_better") != "always"
    return config


def check_trainable(labels: list[str], config: dict[str, Any]) -> None:
    """`InvalidParameter` for a job the trainer would refuse: an impossible recipe, or a validation
    split (made as the trainer makes it, from the images' `labels`) without 2 labels and a pair."""
    try:
        recipe = TrainConfig(**config)
        _, val, _ = split_validation([LabelledImage(Path(), label) for label in labels],
                                     recipe.val_fraction, recipe.val_mode, recipe.seed)
    except ValueError as exc:
        raise InvalidParameter(f"training cannot start: {exc}") from exc
    per_label = Counter(image.label for image in val)
    if len(per_label) < 2 or max(per_label.values()) < 2:
        raise InvalidParameter(
            f"training cannot start: its validation split (val_fraction {recipe.val_fraction}) would hold "
            f"{dict(per_label)} images per label, and validation needs 2 labels, one with 2 images; "
            f"add labelled images or raise val_fraction"
        )


class TrainingQueue:
    """Persisted FIFO of training jobs with a single runner thread."""

    def __init__(self, jobs: JobStore, gallery, registry: ModelRegistry, swapper: ModelSwapper,
                 loop: asyncio.AbstractEventLoop, *, workdir: Path, threads: int,
                 default_max_minutes: float) -> None:
        self.jobs = jobs
        self._gallery = gallery
        self._registry = registry
        self._swapper = swapper
        self._loop = loop
        self._workdir = workdir
        self._threads = threads
        self._default_max_minutes = default_max_minutes
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancelled: set[str] = set()
        self._thread = threading.Thread(target=self._run_forever, name="cgd-training-queue", daemon=True)

    def start(self) -> None:
        interrupted = self.jobs.fail_interrupted()
        if interrupted:
            LOG.warning("%d training job(s) were interrupted by a restart and marked failed", interrupted)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop taking jobs and cancel the running one (it ends at its next step)."""
        self._stopping.set()
        for job in self.jobs.list():
            if job.status == "running":
                self._cancelled.add(job.id)
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, params: dict[str, Any]) -> Job:
        """Queue a job after checking that the gallery has enough labelled items for it."""
        labels = params.get("labels")
        counts = Counter(item.label for item in self._gallery.labelled_items(set(labels) if labels else None))
        usable = trainable_labels(counts)
        if len(usable) < 2:
            raise InvalidParameter(
                f"training needs at least 2 labels with at least {MIN_IMAGES_PER_LABEL} images each; "
                f"the gallery has {len(usable)} (label counts: {dict(counts.most_common(10))})"
            )
        check_trainable([label for label in usable for _ in range(counts[label])],
                        train_config(params, self._default_max_minutes))
        job = self.jobs.create(params)
        self._wake.set()
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job.status in FINISHED:
            raise Conflict(f"job {job_id} has already {job.status}")
        if job.status == "queued":
            self.jobs.update(job_id, status="cancelled", finished_at=time.time())
        else:
            self._cancelled.add(job_id)
        return self.jobs.get(job_id)

    def _run_forever(self) -> None:
        while not self._stopping.is_set():
            job = self.jobs.next_queued()
            if job is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception as exc:  # one failed job must not stop the queue
                LOG.exception("training job %s failed", job.id)
                self.jobs.update(job.id, status="failed", finished_at=time.time(),
                                  error=f"{type(exc).__name__}: {exc}")

    def _run(self, job: Job) -> None:
        started = time.time()
        self.jobs.update(job.id, status="running", started_at=started, progress={"phase": "preparing"})
        params = job.params
        labels = params.get("labels")
        items = self._gallery.labelled_items(set(labels) if labels else None)
        usable = set(trainable_labels(Counter(item.label for item in items)))
        images = [(str(self._gallery.image_path(item.id)), item.label)
                  for item in items if item.label in usable]
        start_model = self._registry.active
        spec = TrainingSpec(images=images, config=train_config(params, self._default_max_minutes),
                            start_checkpoint=start_model.checkpoint if start_model else None,
                            out=str(self._workdir / f"{job.id}.pt"), threads=self._threads)

        last: dict[str, Any] = {}

        def on_progress(progress: dict[str, Any]) -> None:
            last.update(progress)
            self.jobs.update(job.id, progress={**progress, "phase": "training"})

        outcome = run_training(spec, on_progress, lambda: job.id in self._cancelled)
        training_s = time.time() - started
        summary = {
            "baseline_metrics": outcome["baseline"],
            "new_metrics": outcome["best"],
            "improved": outcome["improved"],
            "training_seconds": round(training_s, 1),
            "images": len(images),
            "labels": len(usable),
            "start_model": start_model.version if start_model else None,
        }
        if outcome["stopped"] == "cancelled":
            reason = "cancelled: the service stopped" if self._stopping.is_set() else "cancelled by request"
            self.jobs.update(job.id, status="cancelled", finished_at=time.time(),
                              result={**summary, "promoted": False, "message": reason})
            return
        record = self._registry.add_checkpoint(Path(outcome["checkpoint"]))
        policy = params.get("promote", "if_better")
        promote = {"always": True, "never": False}.get(policy, outcome["improved"])
        summary.update(model_version=record.version, promoted=promote, message=_message(outcome, promote))
        if promote:
            self.jobs.update(job.id, result=summary, progress={**last, "phase": "re-embedding"})
            future = asyncio.run_coroutine_threadsafe(
                self._swapper.activate(record.version, on_progress=self._reembed_progress(job.id, last)),
                self._loop,
            )
            summary["reembedding_seconds"] = round(future.result(), 1)
        self.jobs.update(job.id, status="succeeded", finished_at=time.time(), result=summary,
                          progress={**last, "phase": "done"})

    def _reembed_progress(self, job_id: str, training: dict[str, Any]) -> Callable[[int, int], None]:
        """Re-embedding progress: the training figures stay, `reembedded` / `to_reembed` count images
        (kept in `training`, so the job's final progress still has them)."""
        def report(done: int, total: int) -> None:
            training.update(reembedded=done, to_reembed=total)
            self.jobs.update(job_id, progress={**training, "phase": "re-embedding"})

        return report


def _message(outcome: dict[str, Any], promoted: bool) -> str:
    old, new = outcome["baseline"].get("map@r"), outcome["best"].get("map@r")
    comparison = f"validation MAP@R {old:.4f} -> {new:.4f}" if old is not None and new is not None else ""
    if promoted:
        return f"promoted: the new model serves the gallery ({comparison})"
    if not outcome["improved"]:
        return f"not promoted: training did not beat the current model ({comparison}); it keeps serving"
    return f"not promoted (promote=never) ({comparison})"
