"""Checks at the boundary of the gallery: arrays and search arguments, with typed errors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral
from typing import Any

import numpy as np

from index.errors import DimensionMismatch, InvalidFilter, InvalidQuery, InvalidVectors

UNIT_TOLERANCE = 1e-2  # stored vectors must have |norm - 1| below this


def check_vectors(vectors: np.ndarray, rows: int | None = None, *, unit: bool = False) -> np.ndarray:
    """Validate a (N,d) float array (N = rows if given) and return it as C-contiguous float32."""
    array = np.asarray(vectors)
    if array.ndim != 2 or (rows is not None and array.shape[0] != rows):
        expected = f"({rows},d)" if rows is not None else "(N,d)"
        raise DimensionMismatch(f"expected vectors of shape {expected}, got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidVectors(f"vectors must be floats, got {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InvalidVectors("vectors contain NaN or infinity")
    if unit and len(array) and float(np.abs(np.linalg.norm(array, axis=1) - 1).max()) > UNIT_TOLERANCE:
        raise InvalidVectors("gallery vectors must be L2-normalised")
    return array


def check_search(k: int, qe_n: int, qe_alpha: float) -> None:
    """k >= 1 and qe_n >= 0 integers, qe_alpha finite and >= 0; InvalidQuery otherwise."""
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise InvalidQuery(f"k must be a positive integer, got {k!r}")
    if isinstance(qe_n, bool) or not isinstance(qe_n, Integral) or qe_n < 0:
        raise InvalidQuery(f"qe_n must be an integer >= 0, got {qe_n!r}")
    if not isinstance(qe_alpha, float | Integral) or not math.isfinite(qe_alpha) or qe_alpha < 0:
        raise InvalidQuery(f"qe_alpha must be finite and >= 0, got {qe_alpha!r}")


def check_filter(metadata: Mapping[str, Any] | None) -> None:
    """A metadata equality filter: non-empty string keys without '"', values str, finite number, bool
    or None; InvalidFilter otherwise."""
    if metadata is None:
        return
    if not isinstance(metadata, Mapping):
        raise InvalidFilter("a metadata filter must be a mapping of keys to values")
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or '"' in key:
            raise InvalidFilter(f"invalid metadata key {key!r}")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (value is None or isinstance(value, bool | str) or (number and math.isfinite(value))):
            raise InvalidFilter(f"metadata filter on {key!r} must be a string, number, boolean or null")
