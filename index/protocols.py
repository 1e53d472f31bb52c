"""The two interfaces the gallery is built on, so that other backends can replace the embedded ones.

`ItemStore` is the durable side: items, image bytes and the per-version vectors, written in one
transaction (SQLite now; PostgreSQL could follow). `VectorIndex` is the searchable side (FAISS now;
Milvus could follow). Arrays are NumPy: ids int64, vectors float32 C-contiguous.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from index.postprocess import Whitening
from index.records import Item, NewItem, VersionInfo


class ItemStore(Protocol):
    """Durable items, images and vectors. Writes are atomic; callers keep writers from interleaving."""

    def put_images(self, images: Sequence[bytes]) -> list[str]:
        """Durably store image bytes before the rows naming them; returns their sha256s."""

    def add(self, items: Sequence[NewItem], hashes: Sequence[str],
            vectors: Mapping[str, np.ndarray]) -> tuple[list[Item], list[bool]]:
        """Rows + vectors (N,d) per version, all or nothing; (items in input order, which ones are new)."""

    def update(self, item_id: int, *, label: str | None = ..., metadata: Mapping[str, Any] = ...) -> Item: ...

    def delete(self, ids: Iterable[int]) -> list[Item]:
        """Delete items with their vectors, and images nothing else shares; returns the deleted items."""

    def put_vectors(self, version: str, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Store vectors (N,d) of existing items that lack one for `version`; returns the ids written."""

    def get(self, item_id: int) -> Item: ...

    def get_many(self, ids: Iterable[int]) -> dict[int, Item]: ...

    def get_by_external_id(self, external_id: str) -> Item: ...

    def list_items(self, offset: int = 0, limit: int = 100,
                   label: str | None = None) -> tuple[list[Item], int]: ...

    def labelled_items(self, labels: set[str] | None = None) -> list[Item]: ...

    def count(self) -> int: ...

    def image(self, item_id: int) -> bytes: ...

    def image_path(self, item_id: int) -> Path: ...

    def matching_ids(self, version: str, label: str | None, metadata: Mapping[str, Any] | None) -> np.ndarray:
        """Sorted ids (N,) of items with a `version` vector and the given label / metadata values."""

    def live_version(self) -> str | None: ...

    def set_live_version(self, version: str) -> None: ...

    def versions(self) -> list[str]: ...

    def version_info(self, version: str) -> VersionInfo: ...

    def drop_version(self, version: str) -> None: ...

    def whitening(self, version: str) -> Whitening | None: ...

    def set_whitening(self, version: str, whitening: Whitening | None) -> None: ...

    def set_dba(self, version: str, n: int, alpha: float) -> None: ...

    def vectors(self, version: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found ids (M,), vectors (M,d)) for the given ids."""

    def vector_ids(self, version: str) -> np.ndarray:
        """Sorted ids (N,) that have a `version` vector."""

    def ids_missing_vectors(self, version: str) -> np.ndarray: ...

    def iter_vectors(self, version: str, batch: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def sample_vectors(self, version: str, n: int, seed: int = 0) -> np.ndarray: ...

    def sweep_blobs(self) -> int:
        """Erase image files no item names; returns how many. Callers keep writers out meanwhile."""

    def discard_images(self, hashes: Iterable[str]) -> None:
        """Erase the given images unless an item names them (after a failed add), under the writer."""

    def close(self) -> None: ...


class VectorIndex(Protocol):
    """Searchable vectors with int64 ids and inner-product scores."""

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def ids(self) -> np.ndarray:
        """Sorted ids (N,) of the searchable vectors."""

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Vectors (N, dim) under new ids (N,)."""

    def remove(self, ids: np.ndarray) -> None:
        """Out of search at once; unknown ids ignored."""

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Queries (Q, dim) -> (scores (Q,k'), ids (Q,k')), k' = min(k, candidates), -1 for missing hits."""

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Indexed vectors (N, dim) of present ids (N,)."""
