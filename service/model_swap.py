"""Switching the serving model: re-embed the gallery with it, then swap model and index atomically.

While the new version's vectors are computed, the old model keeps serving. The final catch-up
(items ingested meanwhile), the index switch and the model switch happen under the exclusive
side of `SwapGate`, which ingestion holds in shared mode: no item is ever stored with vectors
of one version only, and no response mixes two versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import numpy as np

from model.data import open_rgb
from model.embedder import Embedder
from service.model_registry import ModelRegistry

LOG = logging.getLogger(__name__)
REEMBED_CHUNK = 64


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
    """Makes a registered model version the serving one (promotion after training, or rollback)."""

    def __init__(self, worker, gallery, registry: ModelRegistry, gate: SwapGate, *, device: str,
                 precision: str = "auto") -> None:
        self._worker = worker
        self._gallery = gallery
        self._registry = registry
        self._gate = gate
        self._device = device
        self._precision = precision
        self._lock = asyncio.Lock()

    async def activate(self, version: str, on_progress: Callable[[int, int], None] | None = None) -> float:
        """Make a registered version serve (promotion or rollback); returns the seconds it took."""
        record = self._registry.get(version)
        if self._worker.version == version:
            return 0.0
        embedder = await asyncio.to_thread(
            Embedder.load, record.checkpoint, device=self._device, precision=self._precision
        )
        return await self.switch_to(embedder, on_progress)

    async def switch_to(self, embedder: Embedder,
                        on_progress: Callable[[int, int], None] | None = None) -> float:
        """Re-embed what the gallery lacks for `embedder`'s version, then swap model and index."""
        started = time.perf_counter()
        version = embedder.version
        async with self._lock:
            await self._embed_missing(embedder, version, on_progress)
            async with self._gate.exclusive():
                await self._embed_missing(embedder, version, None)
                self._gallery.activate(version)
                if self._worker.version != version:
                    self._worker.swap(embedder)
                self._registry.set_active(version)
        seconds = time.perf_counter() - started
        LOG.info("model %s is live (re-embedding and swap took %.1f s)", version, seconds)
        return seconds

    async def _embed_missing(self, embedder: Embedder, version: str,
                             on_progress: Callable[[int, int], None] | None) -> None:
        missing = np.asarray(self._gallery.ids_missing_vectors(version), dtype=np.int64)
        for start in range(0, len(missing), REEMBED_CHUNK):
            ids = missing[start:start + REEMBED_CHUNK]
            # decoded as at ingestion and in training (upright RGB, alpha on white)
            images = [open_rgb(self._gallery.image_path(int(i))) for i in ids]
            vectors = await self._worker.run_in_model_thread(embedder.embed_images, images)
            self._gallery.put_vectors(version, ids, vectors)
            if on_progress is not None:
                on_progress(start + len(ids), len(missing))
