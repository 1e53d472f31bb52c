"""Durable per-model-version vectors in SQLite: float16 blobs, one row per (version, item).

The FAISS indexes are rebuilt from these rows, so every vector handed to FAISS is first rounded
through float16 (`quantize`): a live index and one rebuilt after a restart hold identical values.
Functions take an open connection so that they join the caller's transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import numpy as np

from index.errors import DimensionMismatch, StorageCorrupted, UnknownVersion
from index.filters import image_condition
from index.postprocess import Whitening
from index.records import VersionInfo

STORAGE_DTYPE = np.dtype("<f2")
_CHUNK = 900  # stays below SQLite's limit on bound parameters

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    vid INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    dim INTEGER NOT NULL,
    created_at REAL NOT NULL,
    whitening BLOB,
    dba_n INTEGER NOT NULL DEFAULT 0,
    dba_alpha REAL NOT NULL DEFAULT 3.0
);
CREATE TABLE IF NOT EXISTS vectors (
    vid INTEGER NOT NULL REFERENCES versions(vid) ON DELETE CASCADE,
    item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    PRIMARY KEY (vid, item_id)
);
CREATE INDEX IF NOT EXISTS vectors_item ON vectors(item_id);
"""


def quantize(vectors: np.ndarray) -> np.ndarray:
    """(N,d) float32 -> the same values rounded through float16, as C-contiguous float32."""
    return np.ascontiguousarray(vectors.astype(STORAGE_DTYPE).astype(np.float32))


def _decode(blobs: list[bytes], dim: int) -> np.ndarray:
    """float16 blobs -> (N,dim) float32."""
    if any(len(blob) != dim * STORAGE_DTYPE.itemsize for blob in blobs):
        raise StorageCorrupted(f"a stored vector does not have {dim} float16 values")
    flat = np.frombuffer(b"".join(blobs), dtype=STORAGE_DTYPE)
    return np.ascontiguousarray(flat.reshape(len(blobs), dim).astype(np.float32))


def _version_row(conn: sqlite3.Connection, version: str) -> tuple[int, int] | None:
    return conn.execute("SELECT vid, dim FROM versions WHERE name = ?", (version,)).fetchone()


def version_id(conn: sqlite3.Connection, version: str) -> tuple[int, int]:
    """(vid, dim) of a version; UnknownVersion if it was never stored."""
    row = _version_row(conn, version)
    if row is None:
        raise UnknownVersion(f"no vectors are stored for model version {version!r}")
    return row


def ensure_version(conn: sqlite3.Connection, version: str, dim: int) -> int:
    """The vid of `version`, created with width `dim` on first use; DimensionMismatch on another width."""
    row = _version_row(conn, version)
    if row is None:
        cursor = conn.execute("INSERT INTO versions (name, dim, created_at) VALUES (?, ?, ?)",
                              (version, dim, time.time()))
        return int(cursor.lastrowid)
    if row[1] != dim:
        raise DimensionMismatch(f"model version {version!r} has {row[1]}-d vectors, got {dim}-d")
    return int(row[0])


def version_info(conn: sqlite3.Connection, version: str) -> VersionInfo:
    row = conn.execute("SELECT name, dim, created_at, whitening, dba_n, dba_alpha FROM versions "
                       "WHERE name = ?", (version,)).fetchone()
    if row is None:
        raise UnknownVersion(f"no vectors are stored for model version {version!r}")
    whitening = Whitening.from_bytes(row[3]).kind if row[3] is not None else None
    return VersionInfo(name=row[0], dim=int(row[1]), created_at=float(row[2]), whitening=whitening,
                       dba_n=int(row[4]), dba_alpha=float(row[5]))


def version_names(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT name FROM versions ORDER BY vid")]


def whitening(conn: sqlite3.Connection, version: str) -> Whitening | None:
    version_id(conn, version)
    row = conn.execute("SELECT whitening FROM versions WHERE name = ?", (version,)).fetchone()
    return Whitening.from_bytes(row[0]) if row[0] is not None else None


def set_whitening(conn: sqlite3.Connection, version: str, fitted: Whitening | None) -> None:
    version_id(conn, version)
    conn.execute("UPDATE versions SET whitening = ? WHERE name = ?",
                 (fitted.to_bytes() if fitted is not None else None, version))


def set_dba(conn: sqlite3.Connection, version: str, n: int, alpha: float) -> None:
    version_id(conn, version)
    conn.execute("UPDATE versions SET dba_n = ?, dba_alpha = ? WHERE name = ?", (n, alpha, version))


def drop_version(conn: sqlite3.Connection, version: str) -> None:
    vid, _ = version_id(conn, version)
    conn.execute("DELETE FROM vectors WHERE vid = ?", (vid,))
    conn.execute("DELETE FROM versions WHERE vid = ?", (vid,))


def insert(conn: sqlite3.Connection, version: str, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Store vectors (N,d) for item ids (N,) that exist and have none yet for `version`; returns those ids.

    Vectors are write-once per (version, item): a changed model is a new version.
    """
    vid = ensure_version(conn, version, vectors.shape[1])
    encoded = vectors.astype(STORAGE_DTYPE)
    written = []
    for item_id, row in zip(ids.tolist(), encoded, strict=True):
        cursor = conn.execute(
            "INSERT OR IGNORE INTO vectors (vid, item_id, vector) SELECT ?, id, ? FROM items WHERE id = ?",
            (vid, row.tobytes(), item_id))
        if cursor.rowcount == 1:
            written.append(item_id)
    return np.asarray(written, dtype=np.int64)


def fetch(conn: sqlite3.Connection, version: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored vectors of those `ids` (N,) that have one: (found ids (M,) sorted, vectors (M,d))."""
    vid, dim = version_id(conn, version)
    found: list[int] = []
    blobs: list[bytes] = []
    unique = np.unique(ids).tolist()
    for start in range(0, len(unique), _CHUNK):
        chunk = unique[start:start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        query = f"SELECT item_id, vector FROM vectors WHERE vid = ? AND item_id IN ({marks}) ORDER BY item_id"
        for item_id, blob in conn.execute(query, (vid, *chunk)):
            found.append(item_id)
            blobs.append(blob)
    return np.asarray(found, dtype=np.int64), _decode(blobs, dim).reshape(len(blobs), dim)


def ids_with_vectors(conn: sqlite3.Connection, version: str) -> np.ndarray:
    """Sorted ids (N,) of the items that have a vector for `version`."""
    vid, _ = version_id(conn, version)
    rows = conn.execute("SELECT item_id FROM vectors WHERE vid = ? ORDER BY item_id", (vid,)).fetchall()
    return np.asarray([row[0] for row in rows], dtype=np.int64)


def ids_missing(conn: sqlite3.Connection, version: str, has_image: bool | None = None) -> np.ndarray:
    """Sorted ids (N,) of the items without a vector for `version` (all items for an unknown version);
    only those with an image (`has_image` True) or without one (False) when given."""
    row = _version_row(conn, version)
    vid = row[0] if row is not None else -1
    rows = conn.execute("SELECT id FROM items WHERE id NOT IN (SELECT item_id FROM vectors WHERE vid = ?) "
                        f"AND {image_condition(has_image)} ORDER BY id", (vid,)).fetchall()
    return np.asarray([r[0] for r in rows], dtype=np.int64)


def iterate(conn: sqlite3.Connection, version: str,
            batch: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every stored vector of `version` in id order, as (ids (B,), vectors (B,d)) batches."""
    vid, dim = version_id(conn, version)
    last = -1
    while True:
        rows = conn.execute("SELECT item_id, vector FROM vectors WHERE vid = ? AND item_id > ? "
                            "ORDER BY item_id LIMIT ?", (vid, last, batch)).fetchall()
        if not rows:
            return
        last = rows[-1][0]
        yield np.asarray([r[0] for r in rows], dtype=np.int64), _decode([r[1] for r in rows], dim)


def sample(conn: sqlite3.Connection, version: str, n: int, seed: int = 0) -> np.ndarray:
    """Up to `n` stored vectors of `version`, drawn uniformly without replacement: (min(n, N), d)."""
    ids = ids_with_vectors(conn, version)
    if len(ids) > n:
        ids = np.sort(np.random.default_rng(seed).choice(ids, n, replace=False))
    return fetch(conn, version, ids)[1]
