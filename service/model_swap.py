"""Switching the serving model: re-embed the gallery with it, then swap model and index atomically.

While the new version's vectors are computed, the old model keeps serving. Re-embedding is a
pipeline: chunks of the worker's batch size are read, decoded (upright RGB, as at ingestion) and
preprocessed on the gateway's executor, several chunks ahead of the model, which embeds them in the
inference worker's model thread; the vectors are written through the gateway. Search batches go
first: a forward pass starts only between the worker's rounds (`InferenceWorker.run_between_rounds`),
and passes are small until `TRAFFIC_HOLD_S` after the last request. The new version's index is then
built at a lower CPU priority (`GalleryGateway.prepare`). Items deleted meanwhile are skipped.
A cancel request is honoured between two chunks, up to the final switch; the old model then keeps
serving. The final catch-up (items ingested meanwhile), the index switch and the model switch happen
under the exclusive side of `SwapGate`, which ingestion holds in shared mode: no item is ever stored
with vectors of one version only, and no response mixes two versions. Items without an image (imported
as vectors) cannot be embedded by the new model: they are left out of its version (its searches do not
find them), counted in the result and logged, and join it once their image is supplied (`cgd import`).

Replicas on one PostgreSQL gallery: the flip is a compare-and-set from the version this replica serves
(refused with `VersionMoved` when another replica made another version live meanwhile), the store
refuses other replicas' adds without the new version from the flip on, and the swapper embeds, after
the flip, what they stored between its last catch-up and the flip; the other replicas then follow
(`service.replica_sync`). A replica that starts on the live version joins it (`join`) and never writes
it: a promotion under way elsewhere is followed, not undone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.data import open_rgb
from model.embedder import Embedder
from service.gallery_gateway import GalleryGateway
from service.model_registry import ModelRegistry
from service.worker import InferenceWorker

LOG = logging.getLogger(__name__)

YIELD_MAX_S = 0.25  # longest a pass waits for the requests' rounds (so traffic cannot starve it)
TRAFFIC_HOLD_S = 2.0  # passes stay small until this long after the last request
TRAFFIC_PASS_FRACTION = 8  # passes under traffic: batch size / this (a search waits less behind one)

Progress = Callable[[int, int], None]
Cancelled = Callable[[], bool]


class SwapCancelled(Exception):
    """The swap stopped at a cancel request before switching; the old model keeps serving."""


@dataclass(frozen=True)
class SwapResult:
    """What a switch took, and how many items without an image its version left out."""

    seconds: float
    left_out: int


class SwapGate:
    """An asyncio readers-writer gate: many ingestions at once, or one swap."""

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            async with self._changed:
                self._readers -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._writer)
            self._writer = True
            await self._changed.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            async with self._changed:
                self._writer = False
                self._changed.notify_all()


class ModelSwapper:
    """Makes a registered model version the serving one (promotion after training, or rollback).

    `batch_size`: images per chunk and per forward pass without traffic; `prefetch`: chunks decoded
    ahead of the model (the executor's threads); `engines`: `Embedder.load`'s runtime, cache_dir and
    threads, so that a newly activated model runs on the runtime chosen for it (exported and measured
    before it serves); `replicas`: other processes write the same gallery.
    """

    def __init__(self, worker: InferenceWorker, gateway: GalleryGateway, registry: ModelRegistry,
                 gate: SwapGate, *, device: str, precision: str = "auto", engines: dict | None = None,
                 batch_size: int = 32, prefetch: int = 2, replicas: bool = False) -> None:
        self._worker = worker
        self._gateway = gateway
        self._registry = registry
        self._gate = gate
        self._device = device
        self._precision = precision
        self._engines = engines or {}
        self._batch_size = batch_size
        self._prefetch = prefetch
        self._replicas = replicas
        self._lock = asyncio.Lock()

    async def activate(self, version: str, on_progress: Progress | None = None,
                       cancelled: Cancelled | None = None) -> SwapResult:
        """Make a registered version serve (promotion or rollback).

        Raises `SwapCancelled` when `cancelled()` turned true before the switch.
        """
        record = await self._gateway.run(self._registry.get, version)
        if self._worker.version == version:
            return SwapResult(0.0, await self._left_out(version))
        started = time.perf_counter()
        embedder = await self._gateway.run(Embedder.load, record.checkpoint, device=self._device,
                                           precision=self._precision, **self._engines)
        LOG.info("model %s loaded on %s in %.1f s", version, embedder.runtime, time.perf_counter() - started)
        return await self.switch_to(embedder, on_progress, cancelled)

    async def join(self, embedder: Embedder) -> None:
        """Serve `embedder`'s version, live in the shared store when this replica opened it, without writing
        the live version: embed what the gallery lacks for it (items another replica stored during a
        flip). If a promotion elsewhere has moved the live version on meanwhile, the catch-up follows it."""
        async with self._lock:
            await self._embed_missing(embedder, None, lambda: False)

    async def switch_to(self, embedder: Embedder, on_progress: Progress | None = None,
                        cancelled: Cancelled | None = None) -> SwapResult:
        """Re-embed what the gallery lacks for `embedder`'s version, then swap model and index."""
        started = time.perf_counter()
        version = embedder.version
        cancelled = cancelled or (lambda: False)
        async with self._lock:
            await self._embed_missing(embedder, on_progress, cancelled)
            embedded = time.perf_counter()
            await self._gateway.set_dba(version, embedder.dba_n)  # the model's search default
            await self._gateway.prepare(version)  # its index, built at a lower CPU priority
            prepared = time.perf_counter()
            async with self._gate.exclusive():
                await self._embed_missing(embedder, None, cancelled)
                if cancelled():
                    raise SwapCancelled(f"the switch to {version} was cancelled")
                await self._gateway.activate(version)
                if self._worker.version != version:
                    self._worker.swap(embedder)
                await self._gateway.run(self._registry.set_active, version)
            if self._replicas:  # what other replicas stored between the last catch-up and the flip
                await self._embed_missing(embedder, None, lambda: False)
        ended = time.perf_counter()
        LOG.info("model %s is live (re-embedding and swap took %.1f s: re-embedding %.1f s, index %.1f s "
                 "with dba_n %d, switch %.1f s)", version, ended - started, embedded - started,
                 prepared - embedded, embedder.dba_n, ended - prepared)
        left_out = await self._left_out(version)
        if left_out:
            LOG.warning("%d items without an image are not in version %s: no image to embed them from "
                        "(cgd import with their images supplies them)", left_out, version)
        return SwapResult(ended - started, left_out)

    async def _left_out(self, version: str) -> int:
        """Items without an image that have no vector of `version` (not found by its searches)."""
        return len(await self._gateway.ids_missing_vectors(version, has_image=False))

    async def _embed_missing(self, embedder: Embedder, on_progress: Progress | None,
                             cancelled: Cancelled) -> None:
        """Embed and store the vectors `embedder`'s version lacks (of the items that have an image):
        decoding runs `prefetch` chunks ahead."""
        version = embedder.version
        missing = await self._gateway.ids_missing_vectors(version, has_image=True)
        step = self._batch_size
        chunks = [missing[start:start + step] for start in range(0, len(missing), step)]

        def read(path: Path) -> torch.Tensor:
            return embedder.preprocess(open_rgb(path))

        pending: collections.deque[asyncio.Task] = collections.deque()
        done = 0
        try:
            for position, ids in enumerate(chunks):
                while len(pending) < self._prefetch and position + len(pending) < len(chunks):
                    ahead = chunks[position + len(pending)]
                    pending.append(asyncio.ensure_future(self._gateway.read_images(ahead, read)))
                kept, tensors = await pending.popleft()
                if cancelled():
                    raise SwapCancelled(f"re-embedding for {version} was cancelled")
                if tensors:
                    vectors = await self._embed(embedder, torch.stack(tensors))
                    await self._gateway.put_vectors(version, kept, vectors)
                done += len(ids)
                if on_progress is not None:  # it may write the job's progress: off the event loop
                    await self._gateway.run(on_progress, done, len(missing))
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _embed(self, embedder: Embedder, batch: torch.Tensor) -> np.ndarray:
        """(B,3,S,S) -> (B,d) in the model thread, in passes between the requests' rounds (small ones
        while requests come, so that a request waits less behind one)."""
        vectors, start = [], 0
        while start < len(batch):
            size = self._batch_size
            if self._worker.seconds_since_request < TRAFFIC_HOLD_S:
                size = max(1, self._batch_size // TRAFFIC_PASS_FRACTION)
            part = batch[start:start + size]
            vectors.append(await self._worker.run_between_rounds(embedder.embed_tensors, part,
                                                                 max_wait_s=YIELD_MAX_S))
            start += len(part)
        return np.concatenate(vectors)
