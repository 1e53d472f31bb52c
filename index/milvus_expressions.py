"""What a Milvus collection holds of each item's label and metadata, and filters as Milvus expressions.

The store compares metadata by type and value (1 equals 1.0; it equals neither true nor "1"; null
equals only null, not a missing key). A Milvus JSON field compares true == 1, and its `is null` also
matches a missing key, so the collection holds the filterable metadata (top-level scalars) in a JSON
field `meta` split by type: `{"s": {key: string}, "n": {key: number}, "b": {key: bool}, "z": {key: true
for null}}`, and a filter term becomes a comparison within its type's object. Numbers beyond +-2^53 are
left out (Milvus may compare them as doubles), and so is an item whose label or metadata does not fit
(`LABEL_BYTES`, `META_BYTES`): the row is marked `partial` and filters go as id lists while such a row
exists. Every value enters an expression as a quoted, escaped literal (`quoted`) or a number formatted
from a Python int or float: nothing from a client is concatenated unescaped.
"""

from __future__ import annotations

import json
from typing import Any

from index.filters import ItemFilter, Scalar
from index.records import Item

LABEL_BYTES = 65_535  # a VARCHAR field's largest max_length
META_BYTES = 60_000  # below Milvus's 65,536-byte limit for a JSON value
EXACT_INTEGERS = 2**53  # numbers compared exactly in any engine (doubles hold every integer up to it)
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})

Attributes = tuple[str | None, dict[str, dict[str, Any]], bool]  # (label, meta, partial)


class UnsupportedFilter(ValueError):
    """A filter that has no exact Milvus expression; the reason is the message."""


def held_attributes(item: Item | None) -> Attributes:
    """(label, meta, partial): what the collection holds of an item (None: a deleted one, nothing)."""
    if item is None:
        return None, {}, False
    meta: dict[str, dict[str, Any]] = {}
    for key, value in item.metadata.items():
        group = _group(value)
        if group is not None:
            meta.setdefault(group, {})[key] = True if value is None else value
    label_bytes = len(item.label.encode()) if item.label is not None else 0
    meta_bytes = len(json.dumps(meta, separators=(",", ":")).encode())
    if label_bytes > LABEL_BYTES or meta_bytes > META_BYTES:
        return None, {}, True
    return item.label, meta, False


def _group(value: object) -> str | None:
    """The typed object a metadata value goes into; None for one no filter can match exactly."""
    if value is None:
        return "z"
    if isinstance(value, bool):
        return "b"
    if isinstance(value, str):
        return "s"
    if isinstance(value, int | float) and abs(value) <= EXACT_INTEGERS:
        return "n"
    return None


def quoted(text: str) -> str:
    """`text` as a double-quoted Milvus string literal: backslash, double quote, newline, carriage return
    and tab escaped (the escapes both Milvus's grammar and Milvus Lite's parser read); other characters,
    control characters included, as they are (both parsers take them raw, and neither reads \\x or
    \\u escapes alike)."""
    return '"' + text.translate(_ESCAPES) + '"'


def _literal(value: Scalar) -> str:
    """A filter value as an expression literal (null is held as true in the "z" object)."""
    if isinstance(value, bool) or value is None:
        return "false" if value is False else "true"
    if isinstance(value, str):
        return quoted(value)
    return str(int(value)) if isinstance(value, int) else repr(float(value))


def expression(where: ItemFilter) -> str:
    """The Milvus boolean expression of a filter; UnsupportedFilter when there is no exact one."""
    clauses = []
    if where.label is not None:
        if len(where.label.encode()) > LABEL_BYTES:
            raise UnsupportedFilter(f"a label longer than {LABEL_BYTES} bytes is not held in Milvus")
        clauses.append(f"label == {quoted(where.label)}")
    for key, value in where.metadata or ():
        group = _group(value)
        if group is None:
            raise UnsupportedFilter(f"the number {value!r} (metadata {key!r}) is beyond +-2^53, which Milvus "
                                    "may compare as a double")
        clauses.append(f"meta[{quoted(group)}][{quoted(key)}] == {_literal(value)}")
    return " and ".join(clauses)
