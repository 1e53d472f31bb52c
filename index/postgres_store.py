"""`PostgresItemStore`: items, per-version vectors and settings in PostgreSQL; images stay files.

The same contract as `SQLiteItemStore`: each write is one transaction (all or nothing, durable when it
returns: `synchronous_commit=on`), ids come from an identity column and are never reused, vectors are
float16 bytes per (version, item), metadata is JSONB (filters are containment, `@>`, which compares type
and value as the SQLite store does). Image bytes are content-addressed files under `root/blobs`, which
can be a shared volume; an item without an image has a NULL `sha256`. The schema is migrated on open
(`MIGRATIONS`, recorded in `schema_migrations`; see `index.postgres.migrate`).

Several processes (service replicas) may write one database. Every write transaction first increments
the `generation` setting: that row lock orders the writers of every process, and a reader that sees the
generation move knows something changed (`generation()`, `Gallery.sync`). An `add` whose vectors lack
the live version (another process made a new version live meanwhile) is refused with `VersionMoved`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg_pool import ConnectionPool

from index.blobs import BlobStore, image_sha256
from index.errors import (
    DimensionMismatch,
    InvalidItem,
    InvalidQuery,
    ItemNotFound,
    UnknownVersion,
    VersionMoved,
)
from index.filters import MetadataFilter, image_condition
from index.postgres import PostgresSettings, open_migrated_pool, pooled
from index.postprocess import Whitening
from index.records import UNSET, Item, NewItem, VersionInfo
from index.validation import check_metadata, check_text, item_changes
from index.vectors import STORAGE_DTYPE, _decode

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE items (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        external_id TEXT UNIQUE,
        label TEXT,
        metadata JSONB NOT NULL,
        sha256 TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX items_label ON items (label);
    CREATE INDEX items_sha256 ON items (sha256);
    CREATE INDEX items_metadata ON items USING GIN (metadata jsonb_path_ops);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE versions (
        vid INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        dim INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        whitening BYTEA,
        dba_n INTEGER NOT NULL DEFAULT 0,
        dba_alpha DOUBLE PRECISION NOT NULL DEFAULT 3.0
    );
    CREATE TABLE vectors (
        vid INTEGER NOT NULL REFERENCES versions (vid) ON DELETE CASCADE,
        item_id BIGINT NOT NULL REFERENCES items (id) ON DELETE CASCADE,
        vector BYTEA NOT NULL,
        PRIMARY KEY (vid, item_id)
    );
    CREATE INDEX vectors_item ON vectors (item_id);
    """,
    "INSERT INTO settings (key, value) VALUES ('generation', '0') ON CONFLICT (key) DO NOTHING",
    """
    CREATE TABLE attribute_changes (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        item_id BIGINT NOT NULL UNIQUE REFERENCES items (id) ON DELETE CASCADE
    );
    """,
    "ALTER TABLE items ALTER COLUMN sha256 DROP NOT NULL",  # items imported as vectors, without an image
)
_COLUMNS = "id, external_id, label, metadata, sha256, created_at"
LIVE_VERSION_QUERY = "SELECT value FROM settings WHERE key = 'live_version'"  # the service's records read it


def _item(row: tuple) -> Item:
    return Item(id=int(row[0]), external_id=row[1], label=row[2], metadata=row[3], sha256=row[4],
                created_at=float(row[5]))


def filter_sql(label: str | None,
               metadata: MetadataFilter | Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """A WHERE fragment over `items` (alias i) for label and metadata equality, with its parameters."""
    clauses, params = ["TRUE"], []
    if label is not None:
        clauses.append("i.label = %s")
        params.append(label)
    terms = MetadataFilter.of(metadata)
    if terms is not None:
        clauses.append("i.metadata @> %s::jsonb")
        params.append(json.dumps(dict(terms)))
    return " AND ".join(clauses), params


class PostgresItemStore:
    """Items + image blobs + per-version vectors on a PostgreSQL server. Writes are serialised."""

    engine = "postgresql"

    def __init__(self, pool: ConnectionPool, blobs: BlobStore, url: str) -> None:
        self._pool = pool
        self.blobs = blobs
        self._url = url
        self._write_lock = threading.Lock()

    @classmethod
    def open(cls, root: Path, settings: PostgresSettings) -> PostgresItemStore:
        """Connect, migrate the schema, and keep images under `root/blobs`."""
        root.mkdir(parents=True, exist_ok=True)
        pool = open_migrated_pool(settings, MIGRATIONS, "schema_migrations")
        return cls(pool, BlobStore(root / "blobs"), settings.url)

    @property
    def pool(self) -> ConnectionPool:
        """The connection pool (the pgvector backend shares it)."""
        return self._pool

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; an unreachable or timed-out server becomes DatabaseUnavailable."""
        try:
            with pooled(self._pool, self._url) as conn:
                yield conn
        except psycopg.DataError as exc:  # e.g. a NUL character in a text value
            raise InvalidItem(f"the database refused a value: {exc.diag.message_primary or exc}") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        """A write transaction, after every other process's (the generation's row lock orders them)."""
        with self._write_lock, self._connection() as conn, conn.transaction():
            conn.execute("UPDATE settings SET value = (value::bigint + 1)::text WHERE key = 'generation'")
            yield conn

    def _read(self, query: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._connection() as conn:
            return conn.execute(query, params).fetchall()

    def close(self) -> None:
        self._pool.close()

    # writes

    def put_images(self, images: Sequence[bytes]) -> list[str]:
        """Durably store image bytes (before the rows that name them); returns their sha256s."""
        return self.blobs.put_images(images)

    def add(self, items: Sequence[NewItem], hashes: Sequence[str | None],
            vectors: Mapping[str, np.ndarray]) -> tuple[list[Item], list[bool]]:
        """Insert rows and vectors (N,d) per version in one transaction; images must be stored already
        (`hashes`: None for an item without an image).

        As `SQLiteItemStore.add`: an existing external id (stored, or earlier in the batch) yields that
        item unchanged; with no live version yet, the first version in `vectors` becomes live.
        """
        rows = [(check_text(it.external_id, "external_id"), check_text(it.label, "label"),
                 check_metadata(it.metadata)) for it in items]
        now = time.time()
        with self._transaction() as conn:
            live = conn.execute(LIVE_VERSION_QUERY).fetchone()
            if live is not None and live[0] not in vectors:
                raise VersionMoved(f"model version {live[0]!r} went live on another replica; this one is "
                                   "switching to it: retry in a moment")
            wanted = sorted({row[0] for row in rows if row[0] is not None})
            known = {r[1]: _item(r) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM items WHERE external_id = ANY(%s)", (wanted,))} if wanted else {}
            fresh = [n for n, row in enumerate(rows) if row[0] is None or row[0] not in known]
            first: dict[str, int] = {}
            fresh = [n for n in fresh if rows[n][0] is None or first.setdefault(rows[n][0], n) == n]
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO items (external_id, label, metadata, sha256, created_at) "
                                f"VALUES (%s, %s, %s::jsonb, %s, %s) RETURNING {_COLUMNS}",
                                [(*rows[n], hashes[n], now) for n in fresh], returning=True)
                inserted = {}
                for n in fresh:
                    inserted[n] = _item(cur.fetchone())
                    cur.nextset()
            result: list[Item] = []
            created: list[bool] = []
            for n, row in enumerate(rows):
                if n in inserted:
                    result.append(inserted[n])
                    created.append(True)
                else:
                    result.append(known.get(row[0]) or inserted[first[row[0]]])
                    created.append(False)
            new_ids = np.asarray([inserted[n].id for n in fresh], dtype=np.int64)
            for version, array in vectors.items():
                vid = self._ensure_version(conn, version, array.shape[1])
                if len(new_ids):
                    self._copy_vectors(conn, vid, new_ids, array[np.asarray(fresh, dtype=np.int64)])
            if vectors:  # the first version ever stored becomes live
                conn.execute("INSERT INTO settings (key, value) VALUES ('live_version', %s) "
                             "ON CONFLICT (key) DO NOTHING", (next(iter(vectors)),))
        return result, created

    @staticmethod
    def _copy_vectors(conn: psycopg.Connection, vid: int, ids: np.ndarray, vectors: np.ndarray) -> None:
        encoded = vectors.astype(STORAGE_DTYPE)
        with conn.cursor() as cur, cur.copy("COPY vectors (vid, item_id, vector) FROM STDIN") as copy:
            for item_id, row in zip(ids.tolist(), encoded, strict=True):
                copy.write_row((vid, item_id, row.tobytes()))

    @staticmethod
    def _ensure_version(conn: psycopg.Connection, version: str, dim: int) -> int:
        row = conn.execute("SELECT vid, dim FROM versions WHERE name = %s", (version,)).fetchone()
        if row is None:
            return int(conn.execute("INSERT INTO versions (name, dim, created_at) VALUES (%s, %s, %s) "
                                    "RETURNING vid", (version, dim, time.time())).fetchone()[0])
        if row[1] != dim:
            raise DimensionMismatch(f"model version {version!r} has {row[1]}-d vectors, got {dim}-d")
        return int(row[0])

    def update(self, item_id: int, *, label: str | None = UNSET,
               metadata: Mapping[str, Any] = UNSET) -> Item:
        """Change label and/or metadata (metadata is replaced, not merged)."""
        changes = item_changes(label, metadata)
        with self._transaction() as conn:
            if changes:
                assignments = ", ".join(f"{column} = %s" + ("::jsonb" if column == "metadata" else "")
                                        for column in changes)
                conn.execute(f"UPDATE items SET {assignments} WHERE id = %s", (*changes.values(), item_id))
            row = conn.execute(f"SELECT {_COLUMNS} FROM items WHERE id = %s", (item_id,)).fetchone()
            if row is None:
                raise ItemNotFound(f"no item with id {item_id}")
            if changes:  # numbered after every earlier change: writers are ordered by the generation's lock
                conn.execute("DELETE FROM attribute_changes WHERE item_id = %s", (item_id,))
                conn.execute("INSERT INTO attribute_changes (item_id) VALUES (%s)", (item_id,))
        return _item(row)

    def delete(self, ids: Iterable[int]) -> list[Item]:
        """Delete items with their vectors, erasing images no remaining item shares; returns the deleted."""
        wanted = sorted({int(i) for i in ids})
        with self._transaction() as conn:
            deleted = [_item(row) for row in conn.execute(
                f"DELETE FROM items WHERE id = ANY(%s) RETURNING {_COLUMNS}", (wanted,))]
            hashes = sorted({it.sha256 for it in deleted if it.sha256 is not None})
            shared = {row[0] for row in conn.execute(
                "SELECT DISTINCT sha256 FROM items WHERE sha256 = ANY(%s)", (hashes,))}
        for sha256 in set(hashes) - shared:  # after the commit: a crash leaves orphans, not dangling rows
            self.blobs.delete(sha256)
        return sorted(deleted, key=lambda it: wanted.index(it.id))

    def put_vectors(self, version: str, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Durably store vectors (N,d) of existing items lacking one for `version`; returns ids written."""
        encoded = [row.tobytes() for row in vectors.astype(STORAGE_DTYPE)]
        with self._transaction() as conn:
            vid = self._ensure_version(conn, version, vectors.shape[1])
            written = conn.execute(
                "INSERT INTO vectors (vid, item_id, vector) SELECT %s, u.id, u.vector "
                "FROM unnest(%s::bigint[], %s::bytea[]) AS u(id, vector) JOIN items i ON i.id = u.id "
                "ON CONFLICT DO NOTHING RETURNING item_id", (vid, ids.tolist(), encoded)).fetchall()
        return np.sort(np.asarray([row[0] for row in written], dtype=np.int64))

    def attach_images(self, ids: Sequence[int], hashes: Sequence[str]) -> list[int]:
        """Give items without an image theirs (stored already), in one transaction; returns the ids that
        got one (items that have an image, or no longer exist, are left as they are)."""
        with self._transaction() as conn:
            rows = conn.execute(
                "UPDATE items i SET sha256 = u.sha256 FROM unnest(%s::bigint[], %s::text[]) AS u(id, sha256) "
                "WHERE i.id = u.id AND i.sha256 IS NULL RETURNING i.id",
                ([int(i) for i in ids], list(hashes))).fetchall()
        return sorted(int(row[0]) for row in rows)

    def set_whitening(self, version: str, whitening: Whitening | None) -> None:
        with self._transaction() as conn:
            self._version_id(conn, version)
            conn.execute("UPDATE versions SET whitening = %s WHERE name = %s",
                         (whitening.to_bytes() if whitening is not None else None, version))

    def set_dba(self, version: str, n: int, alpha: float) -> None:
        with self._transaction() as conn:
            self._version_id(conn, version)
            conn.execute("UPDATE versions SET dba_n = %s, dba_alpha = %s WHERE name = %s",
                         (n, alpha, version))

    def set_live_version(self, version: str, expected: str | None) -> None:
        """Make `version` live if the live version is still `expected` (or `version` already): a
        compare-and-set, ordered after every other process's write by the generation's row lock.
        `VersionMoved` if another process made another version live meanwhile. `version` may have no
        vectors yet while the gallery is empty."""
        with self._transaction() as conn:
            row = conn.execute(LIVE_VERSION_QUERY).fetchone()
            live = row[0] if row is not None else None
            if live not in (expected, version):
                raise VersionMoved(f"model version {live!r} went live on another replica meanwhile (this one "
                                   f"expected {expected!r}); {version!r} was not made live")
            conn.execute("INSERT INTO settings (key, value) VALUES ('live_version', %s) "
                         "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (version,))

    def drop_version(self, version: str) -> None:
        with self._transaction() as conn:
            vid, _ = self._version_id(conn, version)
            conn.execute("DELETE FROM vectors WHERE vid = %s", (vid,))
            conn.execute("DELETE FROM versions WHERE vid = %s", (vid,))

    def sweep_blobs(self) -> int:
        """Erase image files no item names (left by a crash between a write and its commit). Call with no
        add in flight. Returns how many were erased."""
        return self.blobs.sweep({row[0] for row in self._read("SELECT DISTINCT sha256 FROM items "
                                                              "WHERE sha256 IS NOT NULL")})

    def discard_images(self, hashes: Iterable[str]) -> None:
        """Erase the given images unless an item names them (after an add that failed). Call under the
        gallery's writer lock."""
        wanted = sorted(set(hashes))
        shared = {row[0] for row in self._read("SELECT DISTINCT sha256 FROM items WHERE sha256 = ANY(%s)",
                                                (wanted,))}
        for sha256 in set(wanted) - shared:
            self.blobs.delete(sha256)

    # migration (index.migration): copies that keep ids

    def import_version(self, info: VersionInfo, whitening: Whitening | None) -> None:
        """Create a version as another store has it (name, width, creation time, post-processing)."""
        with self._transaction() as conn:
            conn.execute("INSERT INTO versions (name, dim, created_at, whitening, dba_n, dba_alpha) "
                         "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
                         (info.name, info.dim, info.created_at,
                          whitening.to_bytes() if whitening is not None else None, info.dba_n,
                          info.dba_alpha))

    def import_items(self, items: Sequence[Item],
                     vectors: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Insert items with their own ids and their vectors ((ids, (M,d)) per version), in one
        transaction."""
        with self._transaction() as conn:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO items (id, external_id, label, metadata, sha256, created_at) "
                                "OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s, %s::jsonb, %s, %s)",
                                [(it.id, it.external_id, it.label, json.dumps(it.metadata), it.sha256,
                                  it.created_at) for it in items])
            for version, (ids, array) in vectors.items():
                if len(ids):
                    vid, _ = self._version_id(conn, version)
                    self._copy_vectors(conn, vid, ids, array)

    def import_finished(self, live_version: str | None, next_id: int) -> None:
        """Record the live version and make new ids start at `next_id` at least (ids are never reused)."""
        with self._transaction() as conn:
            if live_version is not None:
                conn.execute("INSERT INTO settings (key, value) VALUES ('live_version', %s) "
                             "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (live_version,))
            conn.execute("SELECT setval(pg_get_serial_sequence('items', 'id'), "
                         "GREATEST(%s - 1, (SELECT COALESCE(MAX(id), 0) FROM items), 1))", (next_id,))

    def max_id(self) -> int:
        """The largest item id stored (0 when empty): where a resumed migration goes on."""
        return int(self._read("SELECT COALESCE(MAX(id), 0) FROM items")[0][0])

    # reads

    def get(self, item_id: int) -> Item:
        rows = self._read(f"SELECT {_COLUMNS} FROM items WHERE id = %s", (int(item_id),))
        if not rows:
            raise ItemNotFound(f"no item with id {item_id}")
        return _item(rows[0])

    def get_many(self, ids: Iterable[int]) -> dict[int, Item]:
        unique = sorted({int(i) for i in ids})
        if not unique:
            return {}
        return {row[0]: _item(row) for row in self._read(f"SELECT {_COLUMNS} FROM items WHERE id = ANY(%s)",
                                                         (unique,))}

    def get_by_external_id(self, external_id: str) -> Item:
        rows = self._read(f"SELECT {_COLUMNS} FROM items WHERE external_id = %s", (external_id,))
        if not rows:
            raise ItemNotFound(f"no item with external id {external_id!r}")
        return _item(rows[0])

    def list_items(self, offset: int = 0, limit: int = 100,
                   label: str | None = None) -> tuple[list[Item], int]:
        if offset < 0 or limit < 0:
            raise InvalidQuery("offset and limit must be >= 0")
        where, params = filter_sql(label, None)
        with self._connection() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM items i WHERE {where} ORDER BY id "
                                "LIMIT %s OFFSET %s", (*params, limit, offset)).fetchall()
            total = conn.execute(f"SELECT COUNT(*) FROM items i WHERE {where}", params).fetchone()[0]
        return [_item(row) for row in rows], int(total)

    def labelled_items(self, labels: set[str] | None = None) -> list[Item]:
        query = f"SELECT {_COLUMNS} FROM items WHERE label IS NOT NULL"
        params: list[Any] = []
        if labels is not None:
            query += " AND label = ANY(%s)"
            params.append(sorted(labels))
        return [_item(row) for row in self._read(query + " ORDER BY id", params)]

    def count(self, has_image: bool | None = None) -> int:
        return int(self._read(f"SELECT COUNT(*) FROM items WHERE {image_condition(has_image)}")[0][0])

    def image(self, item_id: int) -> bytes:
        return self.blobs.get(image_sha256(self.get(item_id)))

    def image_path(self, item_id: int) -> Path:
        return self.blobs.path(image_sha256(self.get(item_id)))

    def matching_ids(self, version: str, label: str | None,
                     metadata: MetadataFilter | Mapping[str, Any] | None,
                     limit: int | None = None) -> np.ndarray:
        where, params = filter_sql(label, metadata)
        with self._connection() as conn:
            vid, _ = self._version_id(conn, version)
            rows = conn.execute(f"SELECT i.id FROM items i JOIN vectors v ON v.item_id = i.id AND v.vid = %s "
                                f"WHERE {where} LIMIT %s", (vid, *params, limit)).fetchall()
        return np.sort(np.asarray([row[0] for row in rows], dtype=np.int64))

    def attribute_changes(self, since: int | None) -> tuple[int, np.ndarray]:
        latest = int(self._read("SELECT coalesce(max(seq), 0) FROM attribute_changes")[0][0])
        rows = [] if since is None else self._read("SELECT item_id FROM attribute_changes WHERE seq > %s",
                                                   (since,))
        return latest, np.sort(np.asarray([row[0] for row in rows], dtype=np.int64))

    def live_version(self) -> str | None:
        rows = self._read(LIVE_VERSION_QUERY)
        return rows[0][0] if rows else None

    def generation(self) -> int:
        """How many write transactions the database has committed (by any process)."""
        return int(self._read("SELECT value FROM settings WHERE key = 'generation'")[0][0])

    # versions and vectors

    @staticmethod
    def _version_id(conn: psycopg.Connection, version: str) -> tuple[int, int]:
        row = conn.execute("SELECT vid, dim FROM versions WHERE name = %s", (version,)).fetchone()
        if row is None:
            raise UnknownVersion(f"no vectors are stored for model version {version!r}")
        return int(row[0]), int(row[1])

    def versions(self) -> list[str]:
        return [row[0] for row in self._read("SELECT name FROM versions ORDER BY vid")]

    def version_info(self, version: str) -> VersionInfo:
        rows = self._read("SELECT name, dim, created_at, whitening, dba_n, dba_alpha FROM versions "
                          "WHERE name = %s", (version,))
        if not rows:
            raise UnknownVersion(f"no vectors are stored for model version {version!r}")
        name, dim, created_at, whitening, dba_n, dba_alpha = rows[0]
        return VersionInfo(name=name, dim=int(dim), created_at=float(created_at),
                           whitening=Whitening.from_bytes(bytes(whitening)).kind if whitening else None,
                           dba_n=int(dba_n), dba_alpha=float(dba_alpha))

    def whitening(self, version: str) -> Whitening | None:
        with self._connection() as conn:
            self._version_id(conn, version)
            row = conn.execute("SELECT whitening FROM versions WHERE name = %s", (version,)).fetchone()
        return Whitening.from_bytes(bytes(row[0])) if row[0] is not None else None

    def vectors(self, version: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found ids (M,) sorted, vectors (M,d)) of the given ids that have a `version` vector."""
        with self._connection() as conn:
            vid, dim = self._version_id(conn, version)
            rows = conn.execute("SELECT item_id, vector FROM vectors WHERE vid = %s AND item_id = ANY(%s) "
                                "ORDER BY item_id", (vid, np.unique(ids).tolist())).fetchall()
        return (np.asarray([r[0] for r in rows], dtype=np.int64),
                _decode([bytes(r[1]) for r in rows], dim).reshape(len(rows), dim))

    def vector_ids(self, version: str) -> np.ndarray:
        with self._connection() as conn:
            vid, _ = self._version_id(conn, version)
            rows = conn.execute("SELECT item_id FROM vectors WHERE vid = %s ORDER BY item_id",
                                (vid,)).fetchall()
        return np.asarray([row[0] for row in rows], dtype=np.int64)

    def ids_missing_vectors(self, version: str, has_image: bool | None = None) -> np.ndarray:
        rows = self._read("SELECT i.id FROM items i WHERE NOT EXISTS (SELECT 1 FROM vectors v JOIN versions s"
                          " ON s.vid = v.vid WHERE s.name = %s AND v.item_id = i.id) AND "
                          f"{image_condition(has_image, 'i.sha256')} ORDER BY i.id", (version,))
        return np.asarray([row[0] for row in rows], dtype=np.int64)

    def iter_vectors(self, version: str, batch: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with self._connection() as conn:
            vid, dim = self._version_id(conn, version)
        last = -1
        while True:
            rows = self._read("SELECT item_id, vector FROM vectors WHERE vid = %s AND item_id > %s "
                              "ORDER BY item_id LIMIT %s", (vid, last, batch))
            if not rows:
                return
            last = rows[-1][0]
            yield np.asarray([r[0] for r in rows], dtype=np.int64), _decode([bytes(r[1]) for r in rows], dim)

    def sample_vectors(self, version: str, n: int, seed: int = 0) -> np.ndarray:
        """Up to `n` stored vectors, drawn uniformly without replacement (the SQLite store's draw)."""
        ids = self.vector_ids(version)
        if len(ids) > n:
            ids = np.sort(np.random.default_rng(seed).choice(ids, n, replace=False))
        return self.vectors(version, ids)[1]
