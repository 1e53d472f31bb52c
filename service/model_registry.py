"""Which models the service knows (the embedded default and trained checkpoints) and which is active.

Checkpoints are files `models/<version>.pt` under the data directory (a shared volume for several
replicas). The records and the active version are in `models/registry.json` (written atomically), or,
with `CGD_DATABASE_URL` set, the records are in the `models` table of the service's PostgreSQL tables
(`service.service_db`), read at each call so that every process sees the same ones, and the active
model is the gallery's live version in the same database: one value, changed only by `Gallery.activate`'s
compare-and-set, so that replicas can never disagree on it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from index.postgres_store import LIVE_VERSION_QUERY
from model.checkpoint import read_checkpoint
from model.onnx_export import export_path
from service.errors import NotFound
from service.service_db import ServiceDatabase


@dataclass(frozen=True)
class ModelRecord:
    """One known model; `checkpoint` is None for the embedded default."""

    version: str
    checkpoint: str | None
    created_at: float
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


class RecordStore(Protocol):
    """Where the records and the active version are kept."""

    def load(self) -> tuple[dict[str, ModelRecord], str | None]:
        """(records by version, the active version)."""

    def add(self, record: ModelRecord) -> ModelRecord:
        """Keep `record` unless its version is known; returns the kept one."""

    def activate(self, version: str) -> bool:
        """Make a known version active (or check it is known, where the gallery holds the active one);
        False for an unknown one."""


class RegistryFile:
    """`models/registry.json`, kept in memory and rewritten atomically at each change (one process)."""

    def __init__(self, root: Path) -> None:
        self._file = root / "registry.json"
        self._lock = threading.Lock()
        self._records: dict[str, ModelRecord] = {}
        self._active: str | None = None
        if self._file.exists():
            data = json.loads(self._file.read_text())
            self._records = {r["version"]: ModelRecord(**r) for r in data["models"]}
            self._active = data.get("active")

    def load(self) -> tuple[dict[str, ModelRecord], str | None]:
        with self._lock:
            return dict(self._records), self._active

    def add(self, record: ModelRecord) -> ModelRecord:
        with self._lock:
            existing = self._records.get(record.version)
            if existing is not None:
                return existing
            self._records[record.version] = record
            self._save()
            return record

    def activate(self, version: str) -> bool:
        with self._lock:
            if version not in self._records:
                return False
            self._active = version
            self._save()
            return True

    def _save(self) -> None:
        data = {"active": self._active, "models": [asdict(r) for r in self._records.values()]}
        fd, tmp = tempfile.mkstemp(dir=self._file.parent, prefix=".registry.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._file)


class RegistryTable:
    """The `models` table: one row per version (shared by every process); the active one is the gallery's
    live version, read in the same statement."""

    def __init__(self, database: ServiceDatabase) -> None:
        self._database = database

    def load(self) -> tuple[dict[str, ModelRecord], str | None]:
        with self._database.connection() as conn:
            rows = conn.execute(f"SELECT version, checkpoint, created_at, metrics, config, "
                                f"version = ({LIVE_VERSION_QUERY}) FROM models "
                                "ORDER BY created_at").fetchall()
        records = {row[0]: ModelRecord(row[0], row[1], float(row[2]), json.loads(row[3]), json.loads(row[4]))
                   for row in rows}
        return records, next((row[0] for row in rows if row[5]), None)

    def add(self, record: ModelRecord) -> ModelRecord:
        with self._database.connection() as conn:
            conn.execute("INSERT INTO models (version, checkpoint, created_at, metrics, config) "
                         "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (version) DO NOTHING",
                         (record.version, record.checkpoint, record.created_at, json.dumps(record.metrics),
                          json.dumps(record.config)))
        return self.load()[0][record.version]

    def activate(self, version: str) -> bool:
        """Only checks that `version` is known: `Gallery.activate` made it live (a compare-and-set)."""
        with self._database.connection() as conn:
            return conn.execute("SELECT 1 FROM models WHERE version = %s", (version,)).fetchone() is not None


class ModelRegistry:
    """Durable list of models and the active one (thread-safe). `database`: keep the records in
    PostgreSQL rather than in `models/registry.json`."""

    def __init__(self, root: Path, database: ServiceDatabase | None = None) -> None:
        self.root = root / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self._records: RecordStore = (RegistryTable(database) if database is not None
                                      else RegistryFile(self.root))

    @property
    def active(self) -> ModelRecord | None:
        records, active = self._records.load()
        return records.get(active) if active else None

    def records(self) -> list[ModelRecord]:
        return sorted(self._records.load()[0].values(), key=lambda r: r.created_at)

    def get(self, version: str) -> ModelRecord:
        records, _ = self._records.load()
        if version not in records:
            raise NotFound(f"unknown model version {version!r}")
        return records[version]

    def add_default(self, version: str, config: dict[str, Any]) -> ModelRecord:
        """Record the embedded default model (no checkpoint file)."""
        return self._records.add(ModelRecord(version, None, time.time(), {}, config))

    def add_checkpoint(self, checkpoint: Path) -> ModelRecord:
        """Copy a trained checkpoint into the registry (verified), with the ONNX file exported beside it
        when there is one, and record it."""
        payload = read_checkpoint(checkpoint)
        version = payload["version"]
        target = self.root / f"{version}.pt"
        if checkpoint.resolve() != target.resolve():
            for source, copy in ((export_path(checkpoint), export_path(target)), (checkpoint, target)):
                if source.is_file():
                    tmp = copy.with_suffix(f"{copy.suffix}.tmp")
                    shutil.copyfile(source, tmp)
                    os.replace(tmp, copy)
        return self._records.add(ModelRecord(version, str(target), time.time(), dict(payload["metrics"]),
                                             dict(payload["config"])))

    def set_active(self, version: str) -> None:
        """Record `version` as the active model (registry.json); with PostgreSQL, the gallery's flip did,
        and this checks that the version is known. NotFound for an unknown version."""
        if not self._records.activate(version):
            raise NotFound(f"unknown model version {version!r}")

    def import_records(self, other: ModelRegistry) -> int:
        """Copy the records of another registry over the same `models/` directory into this one's table
        (`cgd migrate`: the active model comes along as the gallery's live version, which the gallery's
        migration copies); returns how many records were new here."""
        known, _ = self._records.load()
        records, _ = other._records.load()
        for record in sorted(records.values(), key=lambda r: r.created_at):
            self._records.add(record)
        return len(set(records) - set(known))
