"""`PrefixVectorIndex`: coarse-to-fine search on CGD's own first branch (`CGD_INDEX_KIND=prefix:<kind>`).

CGD's embedding is the concatenation of n L2-normalised branch projections, divided by sqrt(n)
(METHODS.md section 1); its first branch (d/n wide) is a descriptor of its own. The coarse index (any
kind) holds that branch, renormalised; a search takes its top `k * factor` candidates and re-ranks them
exactly on the full vectors (`FullVectors`: float16 in a file, only the rows re-ranked are read).

Where the prefix comes from: the vectors themselves. At build, a sample of the version's vectors is
checked for the branch structure (every block of d/3, or else d/2, values has norm 1/sqrt(n)). A model
with learned whitening (or a gallery whitening) rotates the embedding, so no block structure survives:
such a version's coarse index then holds the full vectors (no memory gain, still exact re-ranking), and
`factory` says so. index/ never sees the model, so this needs nothing from it.

The factor is calibrated at build on the sample: a copy of the trained coarse index holds the sample's
prefixes, sample vectors query it, and the smallest factor whose top-(k * factor) candidates hold
`CALIBRATION_RECALL` of each query's exact full top-k is taken, times `FACTOR_MARGIN` (the gallery is
larger than the sample, so its neighbours are closer together). A set re-ranking factor
(`IndexSpec.k_factor`) overrides it. An HNSW coarse kind explores `COARSE_EF_PER_CANDIDATE` times the
candidates it returns (`coarse_ef_search`), unless `ef_search` is set. Until `MIN_TRAINING_POINTS`
vectors exist the index searches the full vectors exactly (`exact_fallback`) and asks to be rebuilt
("train").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import DimensionMismatch, SnapshotCorrupt
from index.faiss_index import COMPACT_FRACTION, FaissVectorIndex, top_k
from index.full_vectors import FullVectors, best_rows, remove_stale_files, sweep_orphans
from index.kinds import MIN_TRAINING_POINTS, IndexSpec, training_points_needed
from index.snapshots import read_snapshot

LOG = logging.getLogger(__name__)

BRANCH_COUNTS = (3, 2)  # CGD has at most three descriptors; a single one has no prefix
BRANCH_NORM_TOLERANCE = 3e-3  # float16 storage moves a block's norm by about 5e-4
CALIBRATION_K = 10
CALIBRATION_QUERIES = 200
CALIBRATION_GALLERY = 20_000
CALIBRATION_RECALL = 0.995
FACTOR_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
FACTOR_MARGIN = 2
MAX_FACTOR = 128
COARSE_EF_PER_CANDIDATE = 1.5  # x4 at 1M: recall@10 0.989 with 40 (1x), 0.999 with 60 (1.5x), 80, 128
MIN_COARSE_EF = 16
_EXACT_CHUNK = 1 << 15


def prefix_dim(sample: np.ndarray) -> int:
    """The first branch's width if every row of `sample` (M, d) is a concatenation of n equal-norm
    blocks (n in BRANCH_COUNTS), else d."""
    d = sample.shape[1]
    for n in BRANCH_COUNTS:
        if d % n or not len(sample):
            continue
        norms = np.linalg.norm(sample.reshape(len(sample), n, d // n), axis=2)
        if np.all(np.abs(norms - 1 / np.sqrt(n)) < BRANCH_NORM_TOLERANCE):
            return d // n
    return d


def coarse_vectors(vectors: np.ndarray, width: int) -> np.ndarray:
    """The first `width` values of each row, renormalised (float32, C-contiguous)."""
    head = np.array(vectors[:, :width], dtype=np.float32)
    head /= np.maximum(np.linalg.norm(head, axis=1, keepdims=True), 1e-12)
    return head


def coarse_ef_search(wanted: int, ef_search: int | None) -> int:
    """The coarse search's efSearch (HNSW kinds) for `wanted` candidates: the set `ef_search`, else
    COARSE_EF_PER_CANDIDATE times them (the plain kinds' default, 128, is sized for a top-10)."""
    return ef_search or max(math.ceil(COARSE_EF_PER_CANDIDATE * wanted), MIN_COARSE_EF)


def calibrate_factor(sample: np.ndarray, width: int, coarse: FaissVectorIndex, seed: int = 0) -> int:
    """The re-ranking factor, measured on `sample` (M, d) queried by itself: `coarse` (empty, trained, of
    the kind and settings that will serve) indexes the sample's prefixes, and the smallest factor of
    FACTOR_LADDER whose candidates hold CALIBRATION_RECALL of the exact full top-k is taken, times
    FACTOR_MARGIN."""
    rng = np.random.default_rng(seed)
    if len(sample) > CALIBRATION_GALLERY:
        sample = sample[rng.choice(len(sample), CALIBRATION_GALLERY, replace=False)]
    k = min(CALIBRATION_K, len(sample) - 1)
    if k < 1:
        return FACTOR_MARGIN
    ids = np.arange(len(sample), dtype=np.int64)
    coarse.add(ids, coarse_vectors(sample, width))
    queries = rng.choice(len(sample), min(CALIBRATION_QUERIES, len(sample)), replace=False)
    full = sample[queries] @ sample.T
    full[np.arange(len(queries)), queries] = -np.inf  # a query is not its own neighbour
    truth = np.argpartition(-full, k - 1, axis=1)[:, :k]
    prefixes = coarse_vectors(sample[queries], width)
    for factor in FACTOR_LADDER:
        if k * factor >= len(sample) - 1:
            break
        wanted = k * factor + 1
        _, found = coarse.search(prefixes, wanted, ef_search=coarse_ef_search(wanted, coarse.spec.ef_search))
        recall = np.mean([len(set(t) & set(f)) / k
                          for t, f in zip(truth.tolist(), found.tolist(), strict=True)])
        if recall >= CALIBRATION_RECALL:
            return min(factor * FACTOR_MARGIN, MAX_FACTOR)
    return MAX_FACTOR


class PrefixVectorIndex:
    """Coarse search over first-branch prefixes, exact re-ranking over float16 full vectors."""

    def __init__(self, spec: IndexSpec, dim: int, full: FullVectors, coarse: FaissVectorIndex | None,
                 width: int, factor: int, trained_on: int = 0) -> None:
        self.spec = spec
        self._dim = dim
        self._full = full
        self._coarse = coarse
        self.width = width
        self.factor = factor
        self.trained_on = trained_on
        self.dirty = False

    @classmethod
    def create(cls, spec: IndexSpec, dim: int, n: int, training: np.ndarray | None, *, gpu: bool = False,
               directory: Path | None = None) -> PrefixVectorIndex:
        """An empty index for about `n` vectors; exact until `training` (a sample of the version's
        vectors, at least MIN_TRAINING_POINTS) is given."""
        full = FullVectors.create(dim, n, directory)
        if training is None or len(training) < MIN_TRAINING_POINTS:
            return cls(spec, dim, full, None, dim, 1)
        width = prefix_dim(training)
        coarse = FaissVectorIndex.create(spec.coarse(), width, n, coarse_vectors(training, width), gpu)
        factor = spec.k_factor or calibrate_factor(training, width, coarse.empty_copy())
        LOG.info("prefix index: coarse %s on %d of %d dimensions, re-ranking %d x k", coarse.factory, width,
                 dim, factor)
        return cls(spec, dim, full, coarse, width, factor, trained_on=n)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def kind(self) -> str:
        return self.spec.name

    @property
    def factory(self) -> str:
        """E.g. "prefix512:HNSW32,SQ8 x20": the coarse factory, its width and the re-ranking factor."""
        if self._coarse is None:
            return "Flat"
        return f"prefix{self.width}:{self._coarse.factory} x{self.factor}"

    @property
    def coarse_dim(self) -> int | None:
        """The coarse index's dimension (None while exact)."""
        return self.width if self._coarse is not None else None

    @property
    def exact_fallback(self) -> bool:
        return self._coarse is None

    @property
    def tombstones(self) -> int:
        """Removed rows still held (full vectors on disk, and the coarse kind's own tombstones)."""
        return self._full.dead

    def __len__(self) -> int:
        return len(self._full)

    def ids(self) -> np.ndarray:
        return self._full.ids()

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        if vectors.ndim != 2 or vectors.shape[1] != self._dim:
            raise DimensionMismatch(f"expected (N,{self._dim}) vectors, got {vectors.shape}")
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = self._check(vectors)
        if len(ids) != len(vectors):
            raise DimensionMismatch(f"{len(ids)} ids for {len(vectors)} vectors")
        if not len(ids):
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self._coarse is not None:
            self._coarse.add(ids, coarse_vectors(vectors, self.width))
        self._full.add(ids, vectors)
        self.dirty = True

    def remove(self, ids: np.ndarray) -> None:
        if self._full.remove(np.unique(np.asarray(ids, dtype=np.int64))):
            if self._coarse is not None:
                self._coarse.remove(ids)
            self.dirty = True

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The full vectors (N, dim) of present ids (N,)."""
        rows = self._full.rows_of(np.asarray(ids, dtype=np.int64))
        if np.any(rows < 0):
            raise KeyError("reconstruct() of an id that is not in the index")
        return self._full.gather(rows)

    def release(self) -> None:
        """Nothing outside the process (an unsaved build's file goes when the index is collected)."""

    def maintenance(self) -> str | None:
        if self._coarse is None:
            return "train" if len(self) >= MIN_TRAINING_POINTS else None
        reason = self._coarse.maintenance()
        if reason is not None:
            return reason
        if self._full.dead > COMPACT_FRACTION * self._full.rows:
            return "compact"
        return None

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product on the full vectors, among the coarse index's top k * factor."""
        queries = self._check(queries)
        if allowed is not None:
            allowed = np.unique(np.asarray(allowed, dtype=np.int64))
            allowed = allowed[self._full.rows_of(allowed) >= 0]
        candidates = len(self) if allowed is None else len(allowed)
        k = min(k, candidates)
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if self._coarse is None:
            return self._exact(queries, k, self.ids() if allowed is None else allowed)
        wanted = min(k * self.factor, candidates)
        _, found = self._coarse.search(coarse_vectors(queries, self.width), wanted, allowed,
                                       ef_search=coarse_ef_search(wanted, self.spec.ef_search))
        return self._rerank(queries, found, k)

    def _rerank(self, queries: np.ndarray, found: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of queries (Q, dim) among candidate ids (Q, C) (-1: none), query by query: each
        one's rows are read and scored in float16 by FAISS (`best_rows`)."""
        scores = np.zeros((len(queries), k), np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        rows = self._full.rows_of(found)
        for i, (query, candidates, candidate_rows) in enumerate(zip(queries, found, rows, strict=True)):
            present = candidate_rows >= 0
            best, positions = best_rows(query, self._full.read(candidate_rows[present]), k)
            scores[i, :len(best)], ids[i, :len(best)] = best, candidates[present][positions]
        return scores, ids

    def _exact(self, queries: np.ndarray, k: int, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the full vectors of candidate ids (N,), N >= k."""
        best_scores = np.zeros((len(queries), 0), np.float32)
        best_ids = np.zeros((len(queries), 0), np.int64)
        for start in range(0, len(candidates), _EXACT_CHUNK):
            chunk = candidates[start:start + _EXACT_CHUNK]
            scores = queries @ self._full.gather(self._full.rows_of(chunk)).T
            best_scores, best_ids = top_k(np.hstack([best_scores, scores]),
                                          np.hstack([best_ids, np.broadcast_to(chunk, scores.shape)]), k)
        return best_scores, best_ids

    def serialized_size(self) -> int:
        """Bytes of the coarse index as FAISS writes it (the full vectors are on disk)."""
        return self._coarse.serialized_size() if self._coarse is not None else 0

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        """The full vectors flushed and their row ids written, then the coarse snapshot naming them."""
        vectors_file, row_ids_file = self._full.save(path)
        own = {"spec": self.spec.name, "dim": self._dim, "width": self.width, "factor": self.factor,
               "trained_on": self.trained_on, "rows": self._full.rows, "vectors_file": vectors_file,
               "row_ids_file": row_ids_file}
        coarse = self._coarse if self._coarse is not None else FaissVectorIndex.create(
            IndexSpec.parse("Flat"), 1, 0)  # a placeholder: the exact state has no coarse index
        coarse.save(path, {**meta, "prefix": own, "coarse": self._coarse is not None})
        coarse.dirty = False
        remove_stale_files(path.parent, path, {vectors_file, row_ids_file})
        self.dirty = False

    @classmethod
    def load(cls, path: Path, spec: IndexSpec, gpu: bool = False) -> tuple[PrefixVectorIndex, dict[str, Any]]:
        """(index, meta) from a snapshot; SnapshotCorrupt if it or its full vectors are unusable."""
        loaded, meta = read_snapshot(path)
        own = meta.get("prefix")
        if not isinstance(own, dict) or own.get("spec") != spec.name:
            raise SnapshotCorrupt(f"{path} holds another index kind than {spec.name!r}")
        try:
            coarse = None
            if meta["coarse"]:
                coarse = FaissVectorIndex.from_snapshot(loaded, meta, spec.coarse(), gpu, path)
            full = FullVectors.load(path.parent / own["vectors_file"], path.parent / own["row_ids_file"],
                                    int(own["dim"]), int(own["rows"]))
            index = cls(spec, int(own["dim"]), full, coarse, int(own["width"]),
                        spec.k_factor or int(own["factor"]), int(own["trained_on"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotCorrupt(f"{path}: unusable prefix metadata ({exc})") from exc
        if coarse is not None and len(coarse) != len(full):
            raise SnapshotCorrupt(f"{path}: the coarse index and the full vectors disagree")
        return index, meta


@dataclass(frozen=True)
class PrefixBackend:
    """Makes and loads `PrefixVectorIndex`es (the `VectorBackend` of `prefix:` kinds); the full vectors
    are files in `directory` (the gallery's faiss/ folder)."""

    spec: IndexSpec
    gpu: bool = False
    directory: Path | None = None
    engine = "faiss"

    def __post_init__(self) -> None:
        if self.directory is not None:
            deleted = sweep_orphans(self.directory)
            if deleted:
                LOG.info("deleted %d unused full-vector files in %s", deleted, self.directory)

    def training_points(self, dim: int, n: int) -> int:
        return max(MIN_TRAINING_POINTS, training_points_needed(self.spec.coarse().create(dim, n)))

    def create(self, dim: int, n: int, training: np.ndarray | None) -> PrefixVectorIndex:
        return PrefixVectorIndex.create(self.spec, dim, n, training, gpu=self.gpu, directory=self.directory)

    def load(self, path: Path) -> tuple[PrefixVectorIndex, dict[str, Any]]:
        return PrefixVectorIndex.load(path, self.spec, self.gpu)

    def check(self) -> None:
        """Nothing to ask: FAISS runs in the process."""

    def close(self) -> None:
        """Nothing to release: FAISS runs in the process."""


def make_backend(spec: IndexSpec, gpu: bool, directory: Path | None) -> Any:
    """The `VectorBackend` of an index kind: `PrefixBackend` for `prefix:` kinds, else `FaissBackend`."""
    from index.faiss_index import FaissBackend

    return PrefixBackend(spec, gpu, directory) if spec.prefix else FaissBackend(spec, gpu)
