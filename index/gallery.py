"""`Gallery`: the thread-safe facade the service uses over an `ItemStore` and one index per model version.

Layout under `root`: `items.sqlite3` (items, vectors, versions), `blobs/ab/cdef...` (images),
`faiss/<version>.index` (snapshots: a cache rebuilt from the store when needed), `.lock` (one process).
Replicas (several processes on one PostgreSQL store, `replica=` names each) share `root` and `blobs/`;
each keeps its own `.lock` and `faiss/` under `replicas/<name>/` and catches up with the others' writes
through `sync` (the store is the truth; every index is a cache of it).

Concurrency: the `IndexRegistry` holds the locks. One writer at a time (`writer()`); readers share the
state lock (`reading()`); a writer holds it exclusively (`writing()`) only while it commits to the store
and applies the same change to the indexes, so a search never sees half a batch, nor an item in one and
not the other. Image files are written before that, under the writer lock alone. Lock order: writer,
then state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.engines import Engines, InvalidEngines, open_server_backend, open_store
from index.errors import (
    InvalidItem,
    InvalidQuery,
    ItemNotFound,
    MissingVectors,
    UnknownVersion,
    VectorNotFound,
    VersionInUse,
)
from index.faiss_index import configure_faiss, resolve_gpu
from index.filters import ItemFilter, MetadataFilter
from index.kinds import IndexSpec
from index.locking import ProcessLock
from index.postprocess import WHITENING_KINDS, fit_learned_whitening, fit_pca_whitening
from index.prefix_index import make_backend
from index.protocols import ItemStore, VectorBackend
from index.records import UNSET, Hit, IndexStats, Item, NewItem, VersionInfo
from index.registry import IndexRegistry
from index.validation import check_search, check_vectors
from index.vectors import quantize
from index.version_index import VersionIndex

LOG = logging.getLogger(__name__)

# faiss.cvar.distance_compute_blas_threshold, compared with queries x dimension: 1 = BLAS for every
# unfiltered exhaustive search. FAISS 1.15.1's default (128,000) takes its own loop below 84 queries at
# d = 1536, which measured 1.4-5.8x slower for 5 to 50 queries, equal for 1, and 1.7x faster for
# exactly 2 (docs/BENCHMARKS.md, "BLAS threshold"): batched searches win.
DEFAULT_BLAS_THRESHOLD = 1
PCA_SAMPLE = 100_000
REPLICA_DIR = "replicas"  # under the gallery's root: one folder per replica


class Gallery:
    """Items, images and per-version vectors, searchable by inner product. Thread-safe."""

    def __init__(self, root: Path, store: ItemStore, backend: VectorBackend, *,
                 process_lock: ProcessLock | None = None, local: Path | None = None) -> None:
        self.root = root
        self._store = store
        self._backend = backend
        self._process_lock = process_lock
        self._registry = IndexRegistry((local or root) / "faiss", store, backend)
        self._writer = self._registry.writer()
        self._generation = store.generation()  # before anything is read: later writes show in `sync`
        self._live = store.live_version()

    @classmethod
    def open(cls, root: Path, *, index_kind: str = "Flat", use_gpu: str = "auto", nprobe: int | None = None,
             ef_search: int | None = None, k_factor: int | None = None,
             blas_threshold: int = DEFAULT_BLAS_THRESHOLD, engines: Engines | None = None,
             replica: str | None = None) -> Gallery:
        """Open (or create) the gallery at `root` and load the live version's index (its snapshot
        reconciled with the store, or a build from the store if the snapshot is missing or unusable).

        `index_kind`: see `index.kinds` (Flat, SQfp16, SQ8, HNSW, HNSW-SQ8, IVF-Flat, IVF-SQ8, IVF-PQ or a
        FAISS factory string); `nprobe`, `ef_search`, `k_factor` override the kind's search settings.
        `engines`: the item store and vector backend (default SQLite + FAISS; see `index.engines`); pgvector
        and Milvus accept their own kinds (`index.pgvector_index`, `index.milvus_index`).
        `replica`: this process's name among several on one PostgreSQL store (None: it has `root` alone);
        its lock and indexes go under `root/replicas/<replica>/`.
        """
        engines = engines or Engines()
        root = Path(root)
        spec = IndexSpec.parse(index_kind, nprobe=nprobe, ef_search=ef_search, k_factor=k_factor)
        gpu = resolve_gpu(use_gpu)
        configure_faiss(blas_threshold)
        if replica is not None and engines.database_url is None:
            raise InvalidEngines("replicas share a gallery through PostgreSQL: set a database URL "
                                 "(CGD_DATABASE_URL)")
        local = root / REPLICA_DIR / replica if replica is not None else root
        local.mkdir(parents=True, exist_ok=True)
        lock = ProcessLock(local / ".lock")
        store = backend = None
        try:
            store = open_store(root, engines)
            backend = (make_backend(spec, gpu, local / "faiss") if engines.vector_backend == "faiss" else
                       open_server_backend(engines, index_kind, local / "faiss", ef_search=ef_search,
                                           nprobe=nprobe, items=store.get_many,
                                           changes=store.attribute_changes, replica=replica))
            gallery = cls(root, store, backend, process_lock=lock, local=local)
            if gallery._live is not None and gallery._live in store.versions():
                gallery._registry.ensure(gallery._live)
        except BaseException:
            if backend is not None:
                backend.close()
            if store is not None:
                store.close()
            lock.release()
            raise
        return gallery

    def close(self) -> None:
        """Write snapshots of the changed indexes, then release the store and the lock. Idempotent."""
        with self._writer:
            if self._registry.closed:
                return
            self._registry.close()  # no reader is inside, and none gets in from now on
            self._backend.close()
            self._store.close()
            if self._process_lock is not None:
                self._process_lock.release()

    @property
    def engines(self) -> tuple[str, str]:
        """(item store, vector search) engines in use, e.g. ("sqlite", "faiss")."""
        return self._store.engine, self._backend.engine

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # items

    def add(self, items: Sequence[NewItem], vectors: Mapping[str, np.ndarray]) -> list[Item]:
        """Store items with their unit vectors (N,d) per model version, all or nothing, and index them.

        Returns the items in input order. An item whose external id exists is returned unchanged and its
        vectors are ignored. When a version is live, `vectors` must include it; with none live yet, the
        first version given becomes live. An item whose `image` is None has no image (`attach_images`
        gives it one later): it is searchable, but cannot be trained on nor embedded by another model.
        """
        items = list(items)
        checked = {version: quantize(check_vectors(array, len(items), unit=True))
                   for version, array in vectors.items()}
        if not items:
            return []
        with self._writer:
            was_live = self._live
            if was_live is not None and was_live not in checked:
                raise MissingVectors(f"add() needs vectors for the live version {was_live!r}")
            stored_images = iter(self._store.put_images([it.image for it in items if it.image is not None]))
            hashes = [next(stored_images) if item.image is not None else None for item in items]
            with self._registry.writing() as indexes:
                try:
                    stored, created = self._store.add(items, hashes, checked)
                except BaseException:  # refused or not written: no image of it stays behind
                    self._store.discard_images(sha256 for sha256 in hashes if sha256 is not None)
                    raise
                rows = np.flatnonzero(created)
                ids = np.asarray([stored[row].id for row in rows], dtype=np.int64)
                for version, array in checked.items():
                    indexes.add(version, ids, array[rows])
                self._live = self._store.live_version()
        if self._live is not None:  # load or build the live index now (a no-op once loaded), so that
            self._registry.ensure(self._live)  # no search has to build it, nor write its snapshot
        self._registry.maintain(checked)
        return stored

    def attach_images(self, ids: Sequence[int], images: Sequence[bytes]) -> list[int]:
        """Give items that have no image (imported as vectors) their image, all or nothing; returns the ids
        that got one. Items that have an image already, or no longer exist, are left as they are. Their
        vectors stay; versions that lack one get it from the image at the next activation."""
        if len(ids) != len(images):
            raise InvalidItem(f"{len(ids)} ids for {len(images)} images")
        if not ids:
            return []
        with self._writer:
            hashes = self._store.put_images(list(images))
            try:
                attached = self._store.attach_images([int(i) for i in ids], hashes)
            finally:  # images of the items left as they were (or of a failed write) do not stay behind
                self._store.discard_images(hashes)
        return attached

    def get(self, item_id: int) -> Item:
        with self._registry.reading():
            return self._store.get(item_id)

    def get_by_external_id(self, external_id: str) -> Item:
        with self._registry.reading():
            return self._store.get_by_external_id(external_id)

    def list_items(self, offset: int = 0, limit: int = 100,
                   label: str | None = None) -> tuple[list[Item], int]:
        """A page of items in id order, and how many match `label` in all."""
        with self._registry.reading():
            return self._store.list_items(offset, limit, label)

    def labelled_items(self, labels: set[str] | None = None) -> list[Item]:
        """Items that have a label (one of `labels` when given), in id order."""
        with self._registry.reading():
            return self._store.labelled_items(labels)

    def count(self, has_image: bool | None = None) -> int:
        """Items in all, or only those with an image (True) or without one (False)."""
        with self._registry.reading():
            return self._store.count(has_image)

    def check_vector_engine(self) -> None:
        """Ask the vector engine whether it answers (EngineUnavailable if not); the store answers every
        read already."""
        with self._registry.reading():
            self._backend.check()

    def image(self, item_id: int) -> bytes:
        """The item's image bytes; NoImage if it has none."""
        with self._registry.reading():
            return self._store.image(item_id)

    def image_path(self, item_id: int) -> Path:
        """Where the item's image file is (read-only: other items may share it); NoImage if it has none."""
        with self._registry.reading():
            return self._store.image_path(item_id)

    def update(self, item_id: int, *, label: str | None = UNSET, metadata: Mapping[str, Any] = UNSET) -> Item:
        """Set the label (None clears it) and/or replace the metadata."""
        with self._writer, self._registry.writing() as indexes:
            item = self._store.update(item_id, label=label, metadata=metadata)
            indexes.sync_attributes(np.asarray([item_id], dtype=np.int64))
            return item

    def delete(self, item_id: int) -> Item:
        """Delete an item: out of every index at once, its image erased unless another item shares it."""
        with self._writer, self._registry.writing() as indexes:
            deleted = self._store.delete([item_id])
            if not deleted:
                raise ItemNotFound(f"no item with id {item_id}")
            indexes.remove(np.asarray([item_id], dtype=np.int64))
            versions = self._store.versions()
        self._registry.maintain(versions)
        return deleted[0]

    def delete_by_external_id(self, external_id: str) -> Item:
        return self.delete(self.get_by_external_id(external_id).id)

    def sweep_blobs(self) -> int:
        """Erase image files no item names (left by a crash mid-add or mid-delete); returns how many."""
        with self._writer:
            return self._store.sweep_blobs()

    # search

    def search(self, queries: np.ndarray, k: int, *, label: str | None = None,
               metadata: Mapping[str, Any] | MetadataFilter | None = None, qe_n: int = 0,
               qe_alpha: float = 3.0, version: str | None = None) -> tuple[str, list[list[Hit]]]:
        """Top-k items for each query (Q,d) from one model version (the live one by default).

        Returns that version and, per query, up to k hits by descending score. `label` / `metadata` keep
        items whose label / metadata values are equal (still k hits when k such items exist). `qe_n` > 0
        applies alpha-QE with the top `qe_n` hits and weight exponent `qe_alpha`.
        """
        check_search(k, qe_n, qe_alpha)
        where = ItemFilter.of(label, metadata)
        k, qe_n, qe_alpha = int(k), int(qe_n), float(qe_alpha)
        queries = check_vectors(queries)
        name = self._resolve(version)
        for _ in range(2):  # the index may be loaded, or dropped or replaced, between two attempts
            with self._registry.reading() as indexes:  # one acquisition when the index is loaded
                index = indexes.get(name)
                if index is not None:
                    allowed = None if where is None else self._allowed(index, name, where)
                    scores, ids = index.search(queries, k, allowed, qe_n, qe_alpha)
                    items = self._store.get_many(ids[ids >= 0].tolist())
                    return name, [[Hit(items[i], float(s)) for s, i in zip(row_s, row_i, strict=True)
                                   if i in items] for row_s, row_i in zip(scores, ids.tolist(), strict=True)]
                if name == self._live and name not in self._store.versions():
                    return name, [[] for _ in range(len(queries))]  # live, but no vector stored yet
            self._registry.ensure(name)  # UnknownVersion if it has no vectors
        raise UnknownVersion(f"model version {name!r} was dropped")

    def _allowed(self, index: VersionIndex, version: str, where: ItemFilter) -> np.ndarray | ItemFilter:
        """What a filtered search gives the index: the matching ids when it cannot apply the filter itself,
        or when few enough match that it scores them exactly (`exact_filter_limit`), else the filter."""
        if not index.filters(where):
            return self._store.matching_ids(version, where.label, where.metadata)
        limit = index.exact_filter_limit
        if limit:
            few = self._store.matching_ids(version, where.label, where.metadata, limit=limit + 1)
            if len(few) <= limit:
                return few
        return where

    def similar(self, item_id: int, k: int, *, label: str | None = None,
                metadata: Mapping[str, Any] | MetadataFilter | None = None, qe_n: int = 0,
                qe_alpha: float = 3.0, version: str | None = None) -> list[Hit]:
        """Up to k items most similar to a stored item (the item itself excluded), by its stored vector."""
        name = self._resolve(version)
        _, hits = self.search(self.vector(item_id, name)[None, :], k + 1, label=label, metadata=metadata,
                              qe_n=qe_n, qe_alpha=qe_alpha, version=name)
        return [hit for hit in hits[0] if hit.item.id != item_id][:k]

    def vector(self, item_id: int, version: str | None = None) -> np.ndarray:
        """The stored (raw, not whitened) vector (d,) of an item for a version (the live one by default)."""
        name = self._resolve(version)
        with self._registry.reading():
            found, vectors = self._store.vectors(name, np.asarray([item_id], dtype=np.int64))
            if not len(found):
                self._store.get(item_id)  # ItemNotFound if the item itself is missing
                raise VectorNotFound(f"item {item_id} has no vector for model version {name!r}")
        return vectors[0]

    # versions

    @property
    def live_version(self) -> str | None:
        return self._live

    def _resolve(self, version: str | None) -> str:
        name = version if version is not None else self._live
        if name is None:
            raise UnknownVersion("the gallery has no live model version yet")
        return name

    def versions(self) -> list[str]:
        """Every version with stored vectors, oldest first."""
        with self._registry.reading():
            return self._store.versions()

    def version_info(self, version: str) -> VersionInfo:
        with self._registry.reading():
            return self._store.version_info(version)

    def ids_missing_vectors(self, version: str, has_image: bool | None = None) -> np.ndarray:
        """Sorted ids (N,) of current items that have no vector for `version`: only those that have an
        image (that a model can embed), or only those without one, when `has_image` is given."""
        with self._registry.reading():
            return self._store.ids_missing_vectors(version, has_image)

    def put_vectors(self, version: str, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> int:
        """Durably store unit vectors (N,d) of item ids (N,) for `version` (re-embedding for a new model).
        Ids that no longer exist or already have a vector for it are skipped; returns how many were stored."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = quantize(check_vectors(vectors, len(ids), unit=True))
        ids, first = np.unique(ids, return_index=True)
        with self._writer:
            written = self._put_vectors(version, ids, vectors[first])
        self._registry.maintain([version])
        return written

    def _put_vectors(self, version: str, ids: np.ndarray, vectors: np.ndarray) -> int:
        """Caller holds the writer lock; `ids` (N,) are unique."""
        with self._registry.writing() as indexes:
            written = self._store.put_vectors(version, ids, vectors)
            kept = np.isin(ids, written)
            indexes.add(version, ids[kept], vectors[kept])
        return len(written)

    def activate(self, version: str, fill_missing: Callable[[list[Item]], np.ndarray] | None = None) -> None:
        """Make `version` live atomically (also the rollback); no search ever mixes two versions.

        Its index is loaded or built first while the old version keeps serving. Then, under the writer
        lock, `fill_missing(items) -> (N,d) unit vectors` embeds the items with an image still lacking a
        vector for it (ingested meanwhile) and the live version is swapped. Items without an image and
        without a vector for it are not in it (not found by its searches). A version with no stored
        vectors can go live only while no item has an image, or through `fill_missing`. The store's flip
        is a compare-and-set from the version this gallery serves: `VersionMoved` (nothing changed) if
        another process made another version live meanwhile, which this one has not followed yet.
        """
        if version in self.versions():
            self._registry.ensure(version)
        built = None
        with self._writer:
            missing = self._store.ids_missing_vectors(version, has_image=True)
            if fill_missing is not None and len(missing):
                found = self._store.get_many(missing.tolist())
                items = [found[i] for i in missing.tolist()]
                vectors = quantize(check_vectors(fill_missing(items), len(items), unit=True))
                self._put_vectors(version, missing, vectors)
            known = version in self._store.versions()
            if not known and self._store.count(has_image=True):  # then none of them has a vector of it
                raise UnknownVersion(f"no vectors are stored for model version {version!r}")
            missing = self._store.ids_missing_vectors(version)
            with self._registry.reading() as indexes:
                loaded = indexes.get(version) is not None
            if known and not loaded:  # created just now by fill_missing
                built = self._registry.build(version)
            if len(missing):
                imageless = len(self._store.ids_missing_vectors(version, has_image=False))
                LOG.warning("version %s goes live with %d items lacking a vector (%d of them without an "
                            "image)", version, len(missing), imageless)
            with self._registry.writing() as indexes:
                self._store.set_live_version(version, expected=self._live)
                if built is not None:
                    indexes.put(built)
                self._live = version
        if built is not None:
            self._registry.save(built)
        LOG.info("model version %s is live", version)

    def sync(self) -> str | None:
        """Catch up with what other processes wrote to the shared store (items, deletions, vectors,
        settings, dropped versions) when its generation moved; returns the store's live version, which
        the caller switches to with `follow` (together with its model)."""
        generation = self._store.generation()
        if generation != self._generation:
            self._registry.sync()
            self._generation = generation
        return self.stored_live_version()

    def stored_live_version(self) -> str | None:
        """The live version as the store has it now (another process may have changed it)."""
        return self._store.live_version()

    def follow(self, version: str) -> None:
        """Serve `version`, which another process made live in the shared store (its index is loaded or
        built first; the store is not written)."""
        if version in self.versions():  # else the gallery is empty: nothing to load
            self._registry.ensure(version)
        with self._writer:
            self._live = version
        LOG.info("model version %s is live (made live by another replica)", version)

    def drop_version(self, version: str) -> None:
        """Delete a version that is not live: its vectors, settings and snapshot."""
        with self._writer, self._registry.writing() as indexes:
            if version == self._live:
                raise VersionInUse(f"model version {version!r} is live; activate another one first")
            self._store.drop_version(version)
            indexes.drop(version)
            self._registry.snapshot_path(version).unlink(missing_ok=True)

    # indexes and post-processing

    def index_stats(self, version: str | None = None) -> IndexStats:
        """What serves a version (the live one by default); loads its index if needed."""
        name = self._resolve(version)
        index = self._registry.ensure(name)
        with self._registry.reading():
            vectors = index.vectors
            return IndexStats(name, vectors.kind, vectors.factory, len(vectors), vectors.tombstones,
                              vectors.exact_fallback, getattr(vectors, "coarse_dim", None))

    def compact(self, version: str | None = None, wait: bool = True) -> IndexStats:
        """Rebuild a version's index (the live one by default) from the store in the background, which
        frees the tombstones of deleted items; it serves meanwhile and the new one is swapped in atomically.
        Deletes start this by themselves once tombstones pass a quarter of the index. With `wait`, return
        once it is swapped in (the new index's stats), else at once (the serving index's)."""
        name = self._resolve(version)
        self._registry.ensure(name)
        before = self.index_stats(name)
        self._registry.compact(name, wait)
        return self.index_stats(name) if wait else before

    def snapshot(self) -> None:
        """Write snapshots of the indexes changed since their last one (`close` does it too)."""
        self._registry.save_all()

    def fit_whitening(self, version: str | None = None, kind: str = "learned",
                      dim: int | None = None) -> VersionInfo:
        """Fit a whitening, store it with the version and apply it to its queries and gallery (the index
        is rebuilt). "learned" uses the labelled items' vectors, "pca" a sample of all its vectors."""
        if kind not in WHITENING_KINDS:
            raise InvalidQuery(f"whitening kind must be one of {WHITENING_KINDS}, got {kind!r}")
        name = self._resolve(version)
        with self._registry.reading():
            if kind == "learned":
                labels = {item.id: item.label for item in self._store.labelled_items()}
                ids, vectors = self._store.vectors(name, np.asarray(sorted(labels), dtype=np.int64))
                fitted = fit_learned_whitening(vectors, [labels[i] for i in ids.tolist()], dim)
            else:
                fitted = fit_pca_whitening(self._store.sample_vectors(name, PCA_SAMPLE), dim)
        with self._writer:
            self._store.set_whitening(name, fitted)
        return self._settings_changed(name)

    def clear_whitening(self, version: str | None = None) -> VersionInfo:
        name = self._resolve(version)
        with self._writer:
            self._store.set_whitening(name, None)
        return self._settings_changed(name)

    def set_dba(self, version: str | None = None, n: int = 0, alpha: float = 3.0) -> VersionInfo:
        """Database-side augmentation with each item's top-n neighbours (n=0: off); rebuilds the index."""
        if n < 0 or not math.isfinite(alpha) or alpha < 0:
            raise InvalidQuery("DBA needs n >= 0 and a finite alpha >= 0")
        name = self._resolve(version)
        with self._writer:
            self._store.set_dba(name, n, alpha)
        return self._settings_changed(name)

    def _settings_changed(self, version: str) -> VersionInfo:
        self._registry.rebuild(version, only_loaded=True)
        return self.version_info(version)
