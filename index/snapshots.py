"""FAISS snapshot files: written atomically (temp file, fsync, rename), checked on load.

Layout: MAGIC | FAISS payload (faiss.write_index) | JSON trailer | trailer length (8 bytes LE) | END.
The trailer holds the payload's length and sha256 and the caller's metadata; any mismatch, a missing
file or a truncated one raises SnapshotCorrupt, after which the caller rebuilds from the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import faiss

from index.blobs import fsync_directory
from index.errors import SnapshotCorrupt

MAGIC = b"CGDFAISS1\n"
END = b"CGDEND01"
_LENGTH = struct.Struct("<Q")
_READ_CHUNK = 1 << 24


def write_snapshot(path: Path, index: faiss.Index, meta: dict[str, Any]) -> None:
    """Atomically replace `path` with `index` and `meta` (JSON-serialisable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as handle:
            handle.write(MAGIC)
            written = 0

            def sink(chunk: bytes) -> int:
                nonlocal written
                handle.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                return len(chunk)

            faiss.write_index(index, faiss.PyCallbackIOWriter(sink))
            trailer = json.dumps({"meta": meta, "payload_bytes": written,
                                  "payload_sha256": digest.hexdigest()}).encode()
            handle.write(trailer + _LENGTH.pack(len(trailer)) + END)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def _trailer(handle: BinaryIO, size: int) -> dict[str, Any]:
    tail = len(END) + _LENGTH.size
    if size < len(MAGIC) + tail or handle.read(len(MAGIC)) != MAGIC:
        raise SnapshotCorrupt("not a snapshot file")
    handle.seek(size - tail)
    (length,) = _LENGTH.unpack(handle.read(_LENGTH.size))
    if handle.read(len(END)) != END or length > size - len(MAGIC) - tail:
        raise SnapshotCorrupt("snapshot trailer is damaged")
    handle.seek(size - tail - length)
    try:
        trailer = json.loads(handle.read(length))
    except ValueError as exc:
        raise SnapshotCorrupt("snapshot trailer is not JSON") from exc
    if trailer.get("payload_bytes") != size - len(MAGIC) - tail - length:
        raise SnapshotCorrupt("snapshot payload has the wrong length")
    return trailer


def read_snapshot(path: Path) -> tuple[faiss.Index, dict[str, Any]]:
    """(index, meta) from a snapshot whose payload matches its sha256."""
    try:
        with open(path, "rb") as handle:
            trailer = _trailer(handle, os.fstat(handle.fileno()).st_size)
            payload_bytes = trailer["payload_bytes"]
            handle.seek(len(MAGIC))
            digest = hashlib.sha256()
            remaining = payload_bytes
            while remaining:
                chunk = handle.read(min(_READ_CHUNK, remaining))
                if not chunk:
                    raise SnapshotCorrupt("snapshot payload is truncated")
                digest.update(chunk)
                remaining -= len(chunk)
            if digest.hexdigest() != trailer["payload_sha256"]:
                raise SnapshotCorrupt("snapshot payload does not match its sha256")
            handle.seek(len(MAGIC))
            remaining = payload_bytes

            def source(wanted: int) -> bytes:
                nonlocal remaining
                chunk = handle.read(min(wanted, remaining))
                remaining -= len(chunk)
                return chunk

            index = faiss.read_index(faiss.PyCallbackIOReader(source))
    except OSError as exc:
        raise SnapshotCorrupt(f"cannot read {path}: {exc}") from exc
    except RuntimeError as exc:  # FAISS refused the payload
        raise SnapshotCorrupt(f"FAISS cannot read {path}: {exc}") from exc
    return index, trailer["meta"]
