"""`FullVectors`: float16 rows (N, dim) in a file, looked up by item id.

The re-ranking side of a coarse-to-fine index: rows are appended to the file and a search reads the
rows it re-ranks with pread, so the full vectors stay on disk (and in the kernel's page cache while
memory allows), out of the process's resident memory. The file is opened once and stays open until
the object is collected (concurrent searches read it with positional reads). Rows are appended and
never rewritten; a removed id's row is only forgotten (it is reclaimed when the index is rebuilt).
Without a directory (or when the file cannot be made) the rows live in memory. Not thread-safe for
writers: the gallery serialises them and excludes them from searches.

A saved state is the file's first `rows` rows plus a row -> id array (`.rowids.npy`, -1 for removed):
rows below `rows` are fsynced before the snapshot naming them is written, so a crash after a save can
leave rows beyond it, never change one it names.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
import weakref
from pathlib import Path

import faiss
import numpy as np

from index.errors import SnapshotCorrupt
from index.faiss_index import omp_threads

LOG = logging.getLogger(__name__)

DTYPE = np.dtype("<f2")
BUILDING_PREFIX = ".building-"
VECTORS_SUFFIX = ".vectors"
ROW_IDS_SUFFIX = ".rowids.npy"
_MIN_CAPACITY = 1024
DENSE_IDS = 4  # ids are looked up in an id -> row table while the largest is below 4x their number


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


@functools.lru_cache(maxsize=8)
def _fp16_decoder(dim: int) -> faiss.IndexScalarQuantizer:
    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)


def to_float32(halves: np.ndarray) -> np.ndarray:
    """float32 rows (N, dim) of float16 rows (N, dim), converted by FAISS's vectorised fp16 decoder
    (NumPy's cast of 120 rows of 1536 took 0.3 ms, more than the rest of a re-ranking)."""
    if not len(halves):
        return np.zeros(halves.shape, np.float32)
    codes = np.ascontiguousarray(halves, dtype=DTYPE).view(np.uint8)
    return _fp16_decoder(halves.shape[1]).sa_decode(codes)


def best_rows(query: np.ndarray, halves: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (k',), positions (k',)) of the k' = min(k, N) float16 rows (N, dim) with the largest inner
    product with `query` (dim,), best first. FAISS's float16 scanner computes them on the float16 values
    without converting the rows (40 rows of 1536: 16 us, against 100 us to convert, multiply and sort)."""
    k = min(k, len(halves))
    if k == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    scanner = faiss.IndexScalarQuantizer(halves.shape[1], faiss.ScalarQuantizer.QT_fp16,
                                         faiss.METRIC_INNER_PRODUCT)
    scanner.add_sa_codes(np.ascontiguousarray(halves, dtype=DTYPE).view(np.uint8))
    with omp_threads(1):  # one query: a second OpenMP thread would only add a barrier
        scores, positions = scanner.search(np.ascontiguousarray(query, dtype=np.float32)[None, :], k)
    return scores[0], positions[0]


class FullVectors:
    """Append-only float16 rows with an id -> row lookup."""

    def __init__(self, dim: int, path: Path | None, capacity: int, rows: int = 0,
                 row_ids: np.ndarray | None = None) -> None:
        self.dim = dim
        self.path = path
        self._rows = rows
        self._row_ids = np.full(max(capacity, rows, _MIN_CAPACITY), -1, np.int64)
        if row_ids is not None:
            self._row_ids[:rows] = row_ids
        self._fd: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_RDWR)
            weakref.finalize(self, os.close, self._fd)
        self._data = self._map(len(self._row_ids))
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._table: np.ndarray | None = None
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def create(cls, dim: int, capacity: int, directory: Path | None) -> FullVectors:
        """Empty rows in a new file under `directory` (deleted when dropped unsaved), else in memory."""
        path = None
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                path = directory / f"{BUILDING_PREFIX}{uuid.uuid4().hex}{VECTORS_SUFFIX}"
                path.touch()
            except OSError as exc:
                LOG.warning("full vectors kept in memory (cannot write %s: %s)", directory, exc)
                path = None
        vectors = cls(dim, path, capacity)
        if path is not None:
            vectors._finalizer = weakref.finalize(vectors, _unlink, path)
        return vectors

    @classmethod
    def load(cls, path: Path, row_ids_path: Path, dim: int, rows: int) -> FullVectors:
        """The saved state; SnapshotCorrupt if a file is missing or shorter than the snapshot says."""
        try:
            row_ids = np.load(row_ids_path, allow_pickle=False)
            size = path.stat().st_size
        except (OSError, ValueError) as exc:
            raise SnapshotCorrupt(f"cannot read the full vectors {path}: {exc}") from exc
        if row_ids.shape != (rows,) or row_ids.dtype != np.int64 or size < rows * dim * DTYPE.itemsize:
            raise SnapshotCorrupt(f"the full vectors {path} do not match their snapshot")
        return cls(dim, path, rows, rows, row_ids)

    def _map(self, capacity: int) -> np.ndarray | None:
        """Room for `capacity` rows: a grown array in memory, or the file grown (None)."""
        if self.path is None:
            grown = np.zeros((capacity, self.dim), DTYPE)
            old = getattr(self, "_data", None)
            if old is not None:
                grown[:self._rows] = old[:self._rows]
            return grown
        needed = capacity * self.dim * DTYPE.itemsize
        if os.fstat(self._fd).st_size < needed:
            os.ftruncate(self._fd, needed)
        return None

    def __len__(self) -> int:
        return len(self._lookup()[0])

    @property
    def rows(self) -> int:
        """Rows written, removed ones included."""
        return self._rows

    @property
    def dead(self) -> int:
        """Rows of removed ids (on disk until a rebuild)."""
        return self._rows - len(self)

    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted ids, their rows), cached until the next change that breaks the order."""
        if self._sorted is None:
            live = np.flatnonzero(self._row_ids[:self._rows] >= 0)
            order = np.argsort(self._row_ids[live], kind="stable")
            self._sorted = self._row_ids[live][order], live[order]
        return self._sorted

    def _id_table(self) -> np.ndarray | None:
        """id -> row (-1: none) for the ids below its length (twice the largest id when made), kept while
        the ids are dense (gallery ids count up); else None and lookups search the sorted ids (a binary
        search took 0.12 ms for 120 ids among 1M, 10x the table)."""
        if self._table is None:
            known, rows = self._lookup()
            if len(known) and known[0] >= 0 and known[-1] < DENSE_IDS * len(known) + _MIN_CAPACITY:
                self._table = np.full(2 * (int(known[-1]) + 1), -1, np.int64)
                self._table[known] = rows
        return self._table

    def ids(self) -> np.ndarray:
        """Sorted ids (N,) that have a row."""
        return self._lookup()[0]

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Rows for new ids (N,) with vectors (N, dim)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        if self._rows + len(ids) > len(self._row_ids):
            capacity = max(2 * len(self._row_ids), self._rows + len(ids))
            self._data = self._map(capacity)
            grown = np.full(capacity, -1, np.int64)
            grown[:self._rows] = self._row_ids[:self._rows]
            self._row_ids = grown
        start = self._rows
        if self._data is not None:
            self._data[start:start + len(ids)] = vectors
        else:
            data = np.ascontiguousarray(vectors, dtype=DTYPE).tobytes()
            if os.pwrite(self._fd, data, start * self.dim * DTYPE.itemsize) != len(data):
                raise OSError(f"short write to {self.path}")
        self._row_ids[start:start + len(ids)] = ids
        self._rows += len(ids)
        if self._table is not None:
            if ids.min() >= 0 and ids.max() < len(self._table):
                self._table[ids] = np.arange(start, self._rows)
            else:
                self._table = None  # made again, larger, at the next lookup
        if self._sorted is not None:
            known, rows = self._sorted
            if np.all(np.diff(ids) > 0) and (not len(known) or ids[0] > known[-1]):  # ids come in order
                added = np.arange(start, self._rows)
                self._sorted = np.concatenate([known, ids]), np.concatenate([rows, added])
            else:
                self._sorted = None

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows (N,) of ids (N,); -1 for ids without one."""
        ids = np.asarray(ids, dtype=np.int64)
        table = self._id_table()
        if table is not None:
            inside = (ids >= 0) & (ids < len(table))
            return np.where(inside, table[np.where(inside, ids, 0)], -1)
        known, rows = self._lookup()
        if not len(known):
            return np.full(ids.shape, -1, np.int64)
        positions = np.minimum(np.searchsorted(known, ids), len(known) - 1)
        return np.where(known[positions] == ids, rows[positions], -1)

    def remove(self, ids: np.ndarray) -> int:
        """Forget the rows of ids (N,); returns how many had one."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = self.rows_of(ids)
        present = rows >= 0
        if present.any():
            self._row_ids[rows[present]] = -1
            self._sorted = None
            if self._table is not None:
                self._table[ids[present]] = -1
        return int(present.sum())

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float16 rows (N, dim) of rows (N,) (all >= 0). From the file, each row is one pread: a memory
        map would grow the process's resident memory by the neighbouring pages the kernel maps at each
        fault (fault-around), up to the whole file after a few thousand rows."""
        if self._data is not None:
            return self._data[rows]
        size = self.dim * DTYPE.itemsize
        data = b"".join([os.pread(self._fd, size, offset) for offset in (rows * size).tolist()])
        if len(data) != len(rows) * size:
            raise OSError(f"{self.path} is shorter than the rows read")
        return np.frombuffer(data, DTYPE).reshape(len(rows), self.dim)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors (..., dim) of rows (...) (all >= 0)."""
        return to_float32(self.read(rows.reshape(-1))).reshape(*rows.shape, self.dim)

    def save(self, snapshot: Path) -> tuple[str, str]:
        """Flush the rows and write the row ids next to `snapshot`; returns the two file names (the
        vectors file is renamed next to it the first time)."""
        if self.path is None:
            raise OSError("the full vectors are in memory (their directory could not be written)")
        os.fsync(self._fd)
        if self.path.name.startswith(BUILDING_PREFIX):
            named = snapshot.with_name(f"{snapshot.name}.{uuid.uuid4().hex}{VECTORS_SUFFIX}")
            os.replace(self.path, named)
            self.path = named
            if self._finalizer is not None:
                self._finalizer.detach()
        row_ids = snapshot.with_name(f"{snapshot.name}.{uuid.uuid4().hex}{ROW_IDS_SUFFIX}")
        with open(row_ids, "wb") as handle:
            np.save(handle, self._row_ids[:self._rows])
            handle.flush()
            os.fsync(handle.fileno())
        return self.path.name, row_ids.name


def remove_stale_files(directory: Path, snapshot: Path, keep: set[str]) -> None:
    """Delete the files saved next to `snapshot` that it no longer names."""
    for path in directory.glob(f"{snapshot.name}.*"):
        if path.name not in keep and path.name.endswith((VECTORS_SUFFIX, ROW_IDS_SUFFIX)):
            path.unlink(missing_ok=True)


def sweep_orphans(directory: Path) -> int:
    """At open, before any index is loaded: delete unsaved build files and the files of snapshots that
    no longer exist (a dropped version). Returns how many were deleted."""
    deleted = 0
    if not directory.is_dir():
        return 0
    for path in directory.iterdir():
        name = path.name
        if not name.endswith((VECTORS_SUFFIX, ROW_IDS_SUFFIX)):
            continue
        owner = name.split(".index.", 1)[0] + ".index" if ".index." in name else None
        if name.startswith(BUILDING_PREFIX) or owner is None or not (directory / owner).exists():
            path.unlink(missing_ok=True)
            deleted += 1
    return deleted
