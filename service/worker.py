"""`InferenceWorker`: the only code that holds the model; it batches embedding requests.

How a request flows (`await worker.embed(images)`):

1. Admission: the request's images count against `max_queue_size` (images preprocessing or
   waiting); when they do not fit, `Overloaded` (503, Retry-After) is raised at once.
2. Preprocessing: `embedder.preprocess` runs on each image in the worker's pool of `decode_threads`
   threads, which run `decode_nice` steps below the model's CPU priority (uploads are decoded there
   too, `run_decoding`): on a machine whose cores are all busy, the model's threads take a core first
   and decoding fills the gaps, instead of both slowing down. The request then enters an asyncio
   queue as one job: its (3, S, S) tensors and a Future for its result.
3. Batching: one background task forms a round when the model thread is free, and runs the model
   there (a single dedicated thread, so the event loop stays free) in forward passes of at most
   `max_batch_size` images. A round takes the queued jobs up to `max_batch_size` images and drops
   those whose Future was cancelled (the client left). Jobs that queued while the model thread
   was busy have already been collected for as long as it was: their round goes at once. Only a
   round whose jobs all came to an idle model waits for more, until it holds `max_batch_size`
   images or `max_wait_ms` has passed since its first one. So while the model runs one round, the
   next requests are decoded and preprocessed beside it, and the model does not wait between rounds.

Background work (re-embedding the gallery for a new model) runs in the same model thread through
`run_between_rounds`: it starts only while no round is collecting or embedding and no job is queued
(waiting at most `max_wait_s`), so requests go first and background work fills the gaps.

Model versions: each round of jobs reads the current embedder once and uses it for all of its
forward passes, and a job never spans two rounds. So all vectors of one request come from one
model, whatever its size, and `swap` takes effect at the next round. Tensors preprocessed by a
model that was swapped out meanwhile are preprocessed again by the round's model (image size
or normalisation may differ between versions). `EmbedResult.version` names the model used.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image

from service.errors import NotReady, Overloaded, PayloadTooLarge
from service.settings import Settings

LOG = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class EmbedderLike(Protocol):
    """What the worker needs of a model (`model.Embedder` has it)."""

    @property
    def version(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def qe_n(self) -> int:
        """The query expansion its searches use by default (0 = off)."""
        ...

    @property
    def runtime(self) -> str:
        """The inference runtime: torch, onnxruntime or openvino."""
        ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype:
        """The compute (autocast) dtype."""
        ...

    @property
    def precision(self) -> str:
        """The engine's precision: fp32, bf16, fp16 or int8."""
        ...

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> (3, S, S) float32 tensor."""
        ...

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) -> (B, d) float32 unit rows."""
        ...


class BatchObserver(Protocol):
    """Metrics hooks of the worker (`service.metrics.ServiceMetrics` has them)."""

    def observe_batch(self, size: int) -> None: ...

    def set_queue_depth(self, depth: int) -> None: ...


@dataclass(frozen=True)
class EmbedResult:
    """`vectors`: (n, d) float32 unit rows in the order of the images; `version`: the model used;
    `qe_n`: that model's default query expansion."""

    vectors: np.ndarray
    version: str
    qe_n: int = 0


@dataclass(eq=False)
class _Job:
    images: Sequence[Image.Image]
    tensors: list[torch.Tensor]  # (3, S, S) each, made by `preprocessed_by`
    preprocessed_by: EmbedderLike
    future: asyncio.Future[EmbedResult]
    waited: bool  # queued while the model thread was busy: its round need not wait for more


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


_STOP = object()  # queue sentinel: the batching task ends after the jobs before it


class InferenceWorker:
    """Owns one embedder at a time and embeds images for concurrent requests in micro-batches.

    Uses `max_batch_size`, `max_wait_ms`, `max_queue_size`, `decode_threads`, `decode_nice` and
    `inference_threads` from `settings`. Call `await start()` in the running event loop before
    `embed`, and `await stop()` at shutdown.
    """

    def __init__(self, embedder: EmbedderLike, settings: Settings, *,
                 metrics: BatchObserver | None = None) -> None:
        self._embedder = embedder
        self._max_batch = settings.max_batch_size
        self._max_wait_s = settings.max_wait_ms / 1000.0
        self._max_queue = settings.max_queue_size
        self._decode_threads = settings.decode_threads
        self._decode_nice = settings.decode_nice
        self._inference_threads = settings.inference_threads
        self._metrics = metrics
        self._state = _State.NEW
        self._admitted = 0  # images accepted and not yet taken by a round
        self._queued = 0  # of those, images preprocessed and waiting in the queue
        self._preparing = 0  # requests being preprocessed
        self._none_preparing: asyncio.Event | None = None
        self._in_round = False  # a round is collecting jobs or embedding them
        self._model_busy = 0  # calls submitted to the model thread and not yet finished
        self._model_free: asyncio.Event | None = None  # no round in progress and no job queued
        self._last_request = -float("inf")  # time.monotonic() of the last admitted request
        self._queue: asyncio.Queue[_Job | object] | None = None
        self._task: asyncio.Task[None] | None = None
        self._preprocess_pool: ThreadPoolExecutor | None = None
        self._model_thread: ThreadPoolExecutor | None = None

    @property
    def version(self) -> str:
        """Version of the current model (the one the next round will use)."""
        return self._embedder.version

    @property
    def dim(self) -> int:
        """Embedding dimension of the current model."""
        return self._embedder.dim

    @property
    def embedder(self) -> EmbedderLike:
        """The current model (the one the next round will use)."""
        return self._embedder

    @property
    def queue_depth(self) -> int:
        """Images preprocessed and waiting for the model."""
        return self._queued

    @property
    def seconds_since_request(self) -> float:
        """Seconds since the last request was admitted (infinite before the first)."""
        return time.monotonic() - self._last_request

    async def start(self) -> None:
        """Start the thread pools and the batching task (in the running event loop)."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"the inference worker cannot start: it is {self._state.value}")
        self._preprocess_pool = ThreadPoolExecutor(self._decode_threads, thread_name_prefix="cgd-preprocess",
                                                   initializer=lower_priority, initargs=(self._decode_nice,))
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="cgd-model",
                                                initializer=_init_model_thread,
                                                initargs=(self._inference_threads,))
        self._none_preparing = asyncio.Event()
        self._none_preparing.set()
        self._model_free = asyncio.Event()
        self._model_free.set()
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="cgd-inference-worker")
        self._state = _State.RUNNING
        LOG.info("inference worker started with model %s (batches of up to %d, queue of %d images)",
                 self.version, self._max_batch, self._max_queue)

    async def embed(self, images: Sequence[Image.Image]) -> EmbedResult:
        """Embed RGB images: (n, d) float32 unit rows, all from one model version.

        Raises `Overloaded` when the queue is full, `NotReady` when the worker is not running,
        `PayloadTooLarge` when `len(images)` exceeds `max_queue_size`.
        """
        if self._state is not _State.RUNNING:
            raise NotReady(f"the inference worker is {self._state.value}")
        embedder = self._embedder
        if not images:
            return EmbedResult(np.zeros((0, embedder.dim), dtype=np.float32), embedder.version, embedder.qe_n)
        count = len(images)
        if count > self._max_queue:
            raise PayloadTooLarge(f"{count} images in one request; the worker takes at most "
                                  f"{self._max_queue}")
        if self._admitted + count > self._max_queue:
            raise Overloaded(f"the inference queue is full ({self._admitted} of {self._max_queue} images "
                             f"waiting); retry shortly")
        future: asyncio.Future[EmbedResult] = asyncio.get_running_loop().create_future()
        self._last_request = time.monotonic()
        self._admitted += count
        self._preparing += 1
        self._none_preparing.clear()
        queued = False
        try:
            tensors = await self._preprocess(embedder, images)
            if self._state is _State.STOPPED:
                raise NotReady("the inference worker stopped")
            self._queue.put_nowait(_Job(images, tensors, embedder, future, waited=self._model_busy > 0))
            queued = True
            self._set_queued(self._queued + count)
        finally:
            if not queued:
                self._admitted -= count
            self._preparing -= 1
            if self._preparing == 0:
                self._none_preparing.set()
        return await future

    def swap(self, embedder: EmbedderLike) -> EmbedderLike:
        """Serve `embedder` from the next round on; returns the previous embedder.

        The previous one may still be finishing the round in progress.
        """
        previous, self._embedder = self._embedder, embedder
        LOG.info("inference model %s -> %s", previous.version, embedder.version)
        return previous

    async def run_in_model_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` in the model thread, between two rounds of batches.

        For work on another model that must not run beside the serving one, e.g. re-embedding
        the gallery with a new embedder while the current one serves:
        `await worker.run_in_model_thread(new.embed_images, images)`.
        """
        if self._state not in (_State.RUNNING, _State.DRAINING):
            raise NotReady(f"the inference worker is {self._state.value}")
        return await self._in_model_thread(functools.partial(fn, *args, **kwargs))

    async def run_between_rounds(self, fn: Callable[P, T], *args: P.args, max_wait_s: float,
                                 **kwargs: P.kwargs) -> T:
        """`run_in_model_thread(fn, ...)` once no round is collecting or embedding and no job is queued,
        waiting at most `max_wait_s` for that (so that steady traffic cannot starve it): requests go first.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        while self._state is _State.RUNNING and not self._model_free.is_set() and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - loop.time()):
                    await self._model_free.wait()
        return await self.run_in_model_thread(fn, *args, **kwargs)

    async def run_decoding(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` on the preprocessing threads: decoding uploads, at the priority of their
        preprocessing."""
        if self._state is not _State.RUNNING:
            raise NotReady(f"the inference worker is {self._state.value}")
        return await asyncio.get_running_loop().run_in_executor(self._preprocess_pool,
                                                                functools.partial(fn, *args, **kwargs))

    async def stop(self, *, drain: bool = True) -> None:
        """Stop accepting requests; with `drain`, embed everything admitted first.

        Without `drain`, requests not yet answered fail with `NotReady`. Idempotent.
        """
        if self._state is _State.NEW:
            self._state = _State.STOPPED
        if self._state is not _State.RUNNING:
            return
        if drain:
            self._state = _State.DRAINING
            await self._none_preparing.wait()  # every admitted request is in the queue
            self._queue.put_nowait(_STOP)
            await asyncio.gather(self._task, return_exceptions=True)
            self._state = _State.STOPPED
        else:
            self._state = _State.STOPPED
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._fail_queued(NotReady("the inference worker stopped"))
        await asyncio.to_thread(self._shutdown_pools)
        LOG.info("inference worker stopped (drain=%s)", drain)

    async def _preprocess(self, embedder: EmbedderLike, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(
            *(loop.run_in_executor(self._preprocess_pool, embedder.preprocess, image) for image in images)
        ))

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                jobs, stopping = await self._collect()
                if jobs:
                    await self._process(jobs)
            finally:
                self._set_in_round(False)
            del jobs  # while waiting for the next round, hold neither images nor a swapped-out model

    async def _collect(self) -> tuple[list[_Job], bool]:
        """The next round: the queued jobs up to `max_batch_size` images, and, unless one of them waited
        for the model thread, more until then or `max_wait_ms`; True at the sentinel."""
        loop = asyncio.get_running_loop()
        jobs: list[_Job] = []
        size = 0
        waited = False
        item = await self._queue.get()
        self._set_in_round(True)
        deadline = loop.time() + self._max_wait_s
        while True:
            if item is _STOP:
                return jobs, True
            size += self._take(item, jobs)
            waited = waited or item.waited
            if size >= self._max_batch:
                return jobs, False
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if waited and jobs:
                    return jobs, False
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return jobs, False
                try:
                    async with asyncio.timeout(remaining):
                        item = await self._queue.get()
                except TimeoutError:
                    return jobs, False

    def _take(self, job: _Job, jobs: list[_Job]) -> int:
        """Move `job` from the queue into the round unless its client left; returns its images."""
        count = len(job.tensors)
        self._admitted -= count
        self._set_queued(self._queued - count)
        if job.future.cancelled():
            LOG.debug("skipping a request of %d images: its client left", count)
            return 0
        jobs.append(job)
        return count

    async def _process(self, jobs: list[_Job]) -> None:
        """Embed one round with one model and answer each job's Future."""
        embedder = self._embedder
        try:
            for job in jobs:
                if job.preprocessed_by is not embedder and not job.future.cancelled():
                    job.tensors = await self._preprocess(embedder, job.images)
                    job.preprocessed_by = embedder
            live = [job for job in jobs if not job.future.cancelled()]
            if not live:
                return
            tensors = [tensor for job in live for tensor in job.tensors]
            vectors, sizes = await self._in_model_thread(functools.partial(self._forward, embedder, tensors))
        except asyncio.CancelledError:
            _fail(jobs, NotReady("the inference worker stopped"))
            raise
        except Exception as exc:
            LOG.exception("embedding %d requests with model %s failed", len(jobs), embedder.version)
            _fail(jobs, exc)
            return
        if self._metrics is not None:
            for size in sizes:
                self._metrics.observe_batch(size)
        start = 0
        for job in live:
            end = start + len(job.tensors)
            if not job.future.done():
                job.future.set_result(EmbedResult(vectors[start:end].copy(), embedder.version, embedder.qe_n))
            start = end

    async def _in_model_thread(self, call: Callable[[], T]) -> T:
        """`call()` in the model thread; meanwhile, jobs that queue are marked as having waited for it."""
        self._model_busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._model_thread, call)
        finally:
            self._model_busy -= 1

    def _forward(self, embedder: EmbedderLike, tensors: list[torch.Tensor]) -> tuple[np.ndarray, list[int]]:
        """In the model thread: (N,) tensors (3, S, S) -> (N, d) rows, in passes of `max_batch_size`."""
        chunks, sizes = [], []
        for start in range(0, len(tensors), self._max_batch):
            batch = torch.stack(tensors[start:start + self._max_batch])
            vectors = embedder.embed_tensors(batch)
            if vectors.shape != (len(batch), embedder.dim):
                raise RuntimeError(f"model {embedder.version} returned shape {vectors.shape} "
                                   f"for {len(batch)} images of dimension {embedder.dim}")
            chunks.append(vectors)
            sizes.append(len(batch))
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32), sizes

    def _fail_queued(self, error: Exception) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Job):
                self._take(item, [])
                _fail([item], error)

    def _set_queued(self, depth: int) -> None:
        self._queued = depth
        if self._metrics is not None:
            self._metrics.set_queue_depth(depth)
        self._update_model_free()

    def _set_in_round(self, in_round: bool) -> None:
        self._in_round = in_round
        self._update_model_free()

    def _update_model_free(self) -> None:
        if self._in_round or self._queued:
            self._model_free.clear()
        else:
            self._model_free.set()

    def _shutdown_pools(self) -> None:
        self._model_thread.shutdown(wait=True)
        self._preprocess_pool.shutdown(wait=True)


def _fail(jobs: list[_Job], error: Exception) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)


def lower_priority(nice: int) -> None:
    """Thread initialiser: this thread's CPU niceness raised by `nice` (Linux keeps it per thread; raising
    it needs no privilege). Where the system has no per-thread priority, nothing changes."""
    if nice and hasattr(os, "setpriority"):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice))


def _init_model_thread(inference_threads: int | None) -> None:
    """Thread initialiser: torch's intra-op threads (a process-wide setting) when configured."""
    if inference_threads is not None:
        torch.set_num_threads(inference_threads)
