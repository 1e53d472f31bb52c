"""Answers search queries that arrive together with one index search.

One background task owns a bounded queue (`max_queue` queries; beyond, `Overloaded`: 503 with
Retry-After). While a search runs, new queries wait; the next search takes up to `max_batch` of
them at once (grouped by model version and filters), so batching adds no delay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from index import Hit, MetadataFilter
from service.errors import Overloaded
from service.gallery_gateway import GalleryGateway

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOptions:
    """What must be equal for queries to share one index search (hashable)."""

    version: str
    label: str | None = None
    metadata: MetadataFilter | None = None
    qe_n: int = 0
    qe_alpha: float = 3.0


@dataclass
class _Query:
    vector: np.ndarray
    k: int
    options: SearchOptions
    future: asyncio.Future = field(repr=False)


class SearchBatcher:
    """`await batcher.search(vector, k, options)` -> the hits of that one query."""

    def __init__(self, gateway: GalleryGateway, *, max_batch: int, max_queue: int,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self._gateway = gateway
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Query] = asyncio.Queue(maxsize=max_queue)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cgd-search-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def search(self, vector: np.ndarray, k: int, options: SearchOptions) -> list[Hit]:
        """The top-k hits of one query vector (d,); `Overloaded` when the queue is full."""
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Query(vector, k, options, future))
        except asyncio.QueueFull:
            raise Overloaded(f"the search queue is full ({self._queue.maxsize} queries waiting); "
                             "retry shortly") from None
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
            _, results = await self._gateway.search(
                vectors, k, label=options.label, metadata=options.metadata, qe_n=options.qe_n,
                qe_alpha=options.qe_alpha, version=options.version,
            )
        except Exception as exc:  # delivered to every waiting request
            for query in queries:
                if not query.future.done():
                    query.future.set_exception(exc)
            return
        for query, hits in zip(queries, results, strict=True):
            if not query.future.done():
                query.future.set_result(hits[: query.k])
