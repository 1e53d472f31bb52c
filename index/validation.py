"""Checks at the boundary of the gallery: arrays, item metadata and search arguments, with typed errors."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from numbers import Integral
from typing import Any

import numpy as np

from index.errors import DimensionMismatch, InvalidFilter, InvalidItem, InvalidQuery, InvalidVectors
from index.records import UNSET

UNIT_TOLERANCE = 1e-2  # stored vectors must have |norm - 1| below this
MAX_METADATA_DEPTH = 16  # the item's object is level 1
MAX_METADATA_BYTES = 64 * 1024  # canonical JSON, UTF-8
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # SQLite integers


def check_vectors(vectors: np.ndarray, rows: int | None = None, *, unit: bool = False,
                  first_row: int = 0) -> np.ndarray:
    """Validate a (N,d) float array (N = rows if given) and return it as C-contiguous float32. An error
    names the first bad row, numbered from `first_row` (for a chunk of a larger array)."""
    array = np.asarray(vectors)
    if array.ndim != 2 or (rows is not None and array.shape[0] != rows):
        expected = f"({rows},d)" if rows is not None else "(N,d)"
        raise DimensionMismatch(f"expected vectors of shape {expected}, got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidVectors(f"vectors must be floats, got {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise InvalidVectors(f"vectors contain NaN or infinity (row {first_row + int(np.argmin(finite))})")
    if unit and len(array):
        norms = np.linalg.norm(array, axis=1)
        worst = int(np.argmax(np.abs(norms - 1)))
        if abs(float(norms[worst]) - 1) > UNIT_TOLERANCE:
            raise InvalidVectors(f"gallery vectors must be L2-normalised (row {first_row + worst} has norm "
                                 f"{float(norms[worst]):.4g}; |norm - 1| must be below {UNIT_TOLERANCE})")
    return array


def check_search(k: int, qe_n: int, qe_alpha: float) -> None:
    """k >= 1 and qe_n >= 0 integers, qe_alpha finite and >= 0; InvalidQuery otherwise."""
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise InvalidQuery(f"k must be a positive integer, got {k!r}")
    if isinstance(qe_n, bool) or not isinstance(qe_n, Integral) or qe_n < 0:
        raise InvalidQuery(f"qe_n must be an integer >= 0, got {qe_n!r}")
    if not isinstance(qe_alpha, float | Integral) or not math.isfinite(qe_alpha) or qe_alpha < 0:
        raise InvalidQuery(f"qe_alpha must be finite and >= 0, got {qe_alpha!r}")


def check_metadata(metadata: object) -> str:
    """Item metadata -> its canonical JSON (sorted keys, no spaces), or InvalidItem.

    A JSON object with string keys, nested at most `MAX_METADATA_DEPTH` levels, of strings, booleans,
    nulls, 64-bit integers and finite floats, at most `MAX_METADATA_BYTES` once serialised.
    """
    if not isinstance(metadata, Mapping):
        raise InvalidItem("metadata must be a JSON object with string keys")
    pending: list[tuple[object, int, str]] = [(metadata, 1, "metadata")]
    while pending:  # iterative: a deep value must not exhaust the stack
        value, depth, where = pending.pop()
        if isinstance(value, Mapping | list | tuple):
            if depth > MAX_METADATA_DEPTH:
                raise InvalidItem(f"{where}: metadata is nested more than {MAX_METADATA_DEPTH} levels deep")
            if isinstance(value, Mapping):
                for key, child in value.items():
                    if not isinstance(key, str):
                        raise InvalidItem(f"{where}: metadata keys must be strings, got {key!r}")
                    pending.append((child, depth + 1, f"{where}.{key}"))
            else:
                pending.extend((child, depth + 1, f"{where}[{i}]") for i, child in enumerate(value))
        else:
            _check_scalar(value, where, InvalidItem)
    try:
        text = json.dumps(dict(metadata), allow_nan=False, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidItem(f"metadata is not JSON-serialisable: {exc}") from exc
    size = len(text.encode())
    if size > MAX_METADATA_BYTES:
        raise InvalidItem(f"metadata is {size} bytes as JSON, more than the limit of {MAX_METADATA_BYTES}")
    return text


def _check_scalar(value: object, where: str, error: type[ValueError]) -> None:
    """A JSON scalar the store can hold: str, bool, None, a 64-bit integer or a finite float."""
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, Integral):
        if not INT64_MIN <= value <= INT64_MAX:
            raise error(f"{where}: the integer {value} does not fit in 64 bits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise error(f"{where}: {value} is not a finite number")
        return
    raise error(f"{where}: {type(value).__name__} is not a JSON value")


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
        if isinstance(value, Mapping | list | tuple):
            raise InvalidFilter(f"metadata filter on {key!r} must be a string, number, boolean or null")
        _check_scalar(value, f"metadata filter on {key!r}", InvalidFilter)


def check_text(value: object, name: str) -> str | None:
    """A label or external id: a string or None (InvalidItem otherwise)."""
    if value is not None and not isinstance(value, str):
        raise InvalidItem(f"{name} must be a string or None, got {type(value).__name__}")
    return value


def item_changes(label: object, metadata: object) -> dict[str, Any]:
    """The columns an update sets (`UNSET` leaves one unchanged), checked; metadata as its JSON text."""
    changes: dict[str, Any] = {}
    if label is not UNSET:
        changes["label"] = check_text(label, "label")
    if metadata is not UNSET:
        changes["metadata"] = check_metadata(metadata)
    return changes
