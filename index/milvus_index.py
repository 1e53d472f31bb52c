"""`MilvusIndex`: one version's searchable vectors in a Milvus collection (a server, or Milvus Lite).

`CGD_MILVUS_URI` is a server URI (http://host:19530) or a local file path ending in .db (Milvus Lite,
one process per file). A collection `cgd_vectors_<hex>` per build: an INT64 primary key `id` (the item
id) and a FLOAT_VECTOR `vector`, inner-product metric, Strong consistency (an acknowledged insert or
delete is seen by the next search). Kinds (`CGD_INDEX_KIND`):

| kind     | Milvus index type | build parameters        | search parameters        |
| -------- | ----------------- | ----------------------- | ------------------------ |
| Flat     | FLAT (exact)      |                         |                          |
| HNSW     | HNSW              | M 16, efConstruction 200 | ef = max(ef_search, k)  |
| IVF-Flat | IVF_FLAT          | nlist 1024              | nprobe = nprobe or 32    |
| IVF-SQ8  | IVF_SQ8           | nlist 1024              | nprobe = nprobe or 32    |

Filters are the allowed ids as an expression `id in [...]` of int64 literals (the only values put in an
expression, formatted from integers: nothing to escape); a filtered or approximate search that returns
fewer than min(k, candidates) hits is answered again exactly over the candidates' stored vectors.
Rows stay in a growing segment, which Milvus searches by brute force (1.5 s per query at 10k x 1536 in
Milvus Lite), until a flush seals them: `save` flushes, and so does an add once `FLUSH_ROWS` rows are
unflushed. A sealed segment is searched without its new index until that index is built, so `save`
reloads the collection and, on Milvus Lite, waits for its background worker (which merges the
flushed segments and builds the merged segment's index: 26 s at 50k x 1536 HNSW), as pgvector's
`save` builds its graph.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import EngineUnavailable, SnapshotCorrupt
from index.kinds import DEFAULT_EF_SEARCH
from index.remote_index import (
    NAME_PREFIX,
    ServerIndex,
    SortedIds,
    choose_kind,
    named_by_pointers,
    new_name,
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
EXACT_FALLBACK_LIMIT = 1 << 16
_BATCH = 2000
FLUSH_ROWS = 10_000  # rows inserted since the last flush after which an add seals them (see the docstring)
_ID_FILTER_CHUNK = 16384


class MilvusUnavailable(EngineUnavailable):
    """The Milvus server (or Milvus Lite file) cannot be reached."""


def id_filter(ids: np.ndarray) -> str:
    """A Milvus boolean expression keeping the given int64 ids."""
    return f"id in [{','.join(str(int(i)) for i in np.asarray(ids, dtype=np.int64).tolist())}]"


class MilvusIndex(ServerIndex):
    """A Milvus collection holding one version's vectors."""

    def __init__(self, backend: MilvusBackend, collection: str, dim: int, ids: SortedIds) -> None:
        super().__init__(dim, ids)
        self._backend = backend
        self.collection = collection
        self._unflushed = 0  # rows inserted since the last flush (still in a growing segment)

    @property
    def kind(self) -> str:
        return self._backend.kind

    @property
    def factory(self) -> str:
        index_type, params = KINDS[self._backend.kind]
        shown = ", ".join(f"{key}={value}" for key, value in params.items())
        return f"milvus {index_type}({shown})" if shown else f"milvus {index_type}"

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = self.checked(vectors, ids)
        with self.changing():
            for start in range(0, len(ids), _BATCH):
                rows = [{"id": int(i), "vector": v} for i, v in
                        zip(ids[start:start + _BATCH].tolist(), vectors[start:start + _BATCH], strict=True)]
                self._backend.call("insert", self.collection, rows)
            self._unflushed += len(ids)
            if self._unflushed >= FLUSH_ROWS:
                self._flush()
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

    def _search_params(self, k: int) -> dict[str, Any]:
        index_type, _ = KINDS[self._backend.kind]
        if index_type == "HNSW":
            return {"metric_type": "IP", "params": {"ef": max(self._backend.ef_search, k)}}
        if index_type.startswith("IVF"):
            return {"metric_type": "IP", "params": {"nprobe": self._backend.nprobe}}
        return {"metric_type": "IP", "params": {}}

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = self.checked(queries)
        candidates, available = self.candidates(allowed)
        k = min(k, available, MAX_TOP_K)
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        expression = "" if candidates is None else id_filter(candidates)
        answers = self._backend.call("search", self.collection, data=list(queries), limit=k,
                                     filter=expression, search_params=self._search_params(k),
                                     anns_field="vector")
        rows = [[(int(hit["id"]), float(hit["distance"])) for hit in answer] for answer in answers]
        scores, ids = pad_hits(rows, k)
        short = (ids >= 0).sum(axis=1) < k
        if short.any() and available <= EXACT_FALLBACK_LIMIT:
            pool = self._ids.array if candidates is None else candidates
            exact_scores = queries[short] @ self.reconstruct(pool).T
            order = np.argsort(-exact_scores, axis=1, kind="stable")[:, :k]
            scores[short] = np.take_along_axis(exact_scores, order, 1)
            ids[short] = pool[order]
        return scores, ids

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        """Seal what is still growing (its index gets built) and reload the collection so that searches
        use that index, then point `path` at this collection."""
        if self._unflushed:
            self._flush()
            self._backend.reload(self.collection)
            self._backend.settle(self.collection)
        write_pointer(path, self.collection, {**meta, "kind": self.kind, "dim": self._dim})
        self.dirty = False

    def release(self) -> None:
        """Drop the collection (it no longer serves)."""
        self._backend.call("drop_collection", self.collection)


@dataclass(eq=False)
class MilvusBackend:
    """Makes and loads `MilvusIndex`es of one kind on one Milvus (the `VectorBackend` of Milvus)."""

    client: Any  # pymilvus.MilvusClient
    uri: str
    kind: str
    ef_search: int
    nprobe: int
    prefix: str = NAME_PREFIX
    engine = "milvus"

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # Milvus Lite's client is not safe for concurrent calls

    @classmethod
    def open(cls, uri: str, kind: str, directory: Path, *, ef_search: int | None = None,
             nprobe: int | None = None, timeout_s: float = 10.0,
             prefix: str = NAME_PREFIX) -> MilvusBackend:
        """Check the kind, connect (a local path opens Milvus Lite) and drop the collections named with
        `prefix` that no pointer under `directory` names (left by a crash mid-build)."""
        name, _ = choose_kind(kind, KINDS, "milvus")
        from pymilvus import MilvusClient  # imported here: it takes 2 s and only this backend needs it

        try:
            client = MilvusClient(uri=uri, timeout=timeout_s)
        except Exception as exc:  # pymilvus raises MilvusException or grpc errors
            raise MilvusUnavailable(f"cannot connect to Milvus at {uri}: {exc}") from None
        backend = cls(client, uri, name, ef_search or DEFAULT_EF_SEARCH, nprobe or DEFAULT_NPROBE, prefix)
        named = named_by_pointers(directory)
        for collection in backend.call("list_collections"):
            if collection.startswith(prefix) and collection not in named:
                LOG.info("dropping collection %s: no index pointer names it (left by an interrupted build)",
                         collection)
                backend.call("drop_collection", collection)
        return backend

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`client.<method>(...)`, one at a time; a failure becomes MilvusUnavailable."""
        from pymilvus import MilvusException

        with self._lock:
            try:
                return getattr(self.client, method)(*args, **kwargs)
            except MilvusException as exc:
                raise MilvusUnavailable(f"Milvus at {self.uri}: {exc}") from None

    def training_points(self, dim: int, n: int) -> int:
        return 0

    def create(self, dim: int, n: int, training: np.ndarray | None) -> MilvusIndex:
        from pymilvus import DataType

        collection = new_name(self.prefix)
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index_type, params = KINDS[self.kind]
        index_params = self.client.prepare_index_params()
        index_params.add_index("vector", index_type=index_type, metric_type="IP", params=params)
        self.call("create_collection", collection, schema=schema, index_params=index_params,
                  consistency_level="Strong")
        return MilvusIndex(self, collection, dim, SortedIds.of([]))

    def load(self, path: Path) -> tuple[MilvusIndex, dict[str, Any]]:
        collection, meta = read_pointer(path)
        if meta.get("kind") != self.kind:
            raise SnapshotCorrupt(f"{path} names a {meta.get('kind')!r} index, not {self.kind!r}")
        if not self.call("has_collection", collection):
            raise SnapshotCorrupt(f"{path} names collection {collection}, which does not exist")
        self.call("load_collection", collection)  # a reopened collection must be loaded before a search
        ids: list[int] = []
        iterator = self.call("query_iterator", collection, batch_size=10000, filter="", output_fields=["id"])
        try:
            while batch := self.call_on(iterator, "next"):
                ids.extend(int(row["id"]) for row in batch)
        finally:
            self.call_on(iterator, "close")
        index = MilvusIndex(self, collection, int(meta["dim"]), SortedIds.of(ids))
        index.dirty = False
        return index, meta

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
        (170 ms against 25 ms a query at 50k x 1536, benchmarks/milvus_lite_probe.py). Milvus Lite 3 has
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
