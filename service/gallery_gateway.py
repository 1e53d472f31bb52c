"""`GalleryGateway`: the one way from async code to `index/`, and the service's one executor.

Every route, the search batcher, ingestion and the model swapper await the gateway; each call runs
on its executor of `io_threads` threads (`CGD_IO_THREADS`), so the event loop only routes. Re-embedding
decodes the gallery on the same executor through `run`; uploads are decoded and preprocessed by the
inference worker's own threads, at a lower CPU priority than its model thread (`CGD_DECODE_NICE`), and
a model swap builds the new version's index in a short-lived thread at lower CPU priority (`prepare`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

from index import Gallery, Hit, IndexStats, Item, ItemNotFound, MetadataFilter, NewItem, VersionInfo

LOG = logging.getLogger(__name__)

BACKGROUND_NICE = 10  # niceness added to a background build's thread (as the training process has)

P = ParamSpec("P")
T = TypeVar("T")


class GalleryGateway:
    """Async access to one `Gallery`; open with `await GalleryGateway.open(...)`, end with `close`."""

    def __init__(self, gallery: Gallery, executor: ThreadPoolExecutor) -> None:
        self._gallery = gallery
        self._executor = executor

    @classmethod
    async def open(cls, root: Path, *, threads: int, **index_options: Any) -> GalleryGateway:
        """Start the executor and open the gallery at `root` on it (loading or building its index);
        `index_options`: `Gallery.open`'s (index_kind, nprobe, ...)."""
        executor = ThreadPoolExecutor(threads, thread_name_prefix="cgd-io")
        try:
            gallery = await _run(executor, Gallery.open, root, **index_options)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(gallery, executor)

    async def close(self) -> None:
        """Snapshot and close the gallery, then stop the executor. Call when nothing else uses it."""
        await self.run(self._gallery.close)
        self._executor.shutdown(wait=False)  # the gallery was the last user

    @property
    def executor(self) -> Executor:
        """The executor, for components that submit their own blocking work (the inference worker)."""
        return self._executor

    @property
    def gallery(self) -> Gallery:
        """The gallery itself, for code that runs on a thread of its own (the training queue's)."""
        return self._gallery

    @property
    def live_version(self) -> str | None:
        return self._gallery.live_version

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` on the executor: image decoding and other blocking work."""
        return await _run(self._executor, fn, *args, **kwargs)

    # items

    async def add(self, items: Sequence[NewItem], vectors: Mapping[str, np.ndarray]) -> list[Item]:
        return await self.run(self._gallery.add, items, vectors)

    async def get(self, item_id: int) -> Item:
        return await self.run(self._gallery.get, item_id)

    async def get_by_external_id(self, external_id: str) -> Item:
        return await self.run(self._gallery.get_by_external_id, external_id)

    async def list_items(self, offset: int, limit: int, label: str | None) -> tuple[list[Item], int]:
        return await self.run(self._gallery.list_items, offset, limit, label)

    async def count(self) -> int:
        return await self.run(self._gallery.count)

    async def image(self, item_id: int) -> bytes:
        return await self.run(self._gallery.image, item_id)

    async def image_path(self, item_id: int) -> Path:
        return await self.run(self._gallery.image_path, item_id)

    async def label_counts(self) -> tuple[Counter[str], int]:
        """(items per label, items without a label)."""
        def count() -> tuple[Counter[str], int]:
            labelled = Counter(item.label for item in self._gallery.labelled_items())
            return labelled, self._gallery.count() - labelled.total()

        return await self.run(count)

    async def update(self, item_id: int, **changes: Any) -> Item:
        return await self.run(self._gallery.update, item_id, **changes)

    async def delete(self, item_id: int) -> Item:
        return await self.run(self._gallery.delete, item_id)

    async def delete_by_external_id(self, external_id: str) -> Item:
        return await self.run(self._gallery.delete_by_external_id, external_id)

    # search

    async def search(self, queries: np.ndarray, k: int, *, label: str | None = None,
                     metadata: MetadataFilter | None = None, qe_n: int = 0, qe_alpha: float = 3.0,
                     version: str | None = None) -> tuple[str, list[list[Hit]]]:
        """See `Gallery.search`: queries (Q,d) -> (version, hits per query)."""
        return await self.run(self._gallery.search, queries, k, label=label, metadata=metadata, qe_n=qe_n,
                              qe_alpha=qe_alpha, version=version)

    async def similar(self, item_id: int, k: int, *, label: str | None = None,
                      version: str | None = None) -> list[Hit]:
        """Items most similar to a stored one; `ItemNotFound` for an unknown item, even with no vectors."""
        def similar() -> list[Hit]:
            self._gallery.get(item_id)
            return self._gallery.similar(item_id, k, label=label, version=version)

        return await self.run(similar)

    # versions

    async def versions(self) -> list[str]:
        return await self.run(self._gallery.versions)

    async def version_info(self, version: str) -> VersionInfo:
        return await self.run(self._gallery.version_info, version)

    async def index_stats(self, version: str | None = None) -> IndexStats:
        return await self.run(self._gallery.index_stats, version)

    async def ids_missing_vectors(self, version: str, has_image: bool | None = None) -> np.ndarray:
        return await self.run(self._gallery.ids_missing_vectors, version, has_image)

    async def read_images(self, ids: np.ndarray, read: Callable[[Path], T]) -> tuple[np.ndarray, list[T]]:
        """`read(path)` of the stored image of each id (N,), on the executor: (the ids still present
        (M,), their results). Items deleted meanwhile, or whose image was erased, are left out."""
        def read_all() -> tuple[np.ndarray, list[T]]:
            kept, results = [], []
            for item_id in ids.tolist():
                try:
                    results.append(read(self._gallery.image_path(item_id)))
                except (ItemNotFound, FileNotFoundError):
                    continue
                kept.append(item_id)
            return np.asarray(kept, dtype=np.int64), results

        return await self.run(read_all)

    async def put_vectors(self, version: str, ids: np.ndarray, vectors: np.ndarray) -> int:
        """Store unit vectors (N,d) of ids (N,); ids deleted meanwhile are skipped. Returns how many."""
        return await self.run(self._gallery.put_vectors, version, ids, vectors)

    async def set_dba(self, version: str, n: int) -> None:
        """Database-side augmentation of a version's index with each item's top-n neighbours, when the
        version has vectors and another setting (its index is rebuilt)."""
        def apply() -> None:
            if version in self._gallery.versions() and self._gallery.version_info(version).dba_n != n:
                self._gallery.set_dba(version, n)

        await self.run(apply)

    async def prepare(self, version: str) -> None:
        """Load or build `version`'s index before it goes live, in a thread of its own at `BACKGROUND_NICE`
        (its FAISS threads inherit it): a build, with DBA an all-pairs neighbour search, takes the CPU
        only when serving does not need it."""
        def load() -> None:
            if version in self._gallery.versions():
                self._gallery.index_stats(version)  # loads or builds the index

        builder = ThreadPoolExecutor(1, thread_name_prefix="cgd-build", initializer=_lower_priority)
        try:
            await _run(builder, load)
        finally:
            builder.shutdown(wait=False)  # its thread ends, and its OpenMP threads with it

    async def activate(self, version: str) -> None:
        """Make `version` live (its index loaded or built, and snapshotted, off the event loop)."""
        await self.run(self._gallery.activate, version)


async def _run(executor: Executor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))


def _lower_priority() -> None:
    """Thread initialiser: this thread, and the threads it starts, `BACKGROUND_NICE` nicer (Linux, where
    niceness is per thread; elsewhere it would apply to the whole process, so nothing changes)."""
    if sys.platform != "linux":
        return
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        niceness = os.getpriority(os.PRIO_PROCESS, thread) + BACKGROUND_NICE
        os.setpriority(os.PRIO_PROCESS, thread, min(19, niceness))
