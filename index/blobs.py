"""Content-addressed image bytes on disk: `root/ab/cdef...` named by sha256, written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from index.errors import InvalidItem, NoImage, StorageCorrupted
from index.records import Item

LOG = logging.getLogger(__name__)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_sha256(item: Item) -> str:
    """The hash that names the item's image; NoImage if it has none (imported as a vector alone)."""
    if item.sha256 is None:
        raise NoImage(f"item {item.id} has no image")
    return item.sha256


def fsync_directory(path: Path) -> None:
    """Make a rename or unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Immutable blobs keyed by their sha256. Writes go to `root/.tmp`, are fsynced, then renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():  # a write interrupted by a crash
            leftover.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:]

    def put_many(self, blobs: Iterable[tuple[str, bytes]]) -> None:
        """Durably store each (sha256, data) not yet present; the caller computed the hashes.

        All files are written first and fsynced after, so that one journal commit covers most of them.
        On any failure (a full disk...), the files this call wrote are erased again before it raises.
        """
        pending: dict[Path, Path] = {}
        placed: list[Path] = []
        try:
            for sha256, data in blobs:
                final = self.path(sha256)
                if final in pending or final.exists():
                    continue
                tmp = self._tmp / uuid.uuid4().hex
                pending[final] = tmp
                tmp.write_bytes(data)
            for tmp in pending.values():
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for final, tmp in pending.items():
                final.parent.mkdir(exist_ok=True)
                os.replace(tmp, final)
                placed.append(final)
            for directory in {final.parent for final in pending}:
                fsync_directory(directory)
        except BaseException:
            for path in (*pending.values(), *placed):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            raise

    def put_images(self, images: Sequence[bytes]) -> list[str]:
        """Durably store image bytes (InvalidItem for an empty or non-bytes one); returns their sha256s."""
        for image in images:
            if not isinstance(image, bytes | bytearray | memoryview) or len(image) == 0:
                raise InvalidItem("an item's image must be non-empty bytes")
        hashes = [sha256_hex(bytes(image)) for image in images]
        self.put_many(zip(hashes, (bytes(image) for image in images), strict=True))
        return hashes

    def sweep(self, referenced: set[str]) -> int:
        """Erase every blob whose hash is not in `referenced`; returns how many."""
        orphans = [sha256 for sha256 in self.hashes() if sha256 not in referenced]
        for sha256 in orphans:
            self.delete(sha256)
        return len(orphans)

    def get(self, sha256: str) -> bytes:
        """The bytes of a blob, checked against its hash."""
        try:
            data = self.path(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise StorageCorrupted(f"image {sha256} is missing from {self.root}") from exc
        if sha256_hex(data) != sha256:
            raise StorageCorrupted(f"image {sha256} does not match its hash")
        return data

    def delete(self, sha256: str) -> None:
        """Erase a blob if it is there. A blob that cannot be erased (read-only disk) is only logged: an
        orphan is harmless, and `sweep_blobs` erases it later."""
        try:
            self.path(sha256).unlink(missing_ok=True)
        except OSError as exc:
            LOG.warning("cannot erase image %s (left for sweep_blobs): %s", sha256, exc)

    def hashes(self) -> Iterator[str]:
        """Every stored sha256 (walks the directory tree)."""
        for directory in self.root.iterdir():
            if directory.is_dir() and len(directory.name) == 2:
                for blob in directory.iterdir():
                    yield directory.name + blob.name
