"""Compaction: a rebuild of a version's index from the store in a background thread, which drops the
tombstones of deleted items (HNSW, IVF and prefix kinds keep them until a rebuild) and so frees their
memory. The old index serves until the new one is swapped in atomically (`IndexRegistry._install`:
reconciled with the store under the writer lock, swapped under the exclusive state lock), so searches,
adds and deletes go on throughout. The version's build lock is held from start to end: one build of a
version at a time. Once the new index is in, the heap pages the old one freed are handed back to the
operating system (`release_freed_memory`), so the memory freed shows in the process's resident set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable

LOG = logging.getLogger(__name__)


def release_freed_memory() -> bool:
    """Hand the free pages of the heap back to the operating system (glibc's `malloc_trim`). glibc keeps
    freed blocks below its mmap threshold (up to 32 MiB by its dynamic rule; 1 GiB where the torch
    runtime raised it, `model.malloc`) inside the process, so a dropped index's codes, links and id maps
    would stay resident. False where glibc is absent (nothing done)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return False
    if trim is None:
        return False
    trim(0)
    return True


class Compactions:
    """The running compaction thread of each version."""

    def __init__(self) -> None:
        self._threads: dict[str, threading.Thread] = {}
        self._guard = threading.Lock()

    def start(self, version: str, rebuild: Callable[[], object],
              build_lock: threading.Lock) -> threading.Thread:
        """Run `rebuild()` in a daemon thread; `build_lock` is held by the caller and released at the end."""

        def run() -> None:
            try:
                LOG.info("compacting the index of %s", version)
                rebuild()
                release_freed_memory()  # the old index was dropped when the new one went in
                LOG.info("compacted the index of %s", version)
            except Exception as exc:  # the gallery closed meanwhile, or the store failed: the old one serves
                LOG.warning("compaction of %s abandoned: %s", version, exc)
            finally:
                build_lock.release()

        thread = threading.Thread(target=run, name=f"cgd-compact-{version}", daemon=True)
        with self._guard:
            self._threads[version] = thread
        thread.start()
        return thread

    def wait(self, version: str, timeout: float | None = None) -> bool:
        """Wait for the version's compaction, if one runs; False if it still runs after `timeout`."""
        with self._guard:
            thread = self._threads.get(version)
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def running(self, version: str) -> bool:
        with self._guard:
            thread = self._threads.get(version)
        return thread is not None and thread.is_alive()
