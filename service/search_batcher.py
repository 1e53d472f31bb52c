"""Answers search queries that arrive together with one FAISS call.

One background task owns the queue. While a FAISS call runs, new queries wait; the next call
takes all of them at once (grouped by model version and filters), so batching adds no delay.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index import Hit

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOptions:
    """What must be equal for queries to share one FAISS call."""

    version: str
    label: str | None = None
    metadata: str | None = None  # canonical JSON of the equality filter
    qe_n: int = 0
    qe_alpha: float = 3.0

    @property
    def metadata_filter(self) -> dict[str, Any] | None:
        """The metadata equality filter as the gallery takes it."""
        return json.loads(self.metadata) if self.metadata else None


@dataclass
class _Query:
    vector: np.ndarray
    k: int
    options: SearchOptions
    future: asyncio.Future = field(repr=False)


class SearchBatcher:
    """`await batcher.search(vector, k, options)` -> the hits of that one query."""

    def __init__(self, gallery, *, max_batch: int = 256, on_batch=None) -> None:
        self._gallery = gallery
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Query] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cgd-search-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def search(self, vector: np.ndarray, k: int, options: SearchOptions) -> list[Hit]:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Query(vector, k, options, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            groups: dict[SearchOptions, list[_Query]] = {}
            for query in batch:
                if not query.future.cancelled():
                    groups.setdefault(query.options, []).append(query)
            for options, queries in groups.items():
                await self._answer(options, queries)

    async def _answer(self, options: SearchOptions, queries: list[_Query]) -> None:
        vectors = np.ascontiguousarray(np.stack([q.vector for q in queries]), dtype=np.float32)
        k = max(q.k for q in queries)
        if self._on_batch is not None:
            self._on_batch(len(queries))
        try:
            _, results = await asyncio.to_thread(
                self._gallery.search, vectors, k, label=options.label, metadata=options.metadata_filter,
                qe_n=options.qe_n, qe_alpha=options.qe_alpha, version=options.version,
            )
        except Exception as exc:  # delivered to every waiting request
            for query in queries:
                if not query.future.done():
                    query.future.set_exception(exc)
            return
        for query, hits in zip(queries, results, strict=True):
            if not query.future.done():
                query.future.set_result(hits[: query.k])
