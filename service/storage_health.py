"""Storage faults: which OS and SQLite errors mean a full or an unusable store, and the store's health.

`storage_error(exc)` turns such an error into `InsufficientStorage` (507: no space, quota, file too
large) or `StorageUnavailable` (503: read-only, permissions, I/O errors, a locked or unopenable
database), or None for any other error. `register_storage_faults(app)` answers those errors with the
service's error body, through Starlette's exception middleware, so the keep-alive connection survives
(an unhandled exception made uvicorn drop it). `StorageHealth.probe` writes into the data directories
for `/ready`, so that a full or read-only disk shows there before a client's write fails.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.errors import InsufficientStorage, ServiceError, StorageUnavailable, error_response

LOG = logging.getLogger(__name__)

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_UNAVAILABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENXIO,
                                 errno.ENODEV, errno.ESTALE, errno.ENOTCONN, errno.EHOSTDOWN})
_SQLITE_FULL = 13
_SQLITE_UNAVAILABLE = frozenset({3, 5, 6, 8, 10, 14, 15})  # PERM BUSY LOCKED READONLY IOERR CANTOPEN PROTOCOL
PROBE_BYTES = 1 << 20


def storage_error(exc: BaseException) -> ServiceError | None:
    """The client-facing error for a storage fault, or None when `exc` is not one."""
    if isinstance(exc, OSError):
        reason = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        if exc.errno in _FULL_ERRNOS:
            return InsufficientStorage(f"the store is full ({reason}); nothing of this request was kept")
        if exc.errno in _UNAVAILABLE_ERRNOS:
            return StorageUnavailable(f"the store cannot be written ({reason}); nothing of this request "
                                      "was kept")
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary == _SQLITE_FULL:
            return InsufficientStorage(f"the store is full ({exc}); nothing of this request was kept")
        if primary in _SQLITE_UNAVAILABLE:
            return StorageUnavailable(f"the store is unavailable ({exc}); nothing of this request was kept")
    return None


@dataclass(frozen=True)
class StorageFault:
    """What a probe found: the error code a write would get, and why."""

    code: str
    detail: str


class StorageHealth:
    """The store's health, as a probe of the data directories finds it."""

    def __init__(self, directories: Sequence[Path]) -> None:
        self.directories = tuple(directories)

    def probe(self) -> StorageFault | None:
        """Write and erase `PROBE_BYTES` in each directory (blocking: run it in a thread); the first
        fault found, or None when every directory can be written."""
        for directory in self.directories:
            try:
                _probe_write(directory / f".probe-{uuid.uuid4().hex}")
            except OSError as exc:
                error = storage_error(exc)
                return StorageFault(error.code if error is not None else StorageUnavailable.code,
                                    f"a probe write into {directory} failed: {exc.strerror or exc}")
        return None


def _probe_write(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)


def register_storage_faults(app: FastAPI) -> None:
    """Answer storage faults raised by any route with 507/503 (other OS and SQLite errors: 500)."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        error = storage_error(exc)
        if error is None:
            LOG.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path,
                      exc_info=(type(exc), exc, exc.__traceback__))
            return error_response(500, "internal error", "internal")
        LOG.warning("%s %s -> %d %s: %s", request.method, request.url.path, error.status_code, error.code,
                    error.detail)
        return error_response(error.status_code, error.detail, error.code, error.headers)

    app.add_exception_handler(OSError, handle)
    app.add_exception_handler(sqlite3.Error, handle)
