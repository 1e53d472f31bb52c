"""`SQLiteItemStore`: items, their image blobs and their per-version vectors in one SQLite file (WAL).

Commits are durable (`synchronous=FULL`). One connection writes, under a lock; every reading thread
gets its own connection, so reads never wait for a write. Ids come from AUTOINCREMENT and are never
reused, so an id that was deleted can never name another item (or come back from a stale snapshot).
An item may have no image (`sha256` NULL: a vector imported alone); a gallery made when every item had
one is migrated when it is opened (`allow_items_without_image`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index import vectors as vector_rows
from index.blobs import BlobStore, image_sha256
from index.errors import InvalidQuery, ItemNotFound, StorageCorrupted, VersionMoved
from index.filters import MetadataFilter, image_condition
from index.postprocess import Whitening
from index.records import UNSET, Item, NewItem, VersionInfo
from index.validation import check_metadata, check_text, item_changes

ITEMS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    external_id TEXT UNIQUE,
    label TEXT,
    metadata TEXT NOT NULL,
    sha256 TEXT,
    created_at REAL NOT NULL
);
"""
ITEMS_INDEXES = """
CREATE INDEX IF NOT EXISTS items_label ON items(label);
CREATE INDEX IF NOT EXISTS items_sha256 ON items(sha256);
"""
SCHEMA = ITEMS_TABLE.format(name="items") + ITEMS_INDEXES + """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attribute_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id INTEGER NOT NULL UNIQUE REFERENCES items(id) ON DELETE CASCADE
);
"""
_COLUMNS = "id, external_id, label, metadata, sha256, created_at"
_CHUNK = 900
LOG = logging.getLogger(__name__)


def _item(row: tuple) -> Item:
    return Item(id=row[0], external_id=row[1], label=row[2], metadata=json.loads(row[3]), sha256=row[4],
                created_at=row[5])


def allow_items_without_image(conn: sqlite3.Connection) -> bool:
    """Migrate a gallery made when every item had an image (`sha256 NOT NULL`): SQLite cannot drop a
    constraint, so the items table is copied into one without it in one transaction, keeping ids, the
    id sequence (ids of deleted items are never given again) and the rows that refer to items. Returns
    whether it migrated. `conn` is in autocommit mode, outside a transaction."""
    columns = {row[1]: bool(row[3]) for row in conn.execute("PRAGMA table_info(items)")}
    if not columns.get("sha256"):
        return False
    conn.execute("PRAGMA foreign_keys=OFF")  # dropping the old table must not cascade to the vectors
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            sequence = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
            conn.execute(ITEMS_TABLE.format(name="items_migrated"))
            conn.execute(f"INSERT INTO items_migrated ({_COLUMNS}) SELECT {_COLUMNS} FROM items")
            conn.execute("DROP TABLE items")
            conn.execute("ALTER TABLE items_migrated RENAME TO items")
            for statement in filter(str.strip, ITEMS_INDEXES.split(";")):
                conn.execute(statement)
            if sequence is not None:
                conn.execute("DELETE FROM sqlite_sequence WHERE name = 'items'")
                conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('items', ?)", sequence)
            if conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
                raise StorageCorrupted("rows refer to items that do not exist; the gallery was not migrated")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute("PRAGMA foreign_keys=ON")
    return True


def filter_sql(label: str | None,
               metadata: MetadataFilter | Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """A WHERE fragment over `items` (alias i) for label and metadata equality, with its parameters."""
    clauses, params = ["1"], []
    if label is not None:
        clauses.append("i.label = ?")
        params.append(label)
    for key, value in MetadataFilter.of(metadata) or ():
        path = f'$.{json.dumps(key)}'  # the key as the stored JSON spells it (SQLite matches that text)
        if isinstance(value, bool) or value is None:
            clauses.append("json_type(i.metadata, ?) = ?")
            params += [path, {True: "true", False: "false", None: "null"}[value]]
        elif isinstance(value, str):
            clauses.append("json_type(i.metadata, ?) = 'text' AND json_extract(i.metadata, ?) = ?")
            params += [path, path, value]
        else:
            clauses.append("json_type(i.metadata, ?) IN ('integer', 'real') "
                           "AND json_extract(i.metadata, ?) = ?")
            params += [path, path, value]
    return " AND ".join(clauses), params


class SQLiteItemStore:
    """Items + image blobs + per-version vectors. Writes are serialised; reads run concurrently."""

    engine = "sqlite"

    def __init__(self, path: Path, blobs: BlobStore) -> None:
        self.path = path
        self.blobs = blobs
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.executescript(SCHEMA + vector_rows.SCHEMA)
        if allow_items_without_image(self._writer):
            LOG.info("%s: migrated so that items may have no image", path)

    @classmethod
    def open(cls, root: Path) -> SQLiteItemStore:
        """The default layout: `root/items.sqlite3` and `root/blobs/`."""
        root.mkdir(parents=True, exist_ok=True)
        return cls(root / "items.sqlite3", BlobStore(root / "blobs"))

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
                self._writer.execute("COMMIT")  # a full disk can fail here: then nothing is kept
            except BaseException:
                if self._writer.in_transaction:  # SQLite may have rolled back by itself (SQLITE_FULL)
                    self._writer.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # writes

    def put_images(self, images: Sequence[bytes]) -> list[str]:
        """Durably store image bytes (before the rows that name them); returns their sha256s."""
        return self.blobs.put_images(images)

    def add(self, items: Sequence[NewItem], hashes: Sequence[str | None],
            vectors: Mapping[str, np.ndarray]) -> tuple[list[Item], list[bool]]:
        """Insert rows and vectors (N,d) per version in one transaction; images must be stored already
        (`hashes`: None for an item without an image).

        Returns the items in input order and, per item, whether it is new. An existing external id
        (in the store or earlier in the batch) yields that item unchanged and its vectors are ignored.
        With no live version yet, the first version in `vectors` becomes live in the same transaction.
        """
        rows = [(check_text(it.external_id, "external_id"), check_text(it.label, "label"),
                 check_metadata(it.metadata)) for it in items]
        now = time.time()
        with self._transaction() as conn:
            result: list[Item] = []
            created: list[bool] = []
            for (external_id, label, metadata), sha256 in zip(rows, hashes, strict=True):
                existing = None
                if external_id is not None:
                    existing = conn.execute(f"SELECT {_COLUMNS} FROM items WHERE external_id = ?",
                                            (external_id,)).fetchone()
                if existing is not None:
                    result.append(_item(existing))
                    created.append(False)
                    continue
                cursor = conn.execute("INSERT INTO items (external_id, label, metadata, sha256, created_at) "
                                      "VALUES (?, ?, ?, ?, ?)", (external_id, label, metadata, sha256, now))
                result.append(Item(int(cursor.lastrowid), external_id, label, json.loads(metadata), sha256,
                                   now))
                created.append(True)
            new_ids = np.asarray([it.id for it, new in zip(result, created, strict=True) if new],
                                 dtype=np.int64)
            new_rows = np.flatnonzero(created)
            for version, array in vectors.items():
                if len(new_ids):
                    vector_rows.insert(conn, version, new_ids, array[new_rows])
                else:
                    vector_rows.ensure_version(conn, version, array.shape[1])
            if vectors:  # the first version ever stored becomes live
                conn.execute("INSERT OR IGNORE INTO settings (key, value) VALUES ('live_version', ?)",
                             (next(iter(vectors)),))
        return result, created

    def update(self, item_id: int, *, label: str | None = UNSET,
               metadata: Mapping[str, Any] = UNSET) -> Item:
        """Change label and/or metadata (metadata is replaced, not merged)."""
        changes = item_changes(label, metadata)
        with self._transaction() as conn:
            if changes:
                assignments = ", ".join(f"{column} = ?" for column in changes)
                conn.execute(f"UPDATE items SET {assignments} WHERE id = ?", (*changes.values(), item_id))
            row = conn.execute(f"SELECT {_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise ItemNotFound(f"no item with id {item_id}")
            if changes:  # the item's latest change, numbered after every earlier one (never reused)
                conn.execute("DELETE FROM attribute_changes WHERE item_id = ?", (item_id,))
                conn.execute("INSERT INTO attribute_changes (item_id) VALUES (?)", (item_id,))
        return _item(row)

    def delete(self, ids: Iterable[int]) -> list[Item]:
        """Delete items with their vectors, erasing images no remaining item shares; returns the deleted."""
        deleted: list[Item] = []
        with self._transaction() as conn:
            for item_id in ids:
                row = conn.execute(f"SELECT {_COLUMNS} FROM items WHERE id = ?", (int(item_id),)).fetchone()
                if row is not None:
                    conn.execute("DELETE FROM items WHERE id = ?", (int(item_id),))
                    deleted.append(_item(row))
            shared = "SELECT 1 FROM items WHERE sha256 = ? LIMIT 1"
            orphans = {it.sha256 for it in deleted
                       if it.sha256 is not None and conn.execute(shared, (it.sha256,)).fetchone() is None}
        for sha256 in orphans:  # after the commit: a crash before this leaves an orphan, never a dangling row
            self.blobs.delete(sha256)
        return deleted

    def put_vectors(self, version: str, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Durably store vectors (N,d) of existing items lacking one for `version`; returns ids written."""
        with self._transaction() as conn:
            return vector_rows.insert(conn, version, ids, vectors)

    def attach_images(self, ids: Sequence[int], hashes: Sequence[str]) -> list[int]:
        """Give items without an image theirs (stored already), in one transaction; returns the ids that
        got one (items that have an image, or no longer exist, are left as they are)."""
        attached = []
        with self._transaction() as conn:
            for item_id, sha256 in zip(ids, hashes, strict=True):
                cursor = conn.execute("UPDATE items SET sha256 = ? WHERE id = ? AND sha256 IS NULL",
                                      (sha256, int(item_id)))
                if cursor.rowcount == 1:
                    attached.append(int(item_id))
        return attached

    def set_whitening(self, version: str, whitening: Whitening | None) -> None:
        with self._transaction() as conn:
            vector_rows.set_whitening(conn, version, whitening)

    def set_dba(self, version: str, n: int, alpha: float) -> None:
        with self._transaction() as conn:
            vector_rows.set_dba(conn, version, n, alpha)

    def set_live_version(self, version: str, expected: str | None) -> None:
        """Make `version` live if the live version is still `expected` (or `version` already), else
        `VersionMoved`; `version` may have no vectors yet while the gallery is empty."""
        with self._transaction() as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = 'live_version'").fetchone()
            live = row[0] if row is not None else None
            if live not in (expected, version):
                raise VersionMoved(f"model version {live!r} is live, not {expected!r}; {version!r} was not "
                                   "made live")
            conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('live_version', ?)",
                         (version,))

    def drop_version(self, version: str) -> None:
        with self._transaction() as conn:
            vector_rows.drop_version(conn, version)

    def sweep_blobs(self) -> int:
        """Erase image files no item names (left by a crash between a write and its commit). Call with no
        add in flight. Returns how many were erased."""
        referenced = self._reader().execute("SELECT DISTINCT sha256 FROM items WHERE sha256 IS NOT NULL")
        return self.blobs.sweep({row[0] for row in referenced})

    def discard_images(self, hashes: Iterable[str]) -> None:
        """Erase the given images unless an item names them (after an add that failed). Call under the
        gallery's writer lock, so that no add can be about to name them."""
        shared = "SELECT 1 FROM items WHERE sha256 = ? LIMIT 1"
        for sha256 in set(hashes):
            if self._reader().execute(shared, (sha256,)).fetchone() is None:
                self.blobs.delete(sha256)

    # reads

    def get(self, item_id: int) -> Item:
        row = self._reader().execute(f"SELECT {_COLUMNS} FROM items WHERE id = ?", (int(item_id),)).fetchone()
        if row is None:
            raise ItemNotFound(f"no item with id {item_id}")
        return _item(row)

    def get_many(self, ids: Iterable[int]) -> dict[int, Item]:
        """Items by id; ids that do not exist are absent from the result."""
        unique = sorted({int(i) for i in ids})
        found: dict[int, Item] = {}
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start:start + _CHUNK]
            query = f"SELECT {_COLUMNS} FROM items WHERE id IN ({','.join('?' * len(chunk))})"
            found.update((row[0], _item(row)) for row in self._reader().execute(query, chunk))
        return found

    def get_by_external_id(self, external_id: str) -> Item:
        row = self._reader().execute(f"SELECT {_COLUMNS} FROM items WHERE external_id = ?",
                                     (external_id,)).fetchone()
        if row is None:
            raise ItemNotFound(f"no item with external id {external_id!r}")
        return _item(row)

    def list_items(self, offset: int = 0, limit: int = 100,
                   label: str | None = None) -> tuple[list[Item], int]:
        """A page of items in id order, and the total number matching `label`."""
        if offset < 0 or limit < 0:
            raise InvalidQuery("offset and limit must be >= 0")
        where, params = filter_sql(label, None)
        conn = self._reader()
        rows = conn.execute(f"SELECT {_COLUMNS} FROM items i WHERE {where} ORDER BY id LIMIT ? OFFSET ?",
                            (*params, limit, offset)).fetchall()
        total = conn.execute(f"SELECT COUNT(*) FROM items i WHERE {where}", params).fetchone()[0]
        return [_item(row) for row in rows], int(total)

    def labelled_items(self, labels: set[str] | None = None) -> list[Item]:
        """Items that have a label (restricted to `labels` when given), in id order."""
        query = f"SELECT {_COLUMNS} FROM items WHERE label IS NOT NULL"
        params: list[str] = []
        if labels is not None:
            params = sorted(labels)
            query += f" AND label IN ({','.join('?' * len(params))})"
        return [_item(row) for row in self._reader().execute(query + " ORDER BY id", params)]

    def count(self, has_image: bool | None = None) -> int:
        query = f"SELECT COUNT(*) FROM items WHERE {image_condition(has_image)}"
        return int(self._reader().execute(query).fetchone()[0])

    def image(self, item_id: int) -> bytes:
        return self.blobs.get(image_sha256(self.get(item_id)))

    def image_path(self, item_id: int) -> Path:
        return self.blobs.path(image_sha256(self.get(item_id)))

    def matching_ids(self, version: str, label: str | None,
                     metadata: MetadataFilter | Mapping[str, Any] | None,
                     limit: int | None = None) -> np.ndarray:
        """Sorted ids (N,) of items with a `version` vector whose label / metadata equal the given ones
        (any `limit` of them, when given: the query stops there)."""
        where, params = filter_sql(label, metadata)
        vid, _ = vector_rows.version_id(self._reader(), version)
        rows = self._reader().execute(
            f"SELECT i.id FROM items i JOIN vectors v ON v.item_id = i.id AND v.vid = ? WHERE {where} "
            "LIMIT ?", (vid, *params, -1 if limit is None else limit)).fetchall()
        return np.sort(np.asarray([row[0] for row in rows], dtype=np.int64))

    def attribute_changes(self, since: int | None) -> tuple[int, np.ndarray]:
        """(the number of the latest label / metadata change, sorted ids of the items changed after change
        `since`: none for None)."""
        conn = self._reader()
        latest = conn.execute("SELECT coalesce(max(seq), 0) FROM attribute_changes").fetchone()[0]
        rows = [] if since is None else conn.execute(
            "SELECT item_id FROM attribute_changes WHERE seq > ?", (since,)).fetchall()
        return int(latest), np.sort(np.asarray([row[0] for row in rows], dtype=np.int64))

    def live_version(self) -> str | None:
        row = self._reader().execute("SELECT value FROM settings WHERE key = 'live_version'").fetchone()
        return row[0] if row is not None else None

    def generation(self) -> int:
        """Always 0: one process has the file open (the gallery's lock), so nothing changes behind it."""
        return 0

    def versions(self) -> list[str]:
        return vector_rows.version_names(self._reader())

    def version_info(self, version: str) -> VersionInfo:
        return vector_rows.version_info(self._reader(), version)

    def whitening(self, version: str) -> Whitening | None:
        return vector_rows.whitening(self._reader(), version)

    def vectors(self, version: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found ids (M,), vectors (M,d)) of the given ids that have a `version` vector."""
        return vector_rows.fetch(self._reader(), version, ids)

    def vector_ids(self, version: str) -> np.ndarray:
        return vector_rows.ids_with_vectors(self._reader(), version)

    def ids_missing_vectors(self, version: str, has_image: bool | None = None) -> np.ndarray:
        return vector_rows.ids_missing(self._reader(), version, has_image)

    def iter_vectors(self, version: str, batch: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return vector_rows.iterate(self._reader(), version, batch)

    def sample_vectors(self, version: str, n: int, seed: int = 0) -> np.ndarray:
        return vector_rows.sample(self._reader(), version, n, seed)
