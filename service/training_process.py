"""One training run in a spawned child process, so a crash or OOM in training cannot take the API down.

The parent sends a `TrainingSpec` (with the `TrainConfig` itself); the child trains with
`model.trainer.train` and sends back ("progress", Progress) messages, then one ("result",
TrainResult) or ("error", str). The child runs at a lower scheduling priority (nice 10) on all the
threads it is given: it takes every idle core, and the serving process wins whenever it has work.
With `processes` > 1 the child launches that many data-parallel training processes
(`model.distributed.launch`: nccl with one GPU each, gloo on the CPU), which inherit its priority and
share its threads; rank 0 reports the progress, every rank reads the cancel flag, and the result's
recipe names the processes.
With `export_onnx`, the child also exports a new model to ONNX beside its checkpoint
(`model.onnx_export.export_path`), so that the serving process loads that file instead of exporting
it while it serves. With `serving`, the start model's validation (when the feature cache cannot give
it) runs on the engine that serves it, from the export the service already holds.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from model.train_config import TrainConfig
from model.trainer import Progress, TrainResult

LOG = logging.getLogger(__name__)
_SPAWN = mp.get_context("spawn")


@dataclass(frozen=True)
class ServingEngine:
    """The engine the service runs the start model on: its version, runtime, precision and device, and
    the engine cache (`Embedder`'s `cache_dir`) that holds its export."""

    version: str
    runtime: str
    precision: str
    device: str
    cache_dir: str


@dataclass(frozen=True)
class TrainingSpec:
    """Everything the child needs, as plain data (it is pickled across the process boundary)."""

    images: list[tuple[str, str]]  # (image file, label)
    config: TrainConfig
    start_checkpoint: str | None  # None = the embedded default model
    out: str
    threads: int  # 0: every core
    nice: int = 10
    export_onnx: bool = False  # the service runs an ONNX runtime: export a new model beside its checkpoint
    processes: int = 1  # data-parallel training processes (`model.distributed.default_processes`)
    serving: ServingEngine | None = None  # None: the start model is validated on torch


class TrainingFailed(RuntimeError):
    """The child reported an error or died."""


def _child_main(spec: TrainingSpec, messages: mp.Queue, cancel: Any) -> None:
    from model.distributed import launch

    os.nice(spec.nice)
    try:
        if spec.processes > 1:
            result = launch(spec.processes, _train_rank, spec, messages, cancel)
        else:
            result = _train_rank(spec, messages, cancel)
        if spec.export_onnx and not result.kept_start_model and result.stopped != "cancelled":
            _export_beside(result.checkpoint)
            if cancel.is_set():  # asked during the export: the job ends cancelled, nothing is promoted
                result = replace(result, stopped="cancelled")
        messages.put(("result", result))
    except Exception as exc:  # reported to the parent, which marks the job failed
        logging.getLogger(__name__).exception("training failed")
        messages.put(("error", f"{type(exc).__name__}: {exc}"))


def _train_rank(spec: TrainingSpec, messages: mp.Queue, cancel: Any) -> TrainResult:
    """Train as this process's rank (the only one unless `spec.processes` > 1), on its share of the
    threads; rank 0 reports the progress. Every rank returns the result (rank 0's)."""
    import torch

    from model.data import LabelledImage
    from model.distributed import init_from_env, shutdown
    from model.embedder import Embedder
    from model.trainer import train

    ranks = init_from_env(spec.config.device)
    torch.set_num_threads(max(1, (spec.threads or os.cpu_count() or 1) // ranks.local_world_size))
    serving = spec.serving
    start_embedder = None if serving is None else functools.partial(
        Embedder, version=serving.version, runtime=serving.runtime, precision=serving.precision,
        device=serving.device, cache_dir=Path(serving.cache_dir))
    try:
        result = train(
            [LabelledImage(Path(path), label) for path, label in spec.images],
            spec.config,
            out=Path(spec.out),
            start=Path(spec.start_checkpoint) if spec.start_checkpoint else None,
            on_progress=(lambda progress: messages.put(("progress", progress))) if ranks.is_main else None,
            cancel=cancel,
            ranks=ranks,
            start_embedder=start_embedder,
        )
    finally:
        shutdown()
    return replace(result, recipe={**result.recipe, "processes": ranks.world_size})


def _export_beside(checkpoint: Path) -> None:
    """The checkpoint's model exported to ONNX beside it; a failure is logged, and the serving process
    then exports it itself."""
    from model.checkpoint import load_checkpoint
    from model.onnx_export import export_onnx, export_path

    started = time.perf_counter()
    try:
        loaded = load_checkpoint(checkpoint)
        export_onnx(loaded.model, export_path(checkpoint), loaded.version)
    except Exception:  # the exporter raises many types; the model is trained and saved all the same
        LOG.exception("ONNX export beside %s failed: the service will export it when it loads it", checkpoint)
        return
    LOG.info("exported %s to ONNX in %.1f s", checkpoint, time.perf_counter() - started)


def run_training(
    spec: TrainingSpec,
    on_progress: Callable[[Progress], None],
    cancel_requested: Callable[[], bool],
    poll_s: float = 0.5,
) -> TrainResult:
    """Run `spec` in a child process; blocks until it ends and returns the trainer's result."""
    messages: mp.Queue = _SPAWN.Queue()
    cancel = _SPAWN.Event()
    # A daemonic process may not start processes: a data-parallel child is not one (it is killed below
    # all the same when it outlives the run).
    process = _SPAWN.Process(target=_child_main, args=(spec, messages, cancel), daemon=spec.processes == 1,
                             name="cgd-training")
    process.start()
    outcome: tuple[str, Any] | None = None
    try:
        while outcome is None:
            if cancel_requested():
                cancel.set()
            try:
                kind, payload = messages.get(timeout=poll_s)
            except queue.Empty:
                if not process.is_alive():
                    time.sleep(poll_s)  # a last message may still be in the pipe
                    if messages.empty():
                        raise TrainingFailed(
                            f"training process died (exit code {process.exitcode})"
                        ) from None
                continue
            if kind == "progress":
                on_progress(payload)
            else:
                outcome = (kind, payload)
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()  # a data-parallel child stops its ranks on SIGTERM
            process.join(timeout=10)
        if process.is_alive():
            process.kill()
    kind, payload = outcome
    if kind == "error":
        raise TrainingFailed(payload)
    return payload
