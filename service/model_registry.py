"""Which models the service knows (the embedded default and trained checkpoints) and which is active.

Layout under the data directory: `models/<version>.pt` checkpoints and `models/registry.json`
(records and the active version), written atomically.
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
from typing import Any

from model.checkpoint import read_checkpoint
from service.errors import NotFound


@dataclass(frozen=True)
class ModelRecord:
    """One known model; `checkpoint` is None for the embedded default."""

    version: str
    checkpoint: str | None
    created_at: float
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


class ModelRegistry:
    """Durable list of models and the active one (thread-safe)."""

    def __init__(self, root: Path) -> None:
        self.root = root / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self._file = self.root / "registry.json"
        self._lock = threading.Lock()
        self._records: dict[str, ModelRecord] = {}
        self._active: str | None = None
        if self._file.exists():
            data = json.loads(self._file.read_text())
            self._records = {r["version"]: ModelRecord(**r) for r in data["models"]}
            self._active = data.get("active")

    @property
    def active(self) -> ModelRecord | None:
        with self._lock:
            return self._records.get(self._active) if self._active else None

    def records(self) -> list[ModelRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.created_at)

    def get(self, version: str) -> ModelRecord:
        with self._lock:
            if version not in self._records:
                raise NotFound(f"unknown model version {version!r}")
            return self._records[version]

    def add_default(self, version: str, config: dict[str, Any]) -> ModelRecord:
        """Record the embedded default model (no checkpoint file)."""
        return self._add(ModelRecord(version, None, time.time(), {}, config))

    def add_checkpoint(self, checkpoint: Path) -> ModelRecord:
        """Copy a trained checkpoint into the registry (verified) and record it."""
        payload = read_checkpoint(checkpoint)
        version = payload["version"]
        target = self.root / f"{version}.pt"
        if checkpoint.resolve() != target.resolve():
            tmp = target.with_suffix(".pt.tmp")
            shutil.copyfile(checkpoint, tmp)
            os.replace(tmp, target)
        return self._add(ModelRecord(version, str(target), time.time(), dict(payload["metrics"]),
                                     dict(payload["config"])))

    def set_active(self, version: str) -> None:
        with self._lock:
            if version not in self._records:
                raise NotFound(f"unknown model version {version!r}")
            self._active = version
            self._save()

    def _add(self, record: ModelRecord) -> ModelRecord:
        with self._lock:
            existing = self._records.get(record.version)
            if existing is not None:
                return existing
            self._records[record.version] = record
            self._save()
            return record

    def _save(self) -> None:
        data = {"active": self._active, "models": [asdict(r) for r in self._records.values()]}
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".registry.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._file)
