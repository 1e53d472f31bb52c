"""The gallery: durable items, images and per-model-version vectors, searchable with FAISS.

No torch and no HTTP here: numpy arrays and plain records in and out. `Gallery` is the facade; it
composes an `ItemStore` (`SQLiteItemStore`) and, per model version, a `VectorIndex` (`FaissVectorIndex`).
"""

from index.errors import (
    DimensionMismatch,
    EngineUnavailable,
    GalleryError,
    GalleryLocked,
    GpuUnavailable,
    InvalidFilter,
    InvalidIndexKind,
    InvalidItem,
    InvalidQuery,
    InvalidVectors,
    ItemNotFound,
    MissingVectors,
    NoImage,
    NotEnoughData,
    SnapshotCorrupt,
    StorageCorrupted,
    UnknownVersion,
    VectorNotFound,
    VersionInUse,
    VersionMoved,
)
from index.faiss_index import FaissBackend, FaissVectorIndex
from index.filters import MetadataFilter
from index.gallery import Gallery
from index.kinds import IndexSpec
from index.protocols import ItemStore, VectorBackend, VectorIndex
from index.records import UNSET, Hit, IndexStats, Item, NewItem, VersionInfo
from index.store import SQLiteItemStore

__all__ = [
    "UNSET",
    "DimensionMismatch",
    "EngineUnavailable",
    "FaissBackend",
    "FaissVectorIndex",
    "Gallery",
    "GalleryError",
    "GalleryLocked",
    "GpuUnavailable",
    "Hit",
    "IndexSpec",
    "IndexStats",
    "InvalidFilter",
    "InvalidIndexKind",
    "InvalidItem",
    "InvalidQuery",
    "InvalidVectors",
    "Item",
    "ItemNotFound",
    "ItemStore",
    "MetadataFilter",
    "MissingVectors",
    "NewItem",
    "NoImage",
    "NotEnoughData",
    "SQLiteItemStore",
    "SnapshotCorrupt",
    "StorageCorrupted",
    "UnknownVersion",
    "VectorBackend",
    "VectorIndex",
    "VectorNotFound",
    "VersionInUse",
    "VersionInfo",
    "VersionMoved",
]
