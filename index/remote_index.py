"""What the server-side vector indexes (pgvector, Milvus) share: pointer files, ids, kinds, short answers.

A server-side index lives in a table or collection of its own (`cgd_vectors_<hex>`); a build makes a
new one while the old one serves. Its "snapshot" is a pointer file at the registry's snapshot path
naming that table or collection and the caller's meta (written atomically); a missing or stale pointer
makes the registry rebuild from the store, and tables or collections no pointer names (left by a crash
mid-build) are dropped when the backend opens. Replicas of the service share one server but each keeps its
own indexes (pointers in its own folder), so their names carry the replica's prefix (`name_prefix`) and a
backend drops only leftovers of its own. `ServerIndex` is what both index classes share: the ids
held in memory, the checks of their arguments, and the mark left by a change the server did not complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.blobs import fsync_directory
from index.errors import DimensionMismatch, InvalidIndexKind, SnapshotCorrupt

NAME_PREFIX = "cgd_vectors_"
POINTER_SUFFIX = ".index"


def name_prefix(replica: str | None) -> str:
    """The prefix of the tables / collections one replica makes (`NAME_PREFIX` alone for a gallery opened
    by one process); a fixed-length hash, so that no replica's prefix starts another's."""
    if replica is None:
        return NAME_PREFIX
    return f"{NAME_PREFIX}r{hashlib.sha256(replica.encode()).hexdigest()[:8]}_"


def owned(name: str, prefix: str) -> bool:
    """Whether a table / collection name was made with `prefix`: a name is its prefix and 16 hex digits,
    so names of the one-process prefix and of replicas' never match each other's."""
    return name.startswith(prefix) and len(name) == len(prefix) + 16


def new_name(prefix: str = NAME_PREFIX) -> str:
    """A fresh table / collection name (letters, digits and underscores only)."""
    return prefix + uuid.uuid4().hex[:16]


def write_pointer(path: Path, name: str, meta: Mapping[str, Any]) -> None:
    """Atomically record that `name` holds the index saved with `meta`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as handle:
            json.dump({"name": name, "meta": dict(meta)}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def read_pointer(path: Path) -> tuple[str, dict[str, Any]]:
    """(name, meta) from a pointer file; SnapshotCorrupt if it is missing or damaged."""
    try:
        pointer = json.loads(path.read_text())
        name, meta = pointer["name"], pointer["meta"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SnapshotCorrupt(f"cannot read the index pointer {path}: {exc}") from exc
    if not isinstance(name, str) or not name.startswith(NAME_PREFIX) or not name.isidentifier():
        raise SnapshotCorrupt(f"{path} names no index table or collection")
    return name, meta


def named_by_pointers(directory: Path) -> set[str]:
    """The tables / collections the pointer files in `directory` name."""
    named = set()
    for path in directory.glob(f"*{POINTER_SUFFIX}") if directory.is_dir() else ():
        try:
            named.add(read_pointer(path)[0])
        except SnapshotCorrupt:
            continue
    return named


def choose_kind(kind: str, kinds: Mapping[str, Any], engine: str) -> tuple[str, Any]:
    """(canonical name, parameters) of a configured kind, case-insensitive; InvalidIndexKind listing the
    valid ones otherwise."""
    for name, parameters in kinds.items():
        if isinstance(kind, str) and kind.strip().lower() == name.lower():
            return name, parameters
    raise InvalidIndexKind(f"index kind {kind!r} is not one the {engine} backend builds; "
                           f"valid CGD_INDEX_KIND values: {', '.join(kinds)}")


@dataclass
class SortedIds:
    """The ids an index holds, kept in memory (sorted int64), so that counts and filters cost no query."""

    array: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray | list[int]) -> SortedIds:
        return cls(np.unique(np.asarray(ids, dtype=np.int64)))

    def __len__(self) -> int:
        return len(self.array)

    def add(self, ids: np.ndarray) -> None:
        self.array = np.union1d(self.array, np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> np.ndarray:
        """Drop the ids present among `ids`; returns them (sorted)."""
        present = self.present(ids)
        if len(present):
            self.array = np.setdiff1d(self.array, present, assume_unique=True)
        return present

    def present(self, ids: np.ndarray) -> np.ndarray:
        """The sorted unique ids among `ids` held here."""
        return np.intersect1d(self.array, np.asarray(ids, dtype=np.int64), assume_unique=False)


def pad_hits(rows: list[list[tuple[int, float]]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query (id, score) lists, best first -> (scores (Q,k), ids (Q,k)), padded with -1 ids."""
    scores = np.zeros((len(rows), k), dtype=np.float32)
    ids = np.full((len(rows), k), -1, dtype=np.int64)
    for row, hits in enumerate(rows):
        for column, (item_id, score) in enumerate(hits[:k]):
            ids[row, column], scores[row, column] = item_id, score
    return scores, ids


def exact_top_k(queries: np.ndarray, k: int, ids: np.ndarray,
                vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k by inner product of queries (Q, dim) among vectors (N, dim) with ids (N,): (scores
    (Q,k'), ids (Q,k')), k' = min(k, N), best first."""
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


class ServerIndex:
    """The shared part of a server-side `VectorIndex` (pgvector, Milvus): ids, checks, out-of-step mark.

    A subclass sets `kind`, `factory` and the server calls (add, remove, search, reconstruct, save,
    release); a change it makes on the server goes inside `changing()`.
    """

    tombstones = 0  # removal is physical
    exact_fallback = False

    def __init__(self, dim: int, ids: SortedIds) -> None:
        self._dim = dim
        self._ids = ids
        self.dirty = True
        self._out_of_step = False  # an add or remove failed half-way: rebuild from the store

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        return self._ids.array

    def checked(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """`vectors` as C-contiguous float32 (N, dim); DimensionMismatch for another shape, or for a count
        that differs from `ids`'."""
        if vectors.ndim != 2 or vectors.shape[1] != self._dim:
            raise DimensionMismatch(f"expected (N,{self._dim}) vectors, got {vectors.shape}")
        if ids is not None and len(ids) != len(vectors):
            raise DimensionMismatch(f"{len(ids)} ids for {len(vectors)} vectors")
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def candidates(self, allowed: np.ndarray | None) -> tuple[np.ndarray | None, int]:
        """(the allowed ids held here, sorted, or None for all; how many can be hit)."""
        if allowed is None:
            return None, len(self._ids)
        present = self._ids.present(allowed)
        return present, len(present)

    def maintenance(self) -> str | None:
        """"resync" after an add or remove the server did not complete (the store has the truth)."""
        return "resync" if self._out_of_step else None

    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        """Around a change on the server: if it fails, this index may differ from the store."""
        try:
            yield
        except BaseException:
            self._out_of_step = True
            raise
