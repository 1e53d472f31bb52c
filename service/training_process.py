"""One training run in a spawned child process, so a crash or OOM in training cannot take the API down.

The parent sends a `TrainingSpec`; the child trains with `model.trainer.train` on capped threads
and sends back ("progress", dict) messages, then one ("result", dict) or ("error", str).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)
_SPAWN = mp.get_context("spawn")


@dataclass(frozen=True)
class TrainingSpec:
    """Everything the child needs, as plain data (it is pickled across the process boundary)."""

    images: list[tuple[str, str]]  # (image file, label)
    config: dict[str, Any]  # model.trainer.TrainConfig fields
    start_checkpoint: str | None  # None = the embedded default model
    out: str
    threads: int


class TrainingFailed(RuntimeError):
    """The child reported an error or died."""


def _child_main(spec: TrainingSpec, messages: mp.Queue, cancel: Any) -> None:
    import torch

    torch.set_num_threads(max(1, spec.threads))
    from model.data import LabelledImage
    from model.trainer import TrainConfig, train

    try:
        result = train(
            [LabelledImage(Path(path), label) for path, label in spec.images],
            TrainConfig(**spec.config),
            out=Path(spec.out),
            start=Path(spec.start_checkpoint) if spec.start_checkpoint else None,
            on_progress=lambda progress: messages.put(("progress", asdict(progress))),
            cancel=cancel,
        )
        summary = asdict(result)
        summary["checkpoint"] = str(result.checkpoint)
        messages.put(("result", summary))
    except Exception as exc:  # reported to the parent, which marks the job failed
        logging.getLogger(__name__).exception("training failed")
        messages.put(("error", f"{type(exc).__name__}: {exc}"))


def run_training(
    spec: TrainingSpec,
    on_progress: Callable[[dict[str, Any]], None],
    cancel_requested: Callable[[], bool],
    poll_s: float = 0.5,
) -> dict[str, Any]:
    """Run `spec` in a child process; blocks until it ends and returns the trainer's result."""
    messages: mp.Queue = _SPAWN.Queue()
    cancel = _SPAWN.Event()
    process = _SPAWN.Process(target=_child_main, args=(spec, messages, cancel), daemon=True,
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
            process.kill()
    kind, payload = outcome
    if kind == "error":
        raise TrainingFailed(payload)
    return payload
