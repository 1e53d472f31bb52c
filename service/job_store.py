"""Durable training-job records in SQLite (`jobs.sqlite3` in the data directory)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress TEXT,
    result TEXT NOT NULL DEFAULT '{}',
    error TEXT
)
"""
_JSON_FIELDS = ("params", "progress", "result")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class Job:
    """One training job. `result` holds metrics, versions, promotion and timings."""

    id: str
    status: str
    params: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class JobStore:
    """Jobs survive restarts; a job that was running when the process died is marked failed."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, params: dict[str, Any]) -> Job:
        job = Job(id=uuid.uuid4().hex[:16], status="queued", params=params, created_at=time.time())
        with self._lock:
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute(
                "INSERT INTO jobs (id, seq, status, params, created_at) VALUES (?, ?, ?, ?, ?)",
                (job.id, seq, job.status, json.dumps(params), job.created_at),
            )
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            columns = [c[0] for c in self._db.execute("SELECT * FROM jobs LIMIT 0").description]
        if row is None:
            raise NotFound(f"unknown training job {job_id!r}")
        return _to_job(dict(zip(columns, row, strict=True)))

    def list(self, limit: int = 100) -> list[Job]:
        with self._lock:
            cursor = self._db.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,))
            columns = [c[0] for c in cursor.description]
            rows = cursor.fetchall()
        return [_to_job(dict(zip(columns, row, strict=True))) for row in rows]

    def next_queued(self) -> Job | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1"
            ).fetchone()
        return self.get(row[0]) if row else None

    def running_id(self) -> str | None:
        """The id of the job that is running, if one is."""
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM jobs WHERE status = 'running' ORDER BY seq LIMIT 1"
            ).fetchone()
        return row[0] if row else None

    def update(self, job_id: str, **fields: Any) -> None:
        """Set columns of one job; dict fields are stored as JSON."""
        values = {k: json.dumps(v) if k in _JSON_FIELDS and v is not None else v for k, v in fields.items()}
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))

    def fail_interrupted(self) -> int:
        """Mark jobs left `running` by a previous process as failed; returns how many."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, "
                "error = 'interrupted: the service restarted while this job was running' "
                "WHERE status = 'running'",
                (time.time(),),
            )
        return cursor.rowcount

    def count_by_status(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return dict(rows)


def _to_job(row: dict[str, Any]) -> Job:
    row.pop("seq")
    for name in _JSON_FIELDS:
        if row[name] is not None:
            row[name] = json.loads(row[name])
    row["result"] = row["result"] or {}
    return Job(**row)
