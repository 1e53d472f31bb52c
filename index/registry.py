"""`IndexRegistry`: the loaded `VersionIndex` of each model version, and their life cycle.

An index is loaded from `faiss/<version>.index` or, if that snapshot is missing, damaged or stale, built
from the store. Builds (also for training, compaction and new post-processing settings) run without the
gallery's locks while the previous index keeps serving; the result is then reconciled with the store
under the writer lock (vectors added or deleted meanwhile) and swapped in under the exclusive state lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

import numpy as np

from index.errors import SnapshotCorrupt
from index.kinds import IndexSpec
from index.locking import ReadWriteLock
from index.protocols import ItemStore
from index.version_index import VersionIndex, VersionSettings

LOG = logging.getLogger(__name__)

_RECONCILE_CHUNK = 16384


class IndexRegistry:
    """Per-version indexes. `indexes` may be read under `state.read()` and changed under `state.write()`."""

    def __init__(self, directory: Path, store: ItemStore, spec: IndexSpec, *, gpu: bool,
                 writer: threading.Lock, state: ReadWriteLock) -> None:
        self.directory = directory
        self.indexes: dict[str, VersionIndex] = {}
        self._store = store
        self._spec = spec
        self._gpu = gpu
        self._writer = writer
        self._state = state
        self._build_locks: dict[str, threading.Lock] = {}
        self._build_locks_guard = threading.Lock()

    def snapshot_path(self, version: str) -> Path:
        return self.directory / f"{quote(version, safe='')}.index"

    def settings(self, version: str) -> VersionSettings:
        """The version's post-processing as stored now (UnknownVersion if it has no vectors)."""
        info = self._store.version_info(version)
        return VersionSettings(info.dim, self._store.whitening(version), info.dba_n, info.dba_alpha)

    def build(self, version: str) -> VersionIndex:
        """A new index of `version` from the store (no gallery lock needed)."""
        return VersionIndex.build(version, self.settings(version), self._spec, self._store, self._gpu)

    def _build_lock(self, version: str) -> threading.Lock:
        with self._build_locks_guard:
            return self._build_locks.setdefault(version, threading.Lock())

    def ensure(self, version: str) -> VersionIndex:
        """The loaded index of `version`, loading or building it first. Call without the gallery's locks."""
        with self._state.read():
            if version in self.indexes:
                return self.indexes[version]
        with self._build_lock(version):
            with self._state.read():
                if version in self.indexes:
                    return self.indexes[version]
            path = self.snapshot_path(version)
            try:
                candidate = VersionIndex.load(path, version, self.settings(version), self._spec, self._gpu)
                LOG.info("loaded %s (%d vectors)", path, len(candidate))
            except SnapshotCorrupt as exc:
                if path.exists():
                    LOG.warning("rebuilding the index of %s from the store: %s", version, exc)
                candidate = self.build(version)
            return self._install(candidate)

    def rebuild(self, version: str) -> None:
        """Replace the index of `version` by a fresh build. Call without the gallery's locks."""
        with self._build_lock(version):
            self._install(self.build(version))

    def maintain(self, versions: Iterable[str]) -> None:
        """Rebuild loaded indexes that ask for it (training possible, grown, many tombstones), unless one
        is being built already. Call without the gallery's locks."""
        for version in versions:
            with self._state.read():
                index = self.indexes.get(version)
                reason = index.vectors.maintenance() if index is not None else None
            lock = self._build_lock(version)
            if reason is not None and lock.acquire(blocking=False):
                try:
                    LOG.info("rebuilding the index of %s (%s)", version, reason)
                    self._install(self.build(version))
                finally:
                    lock.release()

    def _install(self, candidate: VersionIndex) -> VersionIndex:
        with self._writer:
            if candidate.settings.fingerprint() != self.settings(candidate.name).fingerprint():
                candidate = self.build(candidate.name)  # settings changed during the build
            self.reconcile(candidate)
            with self._state.write():
                self.indexes[candidate.name] = candidate
        self.save(candidate)
        return candidate

    def reconcile(self, index: VersionIndex) -> None:
        """Add the store's vectors the index lacks, remove those the store no longer has. Caller: writer."""
        stored = self._store.vector_ids(index.name)
        indexed = index.vectors.ids()
        extra = np.setdiff1d(indexed, stored, assume_unique=True)
        missing = np.setdiff1d(stored, indexed, assume_unique=True)
        index.remove(extra)
        for start in range(0, len(missing), _RECONCILE_CHUNK):
            ids, raw = self._store.vectors(index.name, missing[start:start + _RECONCILE_CHUNK])
            index.add(ids, raw)
        if len(extra) or len(missing):
            LOG.info("index of %s reconciled with the store: %d added, %d removed", index.name, len(missing),
                     len(extra))

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
            indexes = list(self.indexes.values())
        for index in indexes:
            self.save(index)
