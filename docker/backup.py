"""Write a backup of the service's data directory to stdout as a tar stream, while the service runs.

    docker compose exec -T api python /opt/cgd/backup.py > cgd-data-$(date +%F).tar

- Every SQLite database (`*.sqlite3`) is copied with SQLite's online backup API, so the copy is a
  consistent snapshot that includes what is still in the write-ahead log; the `-wal`, `-shm` and
  `-journal` side files are left out.
- Every other file (image blobs, model checkpoints, registry, job files) is copied as it is.
- Directories named `faiss` are left out: FAISS indexes are rebuilt from the stored vectors.

The databases are copied first. A file deleted by the service between that moment and its own copy
is reported on stderr and skipped (its item was deleted meanwhile). For a backup taken with no writes
in flight, stop the service and tar the volume instead (docs/DEPLOYMENT.md).
Standard library only; it runs with the image's Python.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

DATABASE_SUFFIX = ".sqlite3"
SIDE_FILE_SUFFIXES = ("-wal", "-shm", "-journal")
REBUILDABLE_DIRS = frozenset({"faiss"})


def walk(root: Path) -> Iterator[Path]:
    """Files under root in a stable order, skipping rebuildable directories and SQLite side files."""
    for path in sorted(root.iterdir()):
        if path.is_dir() and not path.is_symlink():
            if path.name not in REBUILDABLE_DIRS:
                yield from walk(path)
        elif not path.name.endswith(tuple(DATABASE_SUFFIX + s for s in SIDE_FILE_SUFFIXES)):
            yield path


def snapshot_database(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (online backup API, WAL content included)."""
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def write_backup(data_dir: Path, out) -> tuple[int, list[str]]:
    """Stream the tar to the binary file `out`; returns (files written, relative paths that vanished)."""
    files = list(walk(data_dir))
    databases = [p for p in files if p.name.endswith(DATABASE_SUFFIX)]
    others = [p for p in files if not p.name.endswith(DATABASE_SUFFIX)]
    vanished: list[str] = []
    written = 0
    with tarfile.open(fileobj=out, mode="w|") as tar, tempfile.TemporaryDirectory() as scratch:
        for index, database in enumerate(databases):
            copy = Path(scratch) / f"{index}{DATABASE_SUFFIX}"
            snapshot_database(database, copy)
            info = tar.gettarinfo(copy, arcname=database.relative_to(data_dir).as_posix())
            with copy.open("rb") as handle:
                tar.addfile(info, handle)
            copy.unlink()
            written += 1
        for path in others:
            relative = path.relative_to(data_dir).as_posix()
            try:
                info = tar.gettarinfo(path, arcname=relative)
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            except FileNotFoundError:
                vanished.append(relative)
                continue
            written += 1
    return written, vanished


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/data"), help="default: /data")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir} is not a directory")
    if sys.stdout.isatty():
        parser.error("stdout is a terminal: redirect it to a file (… > backup.tar)")
    written, vanished = write_backup(args.data_dir, sys.stdout.buffer)
    for relative in vanished:
        sys.stderr.write(f"backup: skipped {relative}: deleted during the backup\n")
    sys.stderr.write(f"backup: {written} files from {args.data_dir}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
