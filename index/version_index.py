"""`VersionIndex`: the searchable state of one model version.

Raw model vectors (N, model_dim) go through the version's post-processing before FAISS sees them:
whitening (if fitted) maps them to (N, index_dim) unit rows, then DBA (if enabled) replaces each by the
weighted sum of itself and its top-n neighbours. Queries get the same whitening, then optional alpha-QE.
New items are augmented against the current index; older items are re-augmented at the next rebuild.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.errors import DimensionMismatch, SnapshotCorrupt
from index.filters import ItemFilter
from index.postprocess import Whitening, apply_whitening, database_side_augmentation, query_expansion
from index.protocols import FilteringIndex, ItemStore, VectorBackend, VectorIndex

LOG = logging.getLogger(__name__)

TRAINING_SAMPLE = 50_000  # vectors drawn from the store to train a trained kind (at least what it needs)
SNAPSHOT_FORMAT = 1


@dataclass(frozen=True)
class VersionSettings:
    """Post-processing of one version, as stored with it."""

    model_dim: int
    whitening: Whitening | None = None
    dba_n: int = 0
    dba_alpha: float = 3.0

    @property
    def index_dim(self) -> int:
        return self.whitening.out_dim if self.whitening is not None else self.model_dim

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Raw model vectors (N, model_dim) -> index space (N, index_dim), float32."""
        if raw.ndim != 2 or raw.shape[1] != self.model_dim:
            raise DimensionMismatch(f"expected (N,{self.model_dim}) vectors, got shape {raw.shape}")
        if self.whitening is not None:
            return apply_whitening(raw, self.whitening)
        return np.ascontiguousarray(raw, dtype=np.float32)

    def fingerprint(self) -> dict[str, object]:
        """What a snapshot must have been built with to be reusable."""
        digest = hashlib.sha256(self.whitening.to_bytes()).hexdigest() if self.whitening is not None else None
        return {"format": SNAPSHOT_FORMAT, "model_dim": self.model_dim, "whitening": digest,
                "dba_n": self.dba_n, "dba_alpha": self.dba_alpha}


def _neighbours(index: VectorIndex, vectors: np.ndarray, n: int, own_ids: np.ndarray | None = None,
                allowed: np.ndarray | ItemFilter | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-n neighbours of vectors (Q,d), skipping each row's own id: (vectors (Q,n,d), scores (Q,n)).
    Missing neighbours are zero vectors with score 0."""
    scores, ids = index.search(vectors, n + (own_ids is not None), allowed)
    valid = ids >= 0
    if own_ids is not None:
        valid &= ids != own_ids[:, None]
    order = np.argsort(~valid, axis=1, kind="stable")[:, :n]  # valid ones first, rank order kept
    ids, scores, valid = (np.take_along_axis(a, order, 1) for a in (ids, scores, valid))
    found = np.zeros((*ids.shape, index.dim), dtype=np.float32)
    found[valid] = index.reconstruct(ids[valid])
    return found, np.where(valid, scores, np.float32(0)).astype(np.float32)


def _augment(settings: VersionSettings, vectors: np.ndarray, ids: np.ndarray,
             against: VectorIndex) -> np.ndarray:
    """DBA of index-space vectors (N,d) with ids (N,) against an index (their own ids skipped)."""
    neighbours, scores = _neighbours(against, vectors, settings.dba_n, own_ids=ids)
    return database_side_augmentation(vectors, neighbours, scores, settings.dba_alpha)


class VersionIndex:
    """One model version's vectors in a `VectorIndex`, with its whitening / DBA. Not thread-safe (see
    IndexRegistry)."""

    def __init__(self, name: str, settings: VersionSettings, vectors: VectorIndex) -> None:
        self.name = name
        self.settings = settings
        self.vectors = vectors

    def __len__(self) -> int:
        return len(self.vectors)

    def add(self, ids: np.ndarray, raw: np.ndarray) -> None:
        """Index raw vectors (N, model_dim) of new ids (N,)."""
        vectors = self.settings.transform(raw)
        if self.settings.dba_n and len(self.vectors):
            vectors = _augment(self.settings, vectors, ids, self.vectors)
        self.vectors.add(ids, vectors)

    def remove(self, ids: np.ndarray) -> None:
        self.vectors.remove(ids)

    def filters(self, where: ItemFilter) -> bool:
        """True if the index applies `where` itself (pass it to `search`), False if it needs the ids."""
        return isinstance(self.vectors, FilteringIndex) and self.vectors.can_filter(where)

    @property
    def exact_filter_limit(self) -> int:
        """Up to how many matching items a filter is better passed as ids, scored exactly (0: never)."""
        return self.vectors.exact_filter_limit if isinstance(self.vectors, FilteringIndex) else 0

    def sync_attributes(self, ids: np.ndarray | None = None) -> None:
        """Rewrite a copy of labels and metadata the index holds: of ids (N,) after an update, or (None)
        wherever it differs from the store's."""
        if isinstance(self.vectors, FilteringIndex):
            changed = self.vectors.sync_attributes(ids)
            if ids is None and changed:
                LOG.info("index of %s: the labels or metadata of %d items rewritten (changed in the store "
                         "while it was not loaded, or built)", self.name, changed)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | ItemFilter | None = None,
               qe_n: int = 0, qe_alpha: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
        """Raw queries (Q, model_dim) -> (scores (Q,k'), ids (Q,k')), -1 ids for missing hits. `allowed`:
        the ids a hit may have, or a filter the index said it applies (`filters`)."""
        queries = self.settings.transform(queries)
        if qe_n:
            neighbours, scores = _neighbours(self.vectors, queries, qe_n, allowed=allowed)
            queries = query_expansion(queries, neighbours, scores, qe_alpha)
        return self.vectors.search(queries, k, allowed)

    @classmethod
    def build(cls, name: str, settings: VersionSettings, backend: VectorBackend,
              store: ItemStore) -> VersionIndex:
        """Build from the durable vectors of `name` in `store` (training trained kinds if enough exist).

        With DBA, an index without DBA is built first to find each vector's neighbours.
        """
        n = len(store.vector_ids(name))
        plain = None
        if settings.dba_n and n:
            plain = cls.build(name, VersionSettings(settings.model_dim, settings.whitening), backend, store)
        needed = backend.training_points(settings.index_dim, n)
        training = None
        if needed and n >= needed:
            training = settings.transform(store.sample_vectors(name, max(needed, min(n, TRAINING_SAMPLE))))
        version = cls(name, settings, backend.create(settings.index_dim, n, training))
        for ids, raw in store.iter_vectors(name):
            vectors = settings.transform(raw)
            if plain is not None:
                vectors = _augment(settings, vectors, ids, plain.vectors)
            version.vectors.add(ids, vectors)
        LOG.info("built index %s for version %s: %d vectors", version.vectors.factory, name, len(version))
        return version

    def save(self, path: Path) -> None:
        self.vectors.save(path, {"version": self.name, **self.settings.fingerprint()})

    @classmethod
    def load(cls, path: Path, name: str, settings: VersionSettings, backend: VectorBackend) -> VersionIndex:
        """From a snapshot; SnapshotCorrupt if it is damaged or was built with other settings."""
        vectors, meta = backend.load(path)
        expected = {"version": name, **settings.fingerprint()}
        stale = any(meta.get(key) != value for key, value in expected.items())
        if stale or vectors.dim != settings.index_dim:
            raise SnapshotCorrupt(f"{path} was built with other settings than version {name!r} has now")
        return cls(name, settings, vectors)
