"""The replicas' own folders under a shared gallery root, and their removal once a replica is gone.

Each replica on a PostgreSQL gallery keeps its lock and its indexes (FAISS files, or pointers to its
pgvector tables or Milvus collections, which are named with its prefix: `index.remote_index.name_prefix`)
in `root/replicas/<name>/`. A replica replaced for good (a container's id as its name) leaves them
behind: `remove_replica` deletes them. Whether a replica is gone is the caller's to judge (the service's
heartbeats, `cgd replicas`); its lock stops a removal while it runs on this host.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from index.engines import Engines, open_server_backend
from index.gallery import REPLICA_DIR
from index.locking import ProcessLock
from index.records import Item


def replica_folders(root: Path) -> dict[str, float]:
    """The replicas with a folder under the gallery's `root`: name -> seconds since the folder last
    changed (a replica that never recorded a heartbeat is judged by it)."""
    folder = root / REPLICA_DIR
    if not folder.is_dir():
        return {}
    now = time.time()
    return {path.name: now - path.stat().st_mtime for path in sorted(folder.iterdir()) if path.is_dir()}


def _no_items(ids: Iterable[int]) -> Mapping[int, Item]:
    """Removal reads no item (a Milvus backend asks for a source of them)."""
    return {}


def remove_replica(root: Path, engines: Engines, name: str) -> list[str]:
    """Delete a stopped replica's folder under the gallery's `root` and, with pgvector or Milvus, the tables
    or collections named with its prefix; returns the names its index pointers gave (leftovers of an
    interrupted build are dropped too, and logged). `GalleryLocked` while the replica runs on this host."""
    local = root / REPLICA_DIR / name
    if name not in replica_folders(root):
        raise FileNotFoundError(f"no replica folder {local}")
    lock = ProcessLock(local / ".lock")
    try:
        dropped: list[str] = []
        if engines.vector_backend != "faiss":
            backend = open_server_backend(engines, "Flat", local / "faiss", items=_no_items, replica=name)
            try:
                dropped = backend.drop_owned(set(), f"replica {name!r} is removed")
            finally:
                backend.close()
        shutil.rmtree(local)
    finally:
        lock.release()
    return dropped
