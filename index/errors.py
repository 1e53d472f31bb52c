"""Typed errors of the gallery. Plain exceptions: the service maps them to HTTP codes in one place."""

from __future__ import annotations


class GalleryError(Exception):
    """Base class of every error raised by `index/`."""


class ItemNotFound(GalleryError, LookupError):
    """No item has this id or external id."""


class NoImage(GalleryError, LookupError):
    """The item exists but has no image (its vector was imported without one)."""


class VectorNotFound(GalleryError, LookupError):
    """The item exists but has no vector for this model version."""


class UnknownVersion(GalleryError, LookupError):
    """No vectors were ever stored for this model version (or there is no live version yet)."""


class DimensionMismatch(GalleryError, ValueError):
    """An array has the wrong number of dimensions, rows or columns."""


class InvalidVectors(GalleryError, ValueError):
    """Vectors that are not finite floats, or gallery vectors that are not unit-norm."""


class InvalidItem(GalleryError, ValueError):
    """A new item or an update with a wrong type (metadata not a JSON object, empty image...)."""


class InvalidFilter(GalleryError, ValueError):
    """A metadata filter that is not a flat mapping of string keys to scalar JSON values."""


class InvalidQuery(GalleryError, ValueError):
    """Search parameters out of range (k < 1, negative qe_n...)."""


class InvalidIndexKind(GalleryError, ValueError):
    """An index kind that is neither a known alias nor a valid FAISS factory string."""


class NotEnoughData(GalleryError, ValueError):
    """Too few (labelled) vectors to fit a whitening."""


class VersionInUse(GalleryError, ValueError):
    """The live version cannot be dropped; activate another one first."""


class MissingVectors(GalleryError, ValueError):
    """`add` did not carry vectors for the live version."""


class VersionMoved(GalleryError):
    """Another process made a new model version live in the shared store; this one has not switched yet."""


class GalleryLocked(GalleryError):
    """Another process has this gallery open."""


class GpuUnavailable(GalleryError):
    """`use_gpu="always"` but FAISS sees no GPU."""


class StorageCorrupted(GalleryError):
    """A stored image is missing or does not match its sha256."""


class EngineUnavailable(GalleryError):
    """The database or vector-search server cannot be reached or does not answer in time. Nothing of the
    request was kept; the gallery reconnects by itself once the server answers again."""


class SnapshotCorrupt(GalleryError):
    """A FAISS snapshot file is truncated, altered or from another configuration (it gets rebuilt)."""
