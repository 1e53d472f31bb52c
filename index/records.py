"""Plain records exchanged with the gallery: no numpy, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UNSET: Any = object()  # "leave unchanged" in updates, where None means "clear"


@dataclass(frozen=True)
class Item:
    """One stored gallery item. `id` is the SQLite row id and the FAISS id; ids are never reused.
    `sha256` names its image; None when it has none (its vector was imported without one)."""

    id: int
    external_id: str | None
    label: str | None
    metadata: dict[str, Any]
    sha256: str | None
    created_at: float

    @property
    def has_image(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class NewItem:
    """An item to add: the original image bytes (None: an imported vector without an image) and what the
    client says about it."""

    image: bytes | None
    external_id: str | None = None
    label: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One search result: the item and its inner-product score (cosine for unit vectors)."""

    item: Item
    score: float


@dataclass(frozen=True)
class VersionInfo:
    """What is stored about one model version.

    `dim` is the model's embedding width; `whitening` is "learned", "pca" or None;
    `dba_n` > 0 means database-side augmentation with `dba_n` neighbours and weight exponent `dba_alpha`.
    """

    name: str
    dim: int
    created_at: float
    whitening: str | None = None
    dba_n: int = 0
    dba_alpha: float = 3.0


@dataclass(frozen=True)
class IndexStats:
    """The FAISS index serving a version: its factory string ("Flat" while a trained kind waits for
    enough vectors), searchable vectors, tombstones awaiting a rebuild."""

    version: str
    kind: str
    factory: str
    vectors: int
    tombstones: int
    exact_fallback: bool
    coarse_dim: int | None = None  # a prefix kind's coarse index dimension
