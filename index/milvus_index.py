"""`MilvusIndex`: one version's searchable vectors in a Milvus collection (a server, or Milvus Lite).

`CGD_MILVUS_URI` is a server URI (http://host:19530) or a local file path ending in .db (Milvus Lite,
one process per file). A collection `cgd_vectors_<hex>` per build: an INT64 primary key `id` (the item
id), a FLOAT_VECTOR `vector`, and a copy of each item's label (VARCHAR `label`) and filterable metadata
(JSON `meta`, with a BOOL `partial`; `index.milvus_expressions`); inner-product metric, Strong
consistency (an acknowledged insert or delete is seen by the next search). Kinds (`CGD_INDEX_KIND`):

| kind     | Milvus index type | build parameters        | search parameters        |
| -------- | ----------------- | ----------------------- | ------------------------ |
| Flat     | FLAT (exact)      |                         |                          |
| HNSW     | HNSW              | M 16, efConstruction 200 | ef = max(ef_search, k)  |
| IVF-Flat | IVF_FLAT          | nlist 1024              | nprobe = nprobe or 32    |
| IVF-SQ8  | IVF_SQ8           | nlist 1024              | nprobe = nprobe or 32    |

Filters: a label / metadata filter becomes a Milvus expression over `label` and `meta`. The copy
follows the store: an add inserts each item's label and metadata (read from the store by the backend's
`items`), an update upserts the row, and when an index starts serving (loaded or built) or a replica
catches up, every row's copy is compared with the store and the differing ones are rewritten (an
update made through another replica, or while the version was not loaded, or lost to a crash). On
Milvus Lite a metadata filter goes as an id list (`json_filters`: Lite evaluates a JSON path row by row
in Python; docs/BENCHMARKS.md, "Filtered search on Milvus"). A filter with no exact expression, or any
filter while the copy may be wrong (a change that failed half-way, a `partial` row, a collection made
before the copy existed), goes as the matching ids from the store, `id in [...]` of int64 literals,
with the reason logged. A search among at most `EXACT_FILTER_LIMIT` (4,096) allowed ids scores their
vectors exactly instead of walking the graph, as vector databases do for selective filters: the walk
under a filter keeping 1 % returned wrong hits on Milvus Lite (recall@10 0.72 at 100k x 1536,
docs/BENCHMARKS.md); the gallery passes the matching ids when a filter keeps that few
(`exact_filter_limit`). A filtered or approximate search that returns
fewer than min(k, candidates) hits is answered again exactly over the candidates' stored vectors.
Rows stay in a growing segment, which Milvus searches by brute force (1.5 s per query at 10k x 1536 in
Milvus Lite), until a flush seals them: `save` flushes, and so does an add once `FLUSH_ROWS` rows are
unflushed. A sealed segment is searched without its new index until that index is built, so `save`
waits, on Milvus Lite, for its background worker (which merges the flushed segments and builds the
merged segment's index: 26 s at 50k x 1536 HNSW), as pgvector's `save` builds its graph, and then
reloads the collection. Loading also waits for that worker first: a load that reads an index file the
worker is still writing fails.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import EngineUnavailable, SnapshotCorrupt
from index.filters import ItemFilter
from index.kinds import DEFAULT_EF_SEARCH
from index.milvus_expressions import LABEL_BYTES, Attributes, UnsupportedFilter, expression, held_attributes
from index.records import Item
from index.remote_index import (
    NAME_PREFIX,
    ServerIndex,
    SortedIds,
    choose_kind,
    exact_top_k,
    named_by_pointers,
    new_name,
    owned,
    pad_hits,
    read_pointer,
    write_pointer,
)

LOG = logging.getLogger(__name__)

KINDS: dict[str, tuple[str, dict[str, int]]] = {  # canonical name -> (Milvus index type, build parameters)
    "Flat": ("FLAT", {}),
    "HNSW": ("HNSW", {"M": 16, "efConstruction": 200}),
    "IVF-Flat": ("IVF_FLAT", {"nlist": 1024}),
    "IVF-SQ8": ("IVF_SQ8", {"nlist": 1024}),
}
DEFAULT_NPROBE = 32
MAX_TOP_K = 16384  # Milvus answers at most this many hits per query
COLLECTION_NOT_LOADED = 101  # Milvus's error code for a search or query on a collection not loaded
EXACT_FILTER_LIMIT = 4096  # up to this many allowed ids are scored exactly (the module docstring)
EXACT_FALLBACK_LIMIT = 1 << 16
_BATCH = 2000
FLUSH_ROWS = 10_000  # rows inserted since the last flush after which an add seals them (see the docstring)
_ID_FILTER_CHUNK = 16384
_QUERY_BATCH = 10_000
ATTRIBUTE_FIELDS = ("label", "meta", "partial")

ItemSource = Callable[[Iterable[int]], Mapping[int, Item]]  # ids -> the store's items (ItemStore.get_many)
ChangeSource = Callable[[int | None], tuple[int, np.ndarray]]  # ItemStore.attribute_changes


class MilvusUnavailable(EngineUnavailable):
    """The Milvus server (or Milvus Lite file) cannot be reached."""


def id_filter(ids: np.ndarray) -> str:
    """A Milvus boolean expression keeping the given int64 ids."""
    return f"id in [{','.join(str(int(i)) for i in np.asarray(ids, dtype=np.int64).tolist())}]"


class MilvusIndex(ServerIndex):
    """A Milvus collection holding one version's vectors, with a copy of its items' labels and metadata
    (`holds_attributes` False: a collection made before that copy existed, filtered by id lists only)."""

    exact_filter_limit = EXACT_FILTER_LIMIT

    def __init__(self, backend: MilvusBackend, collection: str, dim: int, ids: SortedIds, *,
                 holds_attributes: bool = True, partial: SortedIds | None = None,
                 checked: int | None = None) -> None:
        super().__init__(dim, ids)
        self._backend = backend
        self.collection = collection
        self.holds_attributes = holds_attributes
        self._partial = partial or SortedIds.of([])  # rows whose label or metadata are not held in full
        self._checked = checked  # the store's latest change the copy is in step with (None: unknown)
        self._unflushed = 0  # rows inserted since the last flush (still in a growing segment)
        self._reported: set[str] = set()  # reasons for id-list filters logged already

    @property
    def kind(self) -> str:
        return self._backend.kind

    @property
    def factory(self) -> str:
        index_type, params = KINDS[self._backend.kind]
        shown = ", ".join(f"{key}={value}" for key, value in params.items())
        return f"milvus {index_type}({shown})" if shown else f"milvus {index_type}"

    def _rows(self, ids: np.ndarray, vectors: np.ndarray) -> list[dict[str, Any]]:
        """Rows to insert: each id's vector and, if this collection holds them, its attributes."""
        if not self.holds_attributes:
            return [{"id": i, "vector": v} for i, v in zip(ids.tolist(), vectors, strict=True)]
        items = self._backend.items(ids.tolist())
        rows = []
        for item_id, vector in zip(ids.tolist(), vectors, strict=True):
            label, meta, partial = held_attributes(items.get(item_id))
            rows.append({"id": item_id, "vector": vector, "label": label, "meta": meta, "partial": partial})
        partial_ids = [row["id"] for row in rows if row.get("partial")]
        self._partial.remove(ids)
        self._partial.add(np.asarray(partial_ids, dtype=np.int64))
        return rows

    def _write(self, method: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or upsert rows in batches; flush once enough are unflushed."""
        with self.changing():
            for start in range(0, len(ids), _BATCH):
                self._backend.call(method, self.collection,
                                   self._rows(ids[start:start + _BATCH], vectors[start:start + _BATCH]))
            self._unflushed += len(ids)
            if self._unflushed >= FLUSH_ROWS:
                self._flush()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = self.checked(vectors, ids)
        self._write("insert", np.asarray(ids, dtype=np.int64), vectors)
        self._ids.add(ids)

    def _flush(self) -> None:
        """Seal the growing segment, so that Milvus builds the configured index over its rows."""
        self._backend.call("flush", self.collection)
        self._unflushed = 0

    def remove(self, ids: np.ndarray) -> None:
        present = self._ids.present(ids)
        with self.changing():
            for start in range(0, len(present), _ID_FILTER_CHUNK):
                chunk = present[start:start + _ID_FILTER_CHUNK]
                self._backend.call("delete", self.collection, ids=chunk.tolist())
        self._ids.remove(present)
        self._partial.remove(present)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        wanted = np.asarray(ids, dtype=np.int64)
        if not len(wanted):
            return np.zeros((0, self._dim), dtype=np.float32)
        found: dict[int, np.ndarray] = {}
        unique = np.unique(wanted)
        for start in range(0, len(unique), _ID_FILTER_CHUNK):
            for row in self._backend.call("get", self.collection, ids=unique[start:start + _ID_FILTER_CHUNK]
                                          .tolist(), output_fields=["vector"]):
                found[int(row["id"])] = np.asarray(row["vector"], dtype=np.float32)
        return np.ascontiguousarray(np.stack([found[int(i)] for i in wanted.tolist()]))

    def maintenance(self) -> str | None:
        """"resync" after a change the server did not complete; "compact" for a collection made before
        Milvus held labels and metadata (rebuilt with them in the background, serving meanwhile)."""
        return super().maintenance() or (None if self.holds_attributes else "compact")

    # filters

    def _expression(self, where: ItemFilter) -> str:
        """The filter's expression over this collection's copy; UnsupportedFilter when the copy or the
        expression language cannot answer it exactly."""
        if not self.holds_attributes:
            raise UnsupportedFilter(f"collection {self.collection} was made before Milvus held labels and "
                                    "metadata; a compaction rebuilds it with them")
        if self._out_of_step:
            raise UnsupportedFilter("a change did not complete on Milvus; it is rebuilt from the store")
        if where.metadata is not None and not self._backend.json_filters:
            raise UnsupportedFilter("Milvus Lite evaluates a JSON path row by row in Python (docs/BENCHMARKS"
                                    ".md, 'Filtered search on Milvus'): metadata filters go as id lists; "
                                    "label filters and a Milvus server's metadata filters are expressions")
        if len(self._partial):
            raise UnsupportedFilter(f"{len(self._partial)} items' labels or metadata are too large to hold "
                                    f"in Milvus (labels up to {LABEL_BYTES} bytes)")
        return expression(where)

    def can_filter(self, where: ItemFilter) -> bool:
        """True if `search(..., where)` filters in Milvus; False (the reason logged once): pass the ids."""
        try:
            self._expression(where)
        except UnsupportedFilter as exc:
            if str(exc) not in self._reported:
                self._reported.add(str(exc))
                LOG.info("filters on %s go to Milvus as id lists: %s", self.collection, exc)
            return False
        return True

    def sync_attributes(self, ids: np.ndarray | None = None) -> int:
        """Rewrite the label and metadata held for `ids` (after an update), or (None) for every row whose
        copy differs from the store's; returns how many rows were rewritten. None compares only the items
        changed since the change the copy was last checked at (the store numbers them), and every row
        only when that is unknown (a collection made before the numbering, or no change source)."""
        if not self.holds_attributes:
            return 0
        checked = self._checked
        if ids is None:
            checked, rows = self._rows_to_check()
            present = np.asarray([item_id for batch in rows for item_id in self._differing(batch)],
                                 dtype=np.int64)
        else:
            present = self._ids.present(ids)
        for start in range(0, len(present), _BATCH):
            chunk = present[start:start + _BATCH]
            self._write("upsert", chunk, self.reconstruct(chunk))
        if checked != self._checked:  # recorded in the pointer by the next save
            self._checked, self.dirty = checked, True
        return len(present)

    def _rows_to_check(self) -> tuple[int | None, Iterable[list[dict[str, Any]]]]:
        """(the store's latest change, read first; the held rows of the items changed since the last
        check, or of every item when that is unknown), the rows in batches."""
        changes = self._backend.changes
        if changes is None or self._checked is None:
            latest = None if changes is None else changes(None)[0]
            return latest, self._backend.query(self.collection, "", ["id", *ATTRIBUTE_FIELDS])
        latest, changed = changes(self._checked)
        present = self._ids.present(changed)
        return latest, (self._backend.call("get", self.collection, ids=present[start:start + _ID_FILTER_CHUNK]
                                           .tolist(), output_fields=["id", *ATTRIBUTE_FIELDS])
                        for start in range(0, len(present), _ID_FILTER_CHUNK))

    def _differing(self, rows: list[dict[str, Any]]) -> list[int]:
        """Ids of `rows` whose held label / metadata differ from what the store has now."""
        items = self._backend.items(int(row["id"]) for row in rows)
        differing = []
        for row in rows:
            held: Attributes = (row.get("label"), row.get("meta") or {}, bool(row.get("partial")))
            if held != held_attributes(items.get(int(row["id"]))):
                differing.append(int(row["id"]))
        return differing

    # search

    def _search_params(self, k: int) -> dict[str, Any]:
        index_type, _ = KINDS[self._backend.kind]
        if index_type == "HNSW":
            return {"metric_type": "IP", "params": {"ef": max(self._backend.ef_search, k)}}
        if index_type.startswith("IVF"):
            return {"metric_type": "IP", "params": {"nprobe": self._backend.nprobe}}
        return {"metric_type": "IP", "params": {}}

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | ItemFilter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product among every row, the `allowed` ids, or the rows an `ItemFilter` keeps
        (only after `can_filter` said yes)."""
        queries = self.checked(queries)
        if isinstance(allowed, ItemFilter):
            condition = self._expression(allowed)
            candidates, available = None, len(self._ids)
        else:
            candidates, available = self.candidates(allowed)
            condition = "" if candidates is None else id_filter(candidates)
        k = min(k, available, MAX_TOP_K)
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if candidates is not None and available <= self.exact_filter_limit and self.kind != "Flat":
            return exact_top_k(queries, k, candidates, self.reconstruct(candidates))  # no graph walk
        answers = self._backend.call("search", self.collection, data=list(queries), limit=k,
                                     filter=condition, search_params=self._search_params(k),
                                     anns_field="vector", output_fields=["id"])
        rows = [[(int(hit["id"]), float(hit["distance"])) for hit in answer] for answer in answers]
        scores, ids = pad_hits(rows, k)
        short = (ids >= 0).sum(axis=1) < k
        if short.any():
            pool_vectors = None
            if isinstance(allowed, ItemFilter):  # how many match: fewer than k, or a graph walk fell short
                candidates, pool_vectors = self._matching(condition)
                available = len(candidates)
            pool = self._ids.array if candidates is None else candidates
            if len(pool) <= EXACT_FALLBACK_LIMIT:
                if pool_vectors is None:
                    pool_vectors = self.reconstruct(pool)
                exact_scores, exact_ids = exact_top_k(queries[short], k, pool, pool_vectors)
                width = exact_ids.shape[1]
                scores[short, :width], ids[short, :width] = exact_scores, exact_ids
            k = min(k, available)
        return scores[:, :k], ids[:, :k]

    def _matching(self, condition: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(sorted ids (N,) the expression keeps, their vectors (N, dim) when one query returned them all,
        else None)."""
        rows = self._backend.call("query", self.collection, filter=condition, output_fields=["id", "vector"],
                                  limit=MAX_TOP_K)
        if len(rows) < MAX_TOP_K:
            rows = sorted(rows, key=lambda row: int(row["id"]))
            vectors = np.asarray([row["vector"] for row in rows], dtype=np.float32).reshape(-1, self._dim)
            return np.asarray([int(row["id"]) for row in rows], dtype=np.int64), vectors
        ids = np.fromiter((row["id"] for rows in self._backend.query(self.collection, condition, ["id"])
                           for row in rows), dtype=np.int64)
        return np.sort(ids), None

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        """Seal what is still growing (its index gets built) and reload the collection so that searches
        use that index, then point `path` at this collection."""
        if self._unflushed:
            self._flush()
            self._backend.settle(self.collection)  # before the reload reads the index files it writes
            self._backend.reload(self.collection)
        write_pointer(path, self.collection, {**meta, "kind": self.kind, "dim": self._dim,
                                              "attributes_checked": self._checked})
        self.dirty = False

    def release(self) -> None:
        """Drop the collection (it no longer serves)."""
        self._backend.call("drop_collection", self.collection)


@dataclass(eq=False)
class MilvusBackend:
    """Makes and loads `MilvusIndex`es of one kind on one Milvus (the `VectorBackend` of Milvus)."""

    client: Any  # pymilvus.MilvusClient
    uri: str
    items: ItemSource
    kind: str
    ef_search: int
    nprobe: int
    prefix: str = NAME_PREFIX
    json_filters: bool = True  # metadata filters as expressions (open: not on Milvus Lite)
    changes: ChangeSource | None = None  # the store's numbered label / metadata changes (None: full checks)
    engine = "milvus"

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # Milvus Lite's client is not safe for concurrent calls

    @classmethod
    def open(cls, uri: str, kind: str, directory: Path, items: ItemSource, *, ef_search: int | None = None,
             nprobe: int | None = None, timeout_s: float = 10.0, prefix: str = NAME_PREFIX,
             changes: ChangeSource | None = None) -> MilvusBackend:
        """Check the kind, connect (a local path opens Milvus Lite) and drop the collections named with
        `prefix` that no pointer under `directory` names (left by a crash mid-build). `items` reads the
        store's items (`ItemStore.get_many`), whose labels and metadata the collections copy; `changes`
        (`ItemStore.attribute_changes`) tells which of them changed since a collection's copy was checked."""
        name, _ = choose_kind(kind, KINDS, "milvus")
        from pymilvus import MilvusClient  # imported here: it takes 2 s and only this backend needs it

        try:
            client = MilvusClient(uri=uri, timeout=timeout_s)
        except Exception as exc:  # pymilvus raises MilvusException or grpc errors
            raise MilvusUnavailable(f"cannot connect to Milvus at {uri}: {exc}") from None
        backend = cls(client, uri, items, name, ef_search or DEFAULT_EF_SEARCH, nprobe or DEFAULT_NPROBE,
                      prefix, json_filters=not uri.endswith(".db"), changes=changes)
        backend.drop_owned(named_by_pointers(directory), "no index pointer names it (left by an interrupted "
                                                         "build)")
        return backend

    def drop_owned(self, keep: set[str], reason: str) -> list[str]:
        """Drop the collections named with this backend's prefix, except `keep`; returns their names."""
        dropped = [collection for collection in self.call("list_collections")
                   if owned(collection, self.prefix) and collection not in keep]
        for collection in dropped:
            LOG.info("dropping collection %s: %s", collection, reason)
            self.call("drop_collection", collection)
        return dropped

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`client.<method>(...)`, one at a time; a failure becomes MilvusUnavailable. A call on a collection
        that the server holds but has not loaded (a server restarted since: Milvus Lite's server does not
        load collections again) loads it and is made once more."""
        from pymilvus import MilvusException

        with self._lock:
            try:
                try:
                    return getattr(self.client, method)(*args, **kwargs)
                except MilvusException as exc:
                    if exc.code != COLLECTION_NOT_LOADED or not args:
                        raise
                    LOG.warning("collection %s is not loaded on Milvus at %s (a restarted server?): loading "
                                "it", args[0], self.uri)
                    self.client.load_collection(args[0])
                    return getattr(self.client, method)(*args, **kwargs)
            except MilvusException as exc:
                raise MilvusUnavailable(f"Milvus at {self.uri}: {exc}") from None

    def check(self) -> None:
        """One round trip to Milvus: MilvusUnavailable if it does not answer."""
        self.call("list_collections")

    def training_points(self, dim: int, n: int) -> int:
        return 0

    def create(self, dim: int, n: int, training: np.ndarray | None) -> MilvusIndex:
        from pymilvus import DataType

        collection = new_name(self.prefix)
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("label", DataType.VARCHAR, max_length=LABEL_BYTES, nullable=True)
        schema.add_field("meta", DataType.JSON)
        schema.add_field("partial", DataType.BOOL)
        index_type, params = KINDS[self.kind]
        index_params = self.client.prepare_index_params()
        index_params.add_index("vector", index_type=index_type, metric_type="IP", params=params)
        self.call("create_collection", collection, schema=schema, index_params=index_params,
                  consistency_level="Strong")
        checked = None if self.changes is None else self.changes(None)[0]  # rows added copy what is newer
        return MilvusIndex(self, collection, dim, SortedIds.of([]), checked=checked)

    def load(self, path: Path) -> tuple[MilvusIndex, dict[str, Any]]:
        collection, meta = read_pointer(path)
        if meta.get("kind") != self.kind:
            raise SnapshotCorrupt(f"{path} names a {meta.get('kind')!r} index, not {self.kind!r}")
        if not self.call("has_collection", collection):
            raise SnapshotCorrupt(f"{path} names collection {collection}, which does not exist")
        self.settle(collection)  # Milvus Lite's worker may be writing index files the load would read
        self.call("load_collection", collection)  # a reopened collection must be loaded before a search
        fields = {field["name"] for field in self.call("describe_collection", collection)["fields"]}
        holds_attributes = set(ATTRIBUTE_FIELDS) <= fields
        if not holds_attributes:
            LOG.warning("collection %s was made before Milvus held labels and metadata: its filters go as "
                        "id lists until it is made anew with them, by a compaction (the next add or delete "
                        "starts one) or any rebuild", collection)
        ids = [row["id"] for rows in self.query(collection, "", ["id"]) for row in rows]
        partial = ([row["id"] for rows in self.query(collection, "partial == true", ["id"]) for row in rows]
                   if holds_attributes else [])
        index = MilvusIndex(self, collection, int(meta["dim"]), SortedIds.of(ids),
                            holds_attributes=holds_attributes, partial=SortedIds.of(partial),
                            checked=meta.get("attributes_checked"))
        index.dirty = False
        return index, meta

    def query(self, collection: str, condition: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        """The rows `condition` keeps ("": all), `fields` of them, in batches."""
        iterator = self.call("query_iterator", collection, batch_size=_QUERY_BATCH, filter=condition,
                             output_fields=fields)
        try:
            while batch := self.call_on(iterator, "next"):
                yield batch
        finally:
            self.call_on(iterator, "close")

    def reload(self, collection: str) -> None:
        """Release and load `collection` in one step (no search in between): Milvus Lite searches a
        segment sealed by a flush without its new index until the collection is loaded again."""
        from pymilvus import MilvusException

        with self._lock:
            try:
                self.client.release_collection(collection)
                self.client.load_collection(collection)
            except MilvusException as exc:
                raise MilvusUnavailable(f"Milvus at {self.uri}: {exc}") from None

    def settle(self, collection: str) -> None:
        """Milvus Lite: wait until its background worker has merged the flushed segments and built their
        indexes. Until then it searches a merged segment by brute force while the build takes the CPU
        (170 ms against 25 ms a query at 50k x 1536, benchmarks/milvus_lite_probe.py), and a load reading
        an index file the worker is still writing fails ("file seems not fully written"). Milvus Lite 3 has
        no public call for this (its describe_index reports every row indexed), so this uses its
        internals, and does nothing if they are not there; nothing on a Milvus server."""
        if not self.uri.endswith(".db"):
            return
        from milvus_lite.server_manager import server_manager_instance

        try:
            _, database, _ = server_manager_instance._servers[os.path.abspath(self.uri)]
            wait = database.get_collection(collection)._wait_for_bg
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            LOG.debug("cannot wait for Milvus Lite's index build of %s: %r", collection, exc)
            return
        wait()

    def call_on(self, target: Any, method: str) -> Any:
        from pymilvus import MilvusException

        with self._lock:
            try:
                return getattr(target, method)()
            except MilvusException as exc:
                raise MilvusUnavailable(f"Milvus at {self.uri}: {exc}") from None

    def close(self) -> None:
        """Close the client; for Milvus Lite also stop its in-process server, which releases the file's
        lock (the client alone keeps it until the process exits)."""
        with self._lock:
            self.client.close()
            if self.uri.endswith(".db"):
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self.uri)
