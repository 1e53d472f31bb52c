"""`FaissVectorIndex`: an IDMap2 over a factory-built inner-product FAISS index.

- 64-bit ids are the item ids. Removal is physical where FAISS compacts its internal ids (flat code
  indexes: Flat, SQfp16, SQ8); elsewhere (HNSW, IVF, Refine) removed ids become tombstones, filtered by an
  id selector and dropped at the next rebuild. (IDMap over IVF cannot remove: IVF does not renumber.)
- A trained kind with too few vectors to train is an exact IndexFlatIP until it is rebuilt.
- Filtered search uses an id selector; a query that gets fewer than min(k, allowed) hits from an
  approximate kind is answered exactly over the allowed ids (reconstructed from the index).
- A single query on a graph or inverted-list kind runs on the calling thread alone (`omp_threads`):
  FAISS searches one such query serially anyway, and its only parallel region (IDMap's translation of
  the k result ids) would wake a second OpenMP thread and wait for it at a barrier, a futex sleep
  and wake-up, longer when the other cores are busy (docs/BENCHMARKS.md, "Where the one-query tail
  came from"). Exhaustive kinds keep every thread: FAISS splits their database among the threads
  even for one query.
- Not thread-safe: the gallery serialises writers and excludes them from searches.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.errors import DimensionMismatch, GpuUnavailable, InvalidIndexKind, SnapshotCorrupt
from index.kinds import DEFAULT_EF_SEARCH, DEFAULT_K_FACTOR, IndexSpec, default_nprobe, training_points_needed
from index.snapshots import read_snapshot, write_snapshot

LOG = logging.getLogger(__name__)

EXACT_FALLBACK_LIMIT = 1 << 18  # most candidates scored exactly when an ANN search returns too few hits
RETRAIN_GROWTH = 4  # a trained index is retrained once the gallery is this many times its training size
COMPACT_FRACTION = 0.25  # tombstones above this fraction of the index trigger a rebuild
_EXACT_CHUNK = 1 << 15
USE_GPU_CHOICES = ("auto", "always", "never")
PARALLEL_SCAN_MIN = 10_000  # FAISS 1.15 splits one query's exhaustive scan among threads from here on


def configure_faiss(blas_threshold: int) -> None:
    """Process-wide FAISS setting: searches with at least `blas_threshold` queries use BLAS."""
    faiss.cvar.distance_compute_blas_threshold = blas_threshold


def resolve_gpu(use_gpu: str) -> bool:
    """"auto": a GPU if FAISS sees one; "always": a GPU or GpuUnavailable; "never": CPU."""
    if use_gpu not in USE_GPU_CHOICES:
        raise InvalidIndexKind(f"use_gpu must be one of {USE_GPU_CHOICES}, got {use_gpu!r}")
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu == "always" and gpus == 0:
        raise GpuUnavailable("use_gpu='always' but FAISS sees no GPU (is faiss-gpu installed?)")
    return use_gpu != "never" and gpus > 0


@contextlib.contextmanager
def omp_threads(count: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads for the calling thread while inside (None: unchanged). libgomp keeps the
    setting per thread, so other threads' searches keep theirs; restored on the way out."""
    if count is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def searches_one_query_serially(index: faiss.Index) -> bool:
    """Whether FAISS searches one query of `index` (unwrapped from IDMap) on one thread anyway: HNSW, and
    IVF whose coarse quantizer has fewer than PARALLEL_SCAN_MIN lists (refined or not)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        index = faiss.downcast_index(index.base_index)
    if isinstance(index, faiss.IndexHNSW):
        return True
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and ivf.nlist < PARALLEL_SCAN_MIN


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k per row of scores (Q,N) with ids (Q,N) or (N,), sorted by descending score."""
    ids = np.broadcast_to(ids, scores.shape)
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, ids = np.take_along_axis(scores, part, 1), np.take_along_axis(ids, part, 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


class FaissVectorIndex:
    """Searchable vectors (N, dim) with int64 ids; inner-product scores."""

    def __init__(self, index: faiss.IndexIDMap2, spec: IndexSpec, factory: str, *, trained_on: int = 0,
                 exact_fallback: bool = False, gpu: bool = False) -> None:
        self._index = index
        self.spec = spec
        self.factory = factory
        self.trained_on = trained_on
        self.exact_fallback = exact_fallback
        self.dirty = False
        inner = faiss.downcast_index(index.index)
        self._removable = isinstance(inner, faiss.IndexFlatCodes)
        self._serial_query = searches_one_query_serially(inner)
        self._refined = isinstance(inner, faiss.IndexRefine)  # what a search's parameters are made for
        base = faiss.downcast_index(inner.base_index) if self._refined else inner
        self._hnsw = isinstance(base, faiss.IndexHNSW)
        ivf = faiss.try_extract_index_ivf(base)
        self._nlist = None if ivf is None else int(ivf.nlist)
        self._tombstones: set[int] = set()
        self._ids_cache: np.ndarray | None = None
        self._gpu = gpu
        self._gpu_index: faiss.Index | None = None

    @classmethod
    def create(cls, spec: IndexSpec, dim: int, n: int, training: np.ndarray | None = None,
               gpu: bool = False) -> FaissVectorIndex:
        """An empty index for a gallery of `n` vectors. Trained kinds train on `training` (M, dim) if M is
        enough, else they are exact (IndexFlatIP) until rebuilt."""
        inner = spec.create(dim, n)
        needed = training_points_needed(inner)
        exact_fallback = needed > 0 and (training is None or len(training) < needed)
        factory = spec.factory(dim, n)
        if exact_fallback:
            inner, factory = faiss.IndexFlatIP(dim), "Flat"
        elif needed:
            inner.train(training)
            ivf = faiss.try_extract_index_ivf(inner)
            if ivf is not None and not isinstance(faiss.downcast_index(inner), faiss.IndexRefine):
                ivf.make_direct_map()  # reconstruct() for QE, DBA and exact fallbacks
        wrapped = faiss.IndexIDMap2(inner)
        wrapped.own_fields = True
        inner.this.disown()
        return cls(wrapped, spec, factory, trained_on=n if needed and not exact_fallback else 0,
                   exact_fallback=exact_fallback, gpu=gpu)

    def empty_copy(self) -> FaissVectorIndex:
        """A new index of the same kind, trained the same way, holding nothing (call while empty)."""
        if self._index.ntotal:
            raise ValueError("empty_copy() of an index that holds vectors")
        cloned = faiss.clone_index(self._index)
        copy = faiss.downcast_index(cloned)
        cloned.this.disown()  # the downcast proxy owns the copy from now on
        copy.this.own(True)
        return FaissVectorIndex(copy, self.spec, self.factory, trained_on=self.trained_on,
                                exact_fallback=self.exact_fallback, gpu=False)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def kind(self) -> str:
        return self.spec.name

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._tombstones)

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """The sorted unique ids among `ids` that are searchable here."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        known = self.ids()
        if not len(known):
            return known
        positions = np.minimum(np.searchsorted(known, ids), len(known) - 1)
        return ids[known[positions] == ids]

    def ids(self) -> np.ndarray:
        """Sorted ids (N,) of the searchable vectors (cached until the next change)."""
        if self._ids_cache is None:
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            if self._tombstones:
                ids = ids[~np.isin(ids, np.fromiter(self._tombstones, np.int64))]
            self._ids_cache = np.sort(ids)
        return self._ids_cache

    def _changed(self) -> None:
        self.dirty = True
        self._ids_cache = None

    def _update_gpu_copy(self, change: Callable[[faiss.Index], object]) -> None:
        """Apply the same change to the GPU copy, if there is one; if the GPU index refuses it, drop the
        copy (the next unfiltered search makes a new one from the CPU index)."""
        if self._gpu_index is None:
            return
        try:
            change(self._gpu_index)
        except RuntimeError as exc:
            LOG.info("GPU copy of %s dropped, re-made at the next search: %s", self.factory, exc)
            self._gpu_index = None

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DimensionMismatch(f"expected (N,{self.dim}) vectors, got {vectors.shape}")
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors (N, dim) under new ids (N,)."""
        vectors = self._check(vectors)
        if len(ids) != len(vectors):
            raise DimensionMismatch(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(ids):
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            self._index.add_with_ids(vectors, ids)
            self._update_gpu_copy(lambda gpu: gpu.add_with_ids(vectors, ids))
            self._changed()

    def remove(self, ids: np.ndarray) -> None:
        """Remove ids (N,) from search at once; unknown ids are ignored."""
        present = self._present(ids)
        if not len(present):
            return
        if self._removable:
            self._index.remove_ids(faiss.IDSelectorBatch(present))
            self._update_gpu_copy(lambda gpu: gpu.remove_ids(faiss.IDSelectorBatch(present)))
        else:  # the GPU copy stays as it is: searches go to the CPU while tombstones exist
            self._tombstones.update(present.tolist())
        self._changed()

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The indexed vectors (N, dim) of present ids (N,) (approximate for quantised kinds)."""
        if not len(ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))

    def maintenance(self) -> str | None:
        """Why this index should be rebuilt from the store now ("train", "retrain", "compact"), or None."""
        if self.exact_fallback:
            needed = training_points_needed(self.spec.create(self.dim, len(self)))
            return "train" if len(self) >= needed else None
        if self.trained_on and len(self) >= RETRAIN_GROWTH * self.trained_on:
            return "retrain"
        if self._tombstones and len(self._tombstones) > COMPACT_FRACTION * self._index.ntotal:
            return "compact"
        return None

    def _search_params(self, selector: faiss.IDSelector | None,
                       ef_search: int | None) -> tuple[faiss.SearchParameters | None, list]:
        """Parameters for one search, and the objects they point to (kept alive by the caller)."""
        # IDMap translates only a top-level selector, and IndexRefine ignores that one: translate it here.
        translated = None
        if selector is not None:
            translated = faiss.IDSelectorTranslated(self._index.id_map, selector)
        if self._hnsw:
            params = faiss.SearchParametersHNSW()
            params.efSearch = ef_search or self.spec.ef_search or DEFAULT_EF_SEARCH
        elif self._nlist is not None:
            params = faiss.SearchParametersIVF()
            params.nprobe = self.spec.nprobe or default_nprobe(self._nlist)
        elif translated is None and not self._refined:
            return None, []
        else:
            params = faiss.SearchParameters()
        if translated is not None:
            params.sel = translated
        if not self._refined:
            return params, [selector, translated]
        refine = faiss.IndexRefineSearchParameters()
        refine.k_factor = self.spec.k_factor or DEFAULT_K_FACTOR
        refine.base_index_params = params
        return refine, [selector, translated, params]

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, *,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product for queries (Q, dim) among all ids or the `allowed` ones; `ef_search`
        overrides the kind's efSearch for this search (HNSW kinds: a prefix kind's coarse search).

        Returns (scores (Q,k'), ids (Q,k')) with k' = min(k, candidates); -1 ids where an approximate
        search found fewer and the exact fallback was too large to run.
        """
        queries = self._check(queries)
        candidates = None if allowed is None else self._present(allowed)
        k = min(k, len(self) if candidates is None else len(candidates))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        batch = selector = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(candidates)
        elif self._tombstones:
            batch = faiss.IDSelectorBatch(np.fromiter(self._tombstones, np.int64))
            selector = faiss.IDSelectorNot(batch)
        params, _keep_alive = self._search_params(selector, ef_search)  # SWIG objects must outlive the search
        searcher = self._gpu_searcher() if selector is None else self._index
        with omp_threads(1 if len(queries) == 1 and self._serial_query else None):
            scores, ids = searcher.search(queries, k, params=params)
        short = (ids >= 0).sum(axis=1) < k
        if short.any() and (len(self) if candidates is None else len(candidates)) <= EXACT_FALLBACK_LIMIT:
            scores[short], ids[short] = self._exact(queries[short], k, self.ids() if candidates is None
                                                    else candidates)
        return scores, ids

    def _exact(self, queries: np.ndarray, k: int, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of queries (Q, dim) over the reconstructed vectors of candidates (N,), N >= k."""
        best_scores = np.zeros((len(queries), 0), np.float32)
        best_ids = np.zeros((len(queries), 0), np.int64)
        for start in range(0, len(candidates), _EXACT_CHUNK):
            chunk = candidates[start:start + _EXACT_CHUNK]
            scores = queries @ self.reconstruct(chunk).T
            best_scores, best_ids = top_k(np.hstack([best_scores, scores]),
                                          np.hstack([best_ids, np.broadcast_to(chunk, scores.shape)]), k)
        return best_scores, best_ids

    def _gpu_searcher(self) -> faiss.Index:
        """A GPU copy for unfiltered searches when a GPU is in use and the kind runs there, else the CPU
        index. (Selectors do not run on GPU indexes.) Adds and physical removals are applied to the copy
        too; a change the GPU index refuses drops it, and the next search copies the index again."""
        if not self._gpu:
            return self._index
        if self._gpu_index is None:
            try:
                self._gpu_index = faiss.index_cpu_to_all_gpus(self._index)
            except RuntimeError as exc:
                LOG.warning("index kind %s stays on the CPU: %s", self.factory, exc)
                self._gpu = False
                return self._index
        return self._gpu_index

    def serialized_size(self) -> int:
        """Bytes of the index as FAISS writes it (close to the memory it holds)."""
        total = 0

        def count(chunk: bytes) -> int:
            nonlocal total
            total += len(chunk)
            return len(chunk)

        faiss.write_index(self._index, faiss.PyCallbackIOWriter(count))
        return total

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        """Atomic snapshot with the caller's `meta` plus what `load` needs."""
        own = {"spec": self.spec.name, "factory": self.factory, "trained_on": self.trained_on,
               "exact_fallback": self.exact_fallback, "tombstones": sorted(self._tombstones)}
        write_snapshot(path, self._index, {**meta, **own})
        self.dirty = False

    def release(self) -> None:
        """Nothing to free outside the process."""

    @classmethod
    def load(cls, path: Path, spec: IndexSpec, gpu: bool = False) -> tuple[FaissVectorIndex, dict[str, Any]]:
        """(index, meta) from a snapshot; SnapshotCorrupt if unreadable or made for another index kind."""
        loaded, meta = read_snapshot(path)
        if "prefix" in meta:
            raise SnapshotCorrupt(f"{path} holds the coarse index of a prefix kind, not {spec.name!r}")
        return cls.from_snapshot(loaded, meta, spec, gpu, path), meta

    @classmethod
    def from_snapshot(cls, loaded: faiss.Index, meta: dict[str, Any], spec: IndexSpec, gpu: bool,
                      path: Path) -> FaissVectorIndex:
        """The index read from the snapshot at `path` with its `meta`; SnapshotCorrupt if of another kind."""
        index = faiss.downcast_index(loaded)
        if not isinstance(index, faiss.IndexIDMap2) or meta.get("spec") != spec.name:
            raise SnapshotCorrupt(f"{path} holds another index kind than {spec.name!r}")
        loaded.this.disown()  # the downcast proxy owns the index from now on
        index.this.own(True)
        loaded_index = cls(index, spec, meta["factory"], trained_on=int(meta["trained_on"]),
                           exact_fallback=bool(meta["exact_fallback"]), gpu=gpu)
        loaded_index._tombstones.update(int(i) for i in meta["tombstones"])
        return loaded_index


@dataclass(frozen=True)
class FaissBackend:
    """Makes and loads `FaissVectorIndex`es of one index kind (the `VectorBackend` of FAISS)."""

    spec: IndexSpec
    gpu: bool = False
    engine = "faiss"

    def training_points(self, dim: int, n: int) -> int:
        return training_points_needed(self.spec.create(dim, n))

    def create(self, dim: int, n: int, training: np.ndarray | None) -> FaissVectorIndex:
        return FaissVectorIndex.create(self.spec, dim, n, training, self.gpu)

    def load(self, path: Path) -> tuple[FaissVectorIndex, dict[str, Any]]:
        return FaissVectorIndex.load(path, self.spec, self.gpu)

    def check(self) -> None:
        """Nothing to ask: FAISS runs in the process."""

    def close(self) -> None:
        """Nothing to release: FAISS runs in the process."""
