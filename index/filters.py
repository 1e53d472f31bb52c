"""Search filters: `MetadataFilter` (metadata equality, checked once when it is made, frozen and hashable)
and `ItemFilter` (a label and / or a metadata filter: what a search may return); `image_condition`, the
stores' SQL for items with or without an image."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from index.validation import check_filter

Scalar = str | int | float | bool | None


def image_condition(has_image: bool | None, column: str = "sha256") -> str:
    """An SQL condition (SQLite and PostgreSQL alike) on items: those with an image (True), those without
    one (False), or any (None)."""
    return {None: "TRUE", True: f"{column} IS NOT NULL", False: f"{column} IS NULL"}[has_image]


@dataclass(frozen=True)
class MetadataFilter:
    """Items whose metadata value under each key equals the given one (type and value).

    Make it with `MetadataFilter.of(mapping)`, which validates (`InvalidFilter`); the terms are sorted
    by key, so equal filters are equal and hash alike (queries with one filter share a search).
    """

    terms: tuple[tuple[str, Scalar], ...]

    @classmethod
    def of(cls, metadata: Mapping[str, Any] | MetadataFilter | None) -> MetadataFilter | None:
        """The filter of a mapping (None or {} -> None: no filter); a filter is returned as it is."""
        if metadata is None or isinstance(metadata, MetadataFilter):
            return metadata
        check_filter(metadata)
        return cls(tuple(sorted(metadata.items()))) if metadata else None

    def __iter__(self) -> Iterator[tuple[str, Scalar]]:
        return iter(self.terms)


@dataclass(frozen=True)
class ItemFilter:
    """Items whose label equals `label` (when it is not None) and whose metadata matches `metadata`.

    A server-side index that evaluates it itself (`FilteringIndex`) gets it in place of the matching ids.
    """

    label: str | None = None
    metadata: MetadataFilter | None = None

    @classmethod
    def of(cls, label: str | None,
           metadata: Mapping[str, Any] | MetadataFilter | None) -> ItemFilter | None:
        """The filter of a search's arguments; None when neither filters."""
        terms = MetadataFilter.of(metadata)
        return cls(label, terms) if label is not None or terms is not None else None
