"""`IndexRegistry`: the loaded `VersionIndex` of each model version, their locks, and their life cycle.

The registry alone holds the indexes and the two locks that guard them: `writer()` (one writer of the
store and the indexes at a time) and a readers-writer lock entered through `reading()` / `writing()`,
which hand out a view of the indexes that is valid only inside the block. Lock order: writer, then
state; never the other way round.

An index is loaded from `faiss/<version>.index` or, if that snapshot is missing, damaged or stale, built
from the store. Builds (also for training, compaction and new post-processing settings) run without the
locks while the previous index keeps serving; the result is then reconciled with the store under the
writer lock (vectors added or deleted meanwhile) and swapped in under the exclusive state lock.

When other processes write the same store (replicas on one PostgreSQL database), `sync` brings the
loaded indexes in line with it: their adds and deletions, dropped versions, new post-processing settings.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np

from index.compaction import Compactions
from index.errors import GalleryError, SnapshotCorrupt, UnknownVersion
from index.locking import ReadWriteLock
from index.protocols import ItemStore, VectorBackend
from index.version_index import VersionIndex, VersionSettings

LOG = logging.getLogger(__name__)

_RECONCILE_CHUNK = 16384


class IndexView:
    """The loaded indexes as seen under the registry's shared lock (do not keep it past the block)."""

    def __init__(self, indexes: dict[str, VersionIndex]) -> None:
        self._indexes = indexes

    def get(self, version: str) -> VersionIndex | None:
        return self._indexes.get(version)

    def __iter__(self) -> Iterator[str]:
        """The loaded versions' names."""
        return iter(list(self._indexes))


class WritableIndexView(IndexView):
    """The loaded indexes under the registry's exclusive lock: changes apply to every search after it."""

    def add(self, version: str, ids: np.ndarray, raw: np.ndarray) -> None:
        """Raw vectors (N, model_dim) of new ids (N,) into `version`'s index, if it is loaded."""
        index = self._indexes.get(version)
        if index is not None and len(ids):
            index.add(ids, raw)

    def remove(self, ids: np.ndarray) -> None:
        """Ids (N,) out of every loaded index."""
        for index in self._indexes.values():
            index.remove(ids)

    def sync_attributes(self, ids: np.ndarray) -> None:
        """The labels or metadata of ids (N,) changed in the store: every loaded index that holds a copy
        of them rewrites it."""
        for index in self._indexes.values():
            index.sync_attributes(ids)

    def put(self, index: VersionIndex) -> None:
        """Serve `index`; the one it replaces frees what it holds on a server."""
        replaced = self._indexes.get(index.name)
        self._indexes[index.name] = index
        if replaced is not None and replaced is not index:
            replaced.vectors.release()

    def drop(self, version: str) -> None:
        dropped = self._indexes.pop(version, None)
        if dropped is not None:
            dropped.vectors.release()


class IndexRegistry:
    """Per-version indexes behind one readers-writer lock, and the gallery's writer lock."""

    def __init__(self, directory: Path, store: ItemStore, backend: VectorBackend) -> None:
        self._directory = directory
        self._store = store
        self._backend = backend
        self._indexes: dict[str, VersionIndex] = {}
        self._writer = threading.Lock()
        self._state = ReadWriteLock()
        self._closed = False
        self._build_locks: dict[str, threading.Lock] = {}
        self._build_locks_guard = threading.Lock()
        self._compactions = Compactions()

    # locks

    def writer(self) -> threading.Lock:
        """The writer lock: one writer of the store and the indexes at a time (taken before `writing`)."""
        return self._writer

    @contextlib.contextmanager
    def reading(self) -> Iterator[IndexView]:
        """Shared: searches and store reads see no half-applied write. GalleryError once closed."""
        with self._state.read():
            if self._closed:
                raise GalleryError("the gallery is closed")
            yield IndexView(self._indexes)

    @contextlib.contextmanager
    def writing(self) -> Iterator[WritableIndexView]:
        """Exclusive, under `writer()`: a store commit and the same change to the indexes, at once."""
        with self._state.write():
            if self._closed:
                raise GalleryError("the gallery is closed")
            yield WritableIndexView(self._indexes)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Snapshot what changed, then refuse every later `reading` / `writing`. Call under `writer()`."""
        if self._closed:
            return
        self.save_all()
        with self._state.write():
            self._closed = True
            self._indexes.clear()

    # life cycle

    def snapshot_path(self, version: str) -> Path:
        return self._directory / f"{quote(version, safe='')}.index"

    def settings(self, version: str) -> VersionSettings:
        """The version's post-processing as stored now (UnknownVersion if it has no vectors)."""
        info = self._store.version_info(version)
        return VersionSettings(info.dim, self._store.whitening(version), info.dba_n, info.dba_alpha)

    def build(self, version: str) -> VersionIndex:
        """A new index of `version` from the store (no lock needed)."""
        return VersionIndex.build(version, self.settings(version), self._backend, self._store)

    def _build_lock(self, version: str) -> threading.Lock:
        with self._build_locks_guard:
            return self._build_locks.setdefault(version, threading.Lock())

    def _loaded(self, version: str) -> VersionIndex | None:
        with self.reading() as view:
            return view.get(version)

    def ensure(self, version: str) -> VersionIndex:
        """The loaded index of `version`, loading or building it first. Call without the locks."""
        loaded = self._loaded(version)
        if loaded is not None:
            return loaded
        with self._build_lock(version):
            loaded = self._loaded(version)
            if loaded is not None:
                return loaded
            path = self.snapshot_path(version)
            try:
                candidate = VersionIndex.load(path, version, self.settings(version), self._backend)
                LOG.info("loaded %s (%d vectors)", path, len(candidate))
            except SnapshotCorrupt as exc:
                if path.exists():
                    LOG.warning("rebuilding the index of %s from the store: %s", version, exc)
                candidate = self.build(version)
            return self._install(candidate)

    def rebuild(self, version: str, *, only_loaded: bool = False) -> None:
        """Replace the index of `version` (if loaded, with `only_loaded`) by a fresh build, while it keeps
        serving. Call without the locks."""
        if only_loaded and self._loaded(version) is None:
            return
        with self._build_lock(version):
            self._install(self.build(version))

    def maintain(self, versions: Iterable[str]) -> None:
        """Rebuild loaded indexes that ask for it (training possible, grown, many tombstones), unless one
        is being built already; many tombstones start a compaction in the background. Call without the
        locks."""
        for version in versions:
            with self.reading() as view:
                index = view.get(version)
                reason = index.vectors.maintenance() if index is not None else None
            lock = self._build_lock(version)
            if reason is not None and lock.acquire(blocking=False):
                if reason == "compact":
                    self._compactions.start(version, lambda v=version: self._install(self.build(v)), lock)
                    continue
                try:
                    LOG.info("rebuilding the index of %s (%s)", version, reason)
                    self._install(self.build(version))
                finally:
                    lock.release()

    def compact(self, version: str, wait: bool = True) -> bool:
        """Rebuild a loaded index in the background now, whatever its tombstones (unless a build of it
        runs already); with `wait`, return once it is swapped in. False if it is not loaded."""
        if self._loaded(version) is None:
            return False
        lock = self._build_lock(version)
        if lock.acquire(blocking=False):
            self._compactions.start(version, lambda: self._install(self.build(version)), lock)
        if wait:
            self._compactions.wait(version)
            with lock:  # a build of another kind (training) may have been running instead
                pass
        return True

    def compacting(self, version: str) -> bool:
        return self._compactions.running(version)

    def _install(self, candidate: VersionIndex) -> VersionIndex:
        with self._writer:
            if candidate.settings.fingerprint() != self.settings(candidate.name).fingerprint():
                candidate = self.build(candidate.name)  # settings changed during the build
            self._reconcile(candidate)
            candidate.sync_attributes()  # labels / metadata updated since its snapshot or during its build
            with self.writing() as view:
                view.put(candidate)
        self.save(candidate)
        return candidate

    def _reconcile(self, index: VersionIndex) -> None:
        """Add the store's vectors the index lacks, remove those the store no longer has. Caller: writer."""
        extra, ids, raw = self._differences(index)
        index.remove(extra)
        if len(ids):
            index.add(ids, raw)

    def _differences(self, index: VersionIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids the store no longer has (N,), ids it has and the index lacks (M,), their vectors (M,d)),
        read from the store. Caller: writer."""
        stored = self._store.vector_ids(index.name)
        indexed = index.vectors.ids()
        extra = np.setdiff1d(indexed, stored, assume_unique=True)
        missing = np.setdiff1d(stored, indexed, assume_unique=True)
        found = [np.zeros(0, dtype=np.int64)]
        vectors = [np.zeros((0, index.settings.model_dim), dtype=np.float32)]
        for start in range(0, len(missing), _RECONCILE_CHUNK):
            ids, raw = self._store.vectors(index.name, missing[start:start + _RECONCILE_CHUNK])
            found.append(ids)
            vectors.append(raw)
        if len(extra) or len(missing):
            LOG.info("index of %s reconciled with the store: %d added, %d removed", index.name, len(missing),
                     len(extra))
        return extra, np.concatenate(found), np.concatenate(vectors)

    def sync(self) -> None:
        """Bring every loaded index in line with the store, which other processes write too. An index
        being built is skipped (its build reconciles with the store when it is swapped in). Call without
        the locks."""
        with self.reading() as view:
            names = list(view)
        for name in names:
            lock = self._build_lock(name)
            if not lock.acquire(blocking=False):
                continue
            try:
                if self._sync_one(name):
                    self._install(self.build(name))
            finally:
                lock.release()
        self.maintain(names)

    def _sync_one(self, name: str) -> bool:
        """Apply the store's changes to one loaded index; True when it must be rebuilt (new settings)."""
        with self._writer:
            with self.reading() as view:
                index = view.get(name)
            if index is None:
                return False
            try:
                settings = self.settings(name)
            except UnknownVersion:  # another process dropped the version
                with self.writing() as writable:
                    writable.drop(name)
                return False
            if settings.fingerprint() != index.settings.fingerprint():
                return True
            extra, ids, raw = self._differences(index)  # read while searches go on
            if len(extra) or len(ids):
                with self.writing():
                    index.remove(extra)
                    if len(ids):
                        index.add(ids, raw)
            index.sync_attributes()  # labels / metadata other processes changed, in a copy the index holds
        return False

    def save(self, index: VersionIndex) -> None:
        """Snapshot an index if it changed since its last snapshot (writers wait meanwhile).

        A snapshot is a cache of the store: when it cannot be written (full or read-only disk), the
        index stays dirty for the next attempt, and the search or write that asked for it goes on.
        """
        with self._state.read():
            if index.vectors.dirty:
                try:
                    index.save(self.snapshot_path(index.name))
                except OSError as exc:
                    LOG.warning("cannot write the snapshot of %s (kept in memory, retried later): %s",
                                index.name, exc)

    def save_all(self) -> None:
        with self._state.read():
            indexes = list(self._indexes.values())
        for index in indexes:
            self.save(index)
