"""Compaction: a rebuild of a version's index from the store in a background thread, which drops the
tombstones of deleted items (HNSW, IVF and prefix kinds keep them until a rebuild) and so frees their
memory. The old index serves until the new one is swapped in atomically (`IndexRegistry._install`:
reconciled with the store under the writer lock, swapped under the exclusive state lock), so searches,
adds and deletes go on throughout. The version's build lock is held from start to end: one build of a
version at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

LOG = logging.getLogger(__name__)


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
