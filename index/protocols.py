"""The interfaces the gallery is built on, exactly as `Gallery`, `IndexRegistry` and `VersionIndex` use them.

`ItemStore` is the durable side: items, image bytes and the per-version vectors and their
post-processing, each write atomic (SQLite, PostgreSQL). `VectorIndex` is the searchable side of one
version and `VectorBackend` makes and loads them (FAISS in the process; pgvector and Milvus on a server,
where `save` records which table or collection serves and `release` frees one that no longer does).
`service/` reaches all of this only through `Gallery`. Arrays are NumPy: ids int64 (N,), vectors float32
C-contiguous (N,d).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from index.filters import ItemFilter, MetadataFilter
from index.postprocess import Whitening
from index.records import Item, NewItem, VersionInfo


class ItemStore(Protocol):
    """Durable items, images and vectors. Writes are atomic; the gallery keeps writers from interleaving."""

    engine: str  # what stores the items, as /ready names it ("sqlite", "postgresql")

    # writes

    def put_images(self, images: Sequence[bytes]) -> list[str]:
        """Durably store image bytes before the rows naming them; returns their sha256s."""

    def discard_images(self, hashes: Iterable[str]) -> None:
        """Erase the given images unless an item names them (after a failed add), under the writer."""

    def sweep_blobs(self) -> int:
        """Erase image files no item names; returns how many. The gallery keeps writers out meanwhile."""

    def add(self, items: Sequence[NewItem], hashes: Sequence[str | None],
            vectors: Mapping[str, np.ndarray]) -> tuple[list[Item], list[bool]]:
        """Rows + vectors (N,d) per version, all or nothing; (items in input order, which ones are new).
        A None hash: an item without an image. With no live version yet, the first version in `vectors`
        becomes live."""

    def attach_images(self, ids: Sequence[int], hashes: Sequence[str]) -> list[int]:
        """Name the (stored) images of items that have none, all or nothing; returns the ids that got one."""

    def update(self, item_id: int, *, label: str | None = ..., metadata: Mapping[str, Any] = ...) -> Item:
        """Set the label and/or replace the metadata; ItemNotFound if there is no such item."""

    def delete(self, ids: Iterable[int]) -> list[Item]:
        """Delete items with their vectors, and images nothing else shares; returns the deleted items."""

    def put_vectors(self, version: str, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Store vectors (N,d) of existing items that lack one for `version`; returns the ids written."""

    def set_live_version(self, version: str, expected: str | None) -> None:
        """Compare-and-set: make `version` live if the live version is still `expected` (or `version`
        already), else `VersionMoved` (another process made another version live)."""

    def drop_version(self, version: str) -> None:
        """Delete a version's vectors and settings."""

    def set_whitening(self, version: str, whitening: Whitening | None) -> None: ...

    def set_dba(self, version: str, n: int, alpha: float) -> None: ...

    def close(self) -> None: ...

    # item reads

    def get(self, item_id: int) -> Item:
        """ItemNotFound if there is no such item."""

    def get_many(self, ids: Iterable[int]) -> dict[int, Item]:
        """Items by id; ids that do not exist are absent."""

    def get_by_external_id(self, external_id: str) -> Item: ...

    def list_items(self, offset: int, limit: int, label: str | None) -> tuple[list[Item], int]:
        """A page of items in id order, and how many match `label` in all."""

    def labelled_items(self, labels: set[str] | None) -> list[Item]: ...

    def count(self, has_image: bool | None = None) -> int:
        """Items in all, or only those with an image (True) or without one (False)."""

    def image(self, item_id: int) -> bytes:
        """NoImage if the item has none."""

    def image_path(self, item_id: int) -> Path:
        """NoImage if the item has none."""

    def matching_ids(self, version: str, label: str | None, metadata: MetadataFilter | None,
                     limit: int | None = None) -> np.ndarray:
        """Sorted ids (N,) of items with a `version` vector and the given label / metadata values (at most
        `limit` of them, any ones: enough to tell whether more than `limit - 1` match)."""

    def attribute_changes(self, since: int | None) -> tuple[int, np.ndarray]:
        """(the number of the latest label / metadata change, sorted ids (N,) of the items changed after
        change `since`, none for None): what an engine's copy of them must check (`FilteringIndex`)."""

    # versions and vectors

    def live_version(self) -> str | None: ...

    def generation(self) -> int:
        """A number that changes when any process commits a write (0 for a store only this one writes)."""

    def versions(self) -> list[str]:
        """Every version with stored vectors, oldest first."""

    def version_info(self, version: str) -> VersionInfo:
        """UnknownVersion if it has no vectors."""

    def whitening(self, version: str) -> Whitening | None: ...

    def vectors(self, version: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found ids (M,), vectors (M,d)) for the given ids."""

    def vector_ids(self, version: str) -> np.ndarray:
        """Sorted ids (N,) that have a `version` vector."""

    def ids_missing_vectors(self, version: str, has_image: bool | None = None) -> np.ndarray:
        """Sorted ids (N,) of items without a `version` vector (only those with an image, or without one,
        when `has_image` is given)."""

    def iter_vectors(self, version: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (B,), vectors (B,d)) in batches, in id order."""

    def sample_vectors(self, version: str, n: int) -> np.ndarray:
        """Up to n vectors (n,d) drawn at random (to train an index or a whitening)."""


class VectorIndex(Protocol):
    """Searchable vectors of one version with int64 ids and inner-product scores. Not thread-safe."""

    @property
    def dim(self) -> int: ...

    @property
    def dirty(self) -> bool:
        """Changed since it was made, loaded or last saved."""

    @property
    def kind(self) -> str:
        """The configured index kind (e.g. "HNSW")."""

    @property
    def factory(self) -> str:
        """What serves now (e.g. "Flat" while a trained kind waits for enough vectors)."""

    @property
    def tombstones(self) -> int:
        """Removed ids still held until the next rebuild."""

    @property
    def exact_fallback(self) -> bool:
        """A trained kind that serves exactly until it has enough vectors to train."""

    def __len__(self) -> int: ...

    def ids(self) -> np.ndarray:
        """Sorted ids (N,) of the searchable vectors."""

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Vectors (N, dim) under new ids (N,)."""

    def remove(self, ids: np.ndarray) -> None:
        """Out of search at once; unknown ids ignored."""

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | ItemFilter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Queries (Q, dim) -> (scores (Q,k'), ids (Q,k')), k' = min(k, candidates), -1 for missing hits.
        `allowed`: the ids a hit may have, or a filter, for a `FilteringIndex` that said it can apply it."""

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Indexed vectors (N, dim) of present ids (N,)."""

    def maintenance(self) -> str | None:
        """Why it should be rebuilt from the store now ("train", "retrain", "compact"), or None."""

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        """Persist with the caller's `meta` (a snapshot file; for a server-side index, a file naming the
        table or collection that holds it)."""

    def release(self) -> None:
        """Free what it holds outside the process (its table or collection) once it no longer serves;
        nothing for an in-process index. Called under the registry's exclusive lock."""


@runtime_checkable
class FilteringIndex(Protocol):
    """A `VectorIndex` that applies label and metadata filters itself, in its engine (pgvector joins the
    items table in SQL; Milvus holds a copy of them and evaluates an expression); with any other index
    the gallery passes the store's matching ids."""

    exact_filter_limit: int
    """A filter keeping at most this many items is better passed as their ids, which the index scores
    exactly (Milvus: its graph walk under a selective filter returns wrong hits); 0: pass the filter."""

    def can_filter(self, where: ItemFilter) -> bool:
        """True if `search(queries, k, where)` applies the filter; False (the reason logged): pass ids."""

    def sync_attributes(self, ids: np.ndarray | None = None) -> int:
        """Bring a copy of labels and metadata held in the engine in line with the store: of ids (N,)
        after an update, or (None) of every item whose copy differs; returns how many were rewritten."""


class VectorBackend(Protocol):
    """Makes and loads the `VectorIndex` of a version."""

    engine: str  # what searches, as /ready names it ("faiss", "pgvector", "milvus")

    def training_points(self, dim: int, n: int) -> int:
        """Vectors needed to train an index for `n` vectors of `dim` (0: no training)."""

    def create(self, dim: int, n: int, training: np.ndarray | None) -> VectorIndex:
        """An empty index for about `n` vectors, trained on `training` (M, dim) when the kind needs it."""

    def load(self, path: Path) -> tuple[VectorIndex, dict[str, Any]]:
        """(index, the `meta` it was saved with); SnapshotCorrupt when unusable."""

    def check(self) -> None:
        """Ask the engine whether it answers: EngineUnavailable if not (nothing to ask for FAISS)."""

    def close(self) -> None:
        """Release the connection to the engine (nothing for FAISS)."""


class ServerBackend(VectorBackend, Protocol):
    """A backend whose indexes are tables or collections on a server (pgvector, Milvus), named with the
    prefix of the process that made them (`index.remote_index.name_prefix`)."""

    def drop_owned(self, keep: set[str], reason: str) -> list[str]:
        """Drop the tables or collections named with this backend's prefix, except `keep` (logging
        `reason`); returns their names."""
