"""`PgvectorIndex`: one version's searchable vectors in a PostgreSQL table with pgvector (`vector(d)`).

Inner product (`<#>`, which pgvector returns negated). Kinds (`CGD_INDEX_KIND`):

| kind   | index                                          | search                             |
| ------ | ---------------------------------------------- | ---------------------------------- |
| Flat   | none: an exact scan                            | exact                              |
| HNSW   | hnsw (vector_ip_ops), m 16, ef_construction 64 | hnsw.ef_search = max(ef_search, k) |
| HNSW32 | hnsw, m 32, ef_construction 128                | the same                           |

A build loads the rows first and creates the HNSW index when the pointer is saved (pgvector builds a
graph over loaded rows several times faster than by inserts); until then that table is searched exactly.
Label and metadata filters join the store's `items` table (same database) in SQL, with the item store's
own WHERE clause (`index.postgres_store.filter_sql`, values as parameters); allowed ids are a
`WHERE id = ANY(...)`. A filtered or approximate search that returns fewer than min(k, candidates) hits
is answered again exactly over the candidates. pgvector's HNSW (0.6 here; iterative scans came with 0.8)
keeps the ef_search nearest of the walk that pass the filter, so a selective filter keeps fewer than k
and is answered exactly by that second statement: it needs no id list (`exact_filter_limit` 0; recall@10
1.0 for a 1 % filter at 100k x 1536, docs/BENCHMARKS.md). Removal is physical (DELETE). Not
thread-safe: the registry serialises writers and searches.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg_pool import ConnectionPool

from index.errors import DimensionMismatch, SnapshotCorrupt
from index.filters import ItemFilter
from index.kinds import DEFAULT_EF_SEARCH
from index.postgres import DatabaseUnavailable, PostgresSettings, open_pool, pooled, redact, scrub
from index.postgres_store import filter_sql
from index.remote_index import (
    NAME_PREFIX,
    ServerIndex,
    SortedIds,
    choose_kind,
    named_by_pointers,
    new_name,
    owned,
    pad_hits,
    read_pointer,
    write_pointer,
)

LOG = logging.getLogger(__name__)

KINDS: dict[str, dict[str, int] | None] = {  # canonical name -> HNSW parameters (None: exact scan)
    "Flat": None,
    "HNSW": {"m": 16, "ef_construction": 64},
    "HNSW32": {"m": 32, "ef_construction": 128},
}
MAX_HNSW_DIM = 2000  # pgvector indexes `vector` columns up to 2,000 dimensions
BUILD_MEMORY = "1GB"  # maintenance_work_mem while an HNSW graph is built (it is slow once it spills)
EXACT_FALLBACK_LIMIT = 1 << 18
_COPY_CHUNK = 4096


class PgvectorIndex(ServerIndex):
    """A table `cgd_vectors_<hex>` (id BIGINT PRIMARY KEY, embedding vector(dim)) and its HNSW index."""

    exact_filter_limit = 0  # a selective filter is exact already: the walk keeps too few, the scan answers

    def __init__(self, backend: PgvectorBackend, table: str, dim: int, ids: SortedIds, *,
                 indexed: bool) -> None:
        super().__init__(dim, ids)
        self._backend = backend
        self.table = table
        self._indexed = indexed
        self.dirty = not indexed or backend.hnsw is None

    @property
    def kind(self) -> str:
        return self._backend.kind

    @property
    def factory(self) -> str:
        hnsw = self._backend.hnsw
        if hnsw is None:
            return "pgvector exact scan"
        state = "" if self._indexed else " (building: exact until saved)"
        return f"pgvector hnsw(m={hnsw['m']}, ef_construction={hnsw['ef_construction']}){state}"

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = self.checked(vectors, ids)
        if not len(ids):
            return
        query = sql.SQL("COPY {} (id, embedding) FROM STDIN WITH (FORMAT BINARY)").format(
            sql.Identifier(self.table))
        with self.changing(), self._backend.connection() as conn, conn.transaction():
            for start in range(0, len(ids), _COPY_CHUNK):
                with conn.cursor() as cur, cur.copy(query) as copy:
                    copy.set_types(["bigint", "vector"])
                    for item_id, row in zip(ids[start:start + _COPY_CHUNK].tolist(),
                                            vectors[start:start + _COPY_CHUNK], strict=True):
                        copy.write_row((item_id, row))
        self._ids.add(ids)

    def remove(self, ids: np.ndarray) -> None:
        present = self._ids.present(ids)
        if not len(present):
            return
        with self.changing(), self._backend.connection() as conn:
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(self.table)),
                         (present.tolist(),))
        self._ids.remove(present)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        if not len(ids):
            return np.zeros((0, self._dim), dtype=np.float32)
        wanted = np.asarray(ids, dtype=np.int64)
        with self._backend.connection() as conn, conn.cursor(binary=True) as cur:
            rows = cur.execute(sql.SQL("SELECT id, embedding FROM {} WHERE id = ANY(%s)").format(
                sql.Identifier(self.table)), (np.unique(wanted).tolist(),)).fetchall()
        found = {int(item_id): vector.to_numpy() for item_id, vector in rows}
        return np.ascontiguousarray(np.stack([found[int(i)] for i in wanted.tolist()]), dtype=np.float32)

    def can_filter(self, where: ItemFilter) -> bool:
        """Always: every filter is a WHERE over the items table."""
        return True

    def sync_attributes(self, ids: np.ndarray | None = None) -> int:
        """Nothing: the table holds no copy of labels or metadata (searches join the items table)."""
        return 0

    def _rows_of(self, allowed: np.ndarray | ItemFilter | None) -> tuple[sql.Composable, list[Any]]:
        """The FROM / WHERE part of a search (v: this table) and its parameters."""
        table = sql.Identifier(self.table)
        if allowed is None:
            return sql.SQL("FROM {} v").format(table), []
        if isinstance(allowed, ItemFilter):
            where, params = filter_sql(allowed.label, allowed.metadata)
            return sql.SQL("FROM {} v JOIN items i ON i.id = v.id WHERE " + where).format(table), params
        return sql.SQL("FROM {} v WHERE v.id = ANY(%s)").format(table), [allowed.tolist()]

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | ItemFilter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product among every row, the `allowed` ids, or the items an `ItemFilter` keeps."""
        queries = self.checked(queries)
        filtered = isinstance(allowed, ItemFilter)
        candidates, available = (None, len(self._ids)) if filtered else self.candidates(allowed)
        k = min(k, available)
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        rows_of, params = self._rows_of(allowed if filtered else candidates)
        select = "SELECT v.id, v.embedding <#> %s {} ORDER BY "
        approximate = sql.SQL(select + "v.embedding <#> %s LIMIT %s").format(rows_of)
        exact = sql.SQL(select + "(v.embedding <#> %s) + 0 LIMIT %s").format(rows_of)  # no index: a scan
        results: list[list[tuple[int, float]]] = []
        with self._backend.connection() as conn, conn.transaction(), conn.cursor(binary=True) as cur:
            if self._backend.hnsw is not None:
                ef = max(self._backend.ef_search, k)
                cur.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(min(ef, 1000))))
            for query in queries:
                arguments = [query, *params, query, k]
                rows = cur.execute(approximate, arguments).fetchall()
                if len(rows) < k and (filtered or available <= EXACT_FALLBACK_LIMIT):
                    rows = cur.execute(exact, arguments).fetchall()
                results.append([(int(item_id), -float(distance)) for item_id, distance in rows])
        if filtered:  # as many columns as items match, when fewer than k do
            k = max(len(row) for row in results)
        return pad_hits(results, k)

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        """Create the HNSW index if this table has none yet, then point `path` at the table."""
        hnsw = self._backend.hnsw
        if hnsw is not None and not self._indexed:
            self._backend.create_hnsw(self.table, hnsw)
            self._indexed = True
        write_pointer(path, self.table, {**meta, "kind": self.kind, "dim": self._dim})
        self.dirty = False

    def release(self) -> None:
        """Drop the table (it no longer serves)."""
        self._backend.drop_table(self.table)


@dataclass(eq=False)
class PgvectorBackend:
    """Makes and loads `PgvectorIndex`es of one kind in one database (the `VectorBackend` of pgvector)."""

    pool: ConnectionPool
    url: str
    kind: str
    hnsw: dict[str, int] | None
    ef_search: int
    prefix: str = NAME_PREFIX
    engine = "pgvector"

    @classmethod
    def open(cls, settings: PostgresSettings, kind: str, directory: Path,
             ef_search: int | None = None, prefix: str = NAME_PREFIX) -> PgvectorBackend:
        """Check the kind, create the `vector` extension if needed, connect, and drop the tables named with
        `prefix` that no pointer under `directory` names (left by a crash mid-build)."""
        name, hnsw = choose_kind(kind, KINDS, "pgvector")
        try:
            with psycopg.connect(settings.url, autocommit=True,
                                 connect_timeout=max(1, round(settings.connect_timeout_s))) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot connect to {redact(settings.url)}: "
                                      f"{scrub(str(exc), settings.url)}") from None
        backend = cls(open_pool(settings, configure=register_vector), settings.url, name, hnsw,
                      ef_search or DEFAULT_EF_SEARCH, prefix)
        backend.drop_owned(named_by_pointers(directory), "no index pointer names it (left by an interrupted "
                                                         "build)")
        return backend

    def connection(self) -> contextlib.AbstractContextManager[psycopg.Connection]:
        """A pooled connection; an unreachable server becomes DatabaseUnavailable."""
        return pooled(self.pool, self.url)

    def check(self) -> None:
        """One round trip to the database: DatabaseUnavailable if it does not answer."""
        with self.connection() as conn:
            conn.execute("SELECT 1")

    def drop_owned(self, keep: set[str], reason: str) -> list[str]:
        """Drop the tables named with this backend's prefix, except `keep`; returns their names."""
        with self.connection() as conn:
            tables = [row[0] for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE %s",
                (self.prefix.replace("_", r"\_") + "%",))]
        dropped = [table for table in tables if owned(table, self.prefix) and table not in keep]
        for table in dropped:
            LOG.info("dropping %s: %s", table, reason)
            self.drop_table(table)
        return dropped

    def drop_table(self, table: str) -> None:
        with self.connection() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))

    def create_hnsw(self, table: str, hnsw: dict[str, int]) -> None:
        with self.connection() as conn, conn.transaction():
            conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(BUILD_MEMORY)))
            conn.execute(sql.SQL("SET LOCAL statement_timeout = 0"))
            conn.execute(sql.SQL("CREATE INDEX ON {} USING hnsw (embedding vector_ip_ops) "
                                 "WITH (m = {}, ef_construction = {})").format(
                sql.Identifier(table), sql.Literal(hnsw["m"]), sql.Literal(hnsw["ef_construction"])))

    def training_points(self, dim: int, n: int) -> int:
        return 0

    def create(self, dim: int, n: int, training: np.ndarray | None) -> PgvectorIndex:
        if self.hnsw is not None and dim > MAX_HNSW_DIM:
            raise DimensionMismatch(f"pgvector's HNSW indexes at most {MAX_HNSW_DIM} dimensions, got {dim} "
                                    "(use CGD_INDEX_KIND=Flat, or whitening to fewer dimensions)")
        table = new_name(self.prefix)
        with self.connection() as conn:
            conn.execute(sql.SQL("CREATE TABLE {} (id BIGINT PRIMARY KEY, embedding vector({}) NOT NULL)")
                         .format(sql.Identifier(table), sql.Literal(dim)))
        return PgvectorIndex(self, table, dim, SortedIds.of([]), indexed=False)

    def load(self, path: Path) -> tuple[PgvectorIndex, dict[str, Any]]:
        table, meta = read_pointer(path)
        if meta.get("kind") != self.kind:
            raise SnapshotCorrupt(f"{path} names a {meta.get('kind')!r} index, not {self.kind!r}")
        with self.connection() as conn:
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
                raise SnapshotCorrupt(f"{path} names table {table}, which does not exist")
            ids = [row[0] for row in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(
                sql.Identifier(table)))]
            indexed = conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s AND indexdef LIKE "
                                   "'%%USING hnsw%%'", (table,)).fetchone()[0] > 0
        return PgvectorIndex(self, table, int(meta["dim"]), SortedIds.of(ids), indexed=indexed), meta

    def close(self) -> None:
        self.pool.close()

