"""Moving a gallery from SQLite to PostgreSQL: items keep their ids, vectors and versions come along.

`migrate_gallery(root, engines)` copies in id order, a batch of items with all their vectors per
transaction, so an interrupted run resumes after the last batch that was committed. The images stay
where they are (`root/blobs`, which the PostgreSQL store uses too). The gallery's process lock is held
throughout: the service must be stopped. `verify_migration` then compares counts and the answers of
both galleries to a sample of stored vectors.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.engines import Engines
from index.errors import GalleryError
from index.gallery import Gallery
from index.locking import ProcessLock
from index.postgres_store import PostgresItemStore
from index.store import SQLiteItemStore

BATCH = 1000
SAMPLE_QUERIES = 50


class MigrationMismatch(GalleryError):
    """The copy does not match its source (counts, or the answers to the sample searches)."""


@dataclass(frozen=True)
class MigrationReport:
    """What a migration copied and how the copy compared with its source."""

    items: int
    vectors: dict[str, int]
    queries: int
    top1_agreement: float
    overlap_at_10: float


def _next_id(path: Path) -> int:
    """The id SQLite's AUTOINCREMENT would give next (ids of deleted items are never reused)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
    return int(row[0]) + 1 if row else 1


def _id_pages(path: Path, after: int, batch: int) -> Iterator[tuple[int, list[int]]]:
    """(items with ids <= `after`, then each next page of ids above `after`, in id order)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        done = int(conn.execute("SELECT COUNT(*) FROM items WHERE id <= ?", (after,)).fetchone()[0])
        while True:
            ids = [row[0] for row in conn.execute("SELECT id FROM items WHERE id > ? ORDER BY id LIMIT ?",
                                                  (after, batch))]
            if not ids:
                return
            yield done, ids
            done += len(ids)
            after = ids[-1]


def migrate_gallery(root: Path, engines: Engines, progress: Callable[[int, int], None] | None = None,
                    batch: int = BATCH) -> tuple[int, int]:
    """Copy the SQLite gallery at `root` into `engines`' PostgreSQL; returns (items in all, copied by this
    run). `progress(done, total)` is called after each batch (a resumed run starts at what was done)."""
    if engines.database_url is None:
        raise GalleryError("the target of a migration is a PostgreSQL database URL")
    if not (root / "items.sqlite3").is_file():
        raise GalleryError(f"no SQLite gallery at {root} (items.sqlite3 is missing)")
    lock = ProcessLock(root / ".lock")
    try:
        source = SQLiteItemStore.open(root)
        try:
            target = PostgresItemStore.open(root, engines.postgres())
        except BaseException:
            source.close()
            raise
        try:
            versions = source.versions()
            for version in versions:
                target.import_version(source.version_info(version), source.whitening(version))
            total, copied = source.count(), 0
            for done, ids in _id_pages(source.path, target.max_id(), batch):
                found = source.get_many(ids)
                items = [found[i] for i in ids if i in found]
                wanted = np.asarray([it.id for it in items], dtype=np.int64)
                target.import_items(items, {v: source.vectors(v, wanted) for v in versions})
                copied += len(items)
                if progress is not None:
                    progress(done + len(items), total)
            target.import_finished(source.live_version(), _next_id(source.path))
        finally:
            source.close()
            target.close()
    finally:
        lock.release()
    return total, copied


def verify_migration(root: Path, engines: Engines, index_kind: str = "Flat",
                     queries: int = SAMPLE_QUERIES) -> MigrationReport:
    """Compare the SQLite gallery at `root` with its copy: item and vector counts must be equal, and a
    sample of stored vectors must find the same first item (MigrationMismatch otherwise)."""
    with Gallery.open(root) as source:
        items, live = source.count(), source.live_version
        missing = {v: len(source.ids_missing_vectors(v)) for v in source.versions()}
        rng = np.random.default_rng(0)
        picked = sorted({int(rng.integers(items)) for _ in range(queries)}) if items else []
        sample = [source.list_items(offset, 1)[0][0].id for offset in picked]
        lacking_live = set(source.ids_missing_vectors(live).tolist()) if live is not None else set()
        sample = [i for i in sample if live is not None and i not in lacking_live]
        vectors = np.stack([source.vector(i) for i in sample]) if sample else None
        expected = source.search(vectors, 10)[1] if sample else []
    with Gallery.open(root, index_kind=index_kind, engines=engines) as copy:
        if copy.count() != items:
            raise MigrationMismatch(f"{items} items in SQLite, {copy.count()} in PostgreSQL")
        if copy.live_version != live:
            raise MigrationMismatch(f"live version {live!r} in SQLite, {copy.live_version!r} in PostgreSQL")
        for version, lacking in missing.items():
            if len(copy.ids_missing_vectors(version)) != lacking:
                raise MigrationMismatch(f"version {version}: the copy lacks vectors the source has")
        found = copy.search(vectors, 10)[1] if sample else []
    pairs = list(zip(expected, found, strict=True))
    # the same first item, or one as similar (equal vectors may rank in either order)
    top1 = float(np.mean([bool(a and b) and (a[0].item.id == b[0].item.id
                                             or abs(a[0].score - b[0].score) < 1e-4)
                          for a, b in pairs])) if pairs else 1.0
    overlap = float(np.mean([len({h.item.id for h in a} & {h.item.id for h in b}) / max(len(a), 1)
                             for a, b in pairs])) if pairs else 1.0
    if top1 < 1.0:
        raise MigrationMismatch(f"only {top1:.0%} of the sample searches find the same first item")
    return MigrationReport(items, {v: items - lacking for v, lacking in missing.items()}, len(pairs), top1,
                           overlap)
