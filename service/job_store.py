"""Durable training-job records: `jobs.sqlite3` in the data directory, or the `jobs` table of the
service's PostgreSQL tables (`service.service_db`) when `CGD_DATABASE_URL` is set."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from service.errors import NotFound
from service.service_db import ServiceDatabase

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


class _Rows(NamedTuple):
    columns: list[str]
    rows: list[tuple]
    count: int  # rows changed by an UPDATE


class _SQLiteJobs:
    """Statements on `jobs.sqlite3` (WAL, synchronous=FULL), one at a time."""

    next_seq = "(SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs)"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def execute(self, query: str, params: tuple = ()) -> _Rows:
        with self._lock:
            cursor = self._db.execute(query, params)
            columns = [c[0] for c in cursor.description or ()]
            return _Rows(columns, cursor.fetchall(), cursor.rowcount)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _PostgresJobs:
    """Statements on the `jobs` table of the service's database (`?` placeholders become `%s`)."""

    next_seq = "DEFAULT"  # an identity column: unique across processes

    def __init__(self, database: ServiceDatabase) -> None:
        self._database = database

    def execute(self, query: str, params: tuple = ()) -> _Rows:
        with self._database.connection() as conn:
            cursor = conn.execute(query.replace("?", "%s"), params)
            columns = [c.name for c in cursor.description or ()]
            return _Rows(columns, cursor.fetchall() if columns else [], cursor.rowcount)

    def close(self) -> None:
        """The database is closed by its owner."""


class JobStore:
    """Jobs survive restarts; a job that was running when the process died is marked failed.

    `JobStore(path)` keeps them in a SQLite file; `JobStore(database)` in PostgreSQL (same statements).
    """

    def __init__(self, target: Path | ServiceDatabase) -> None:
        self._db = _PostgresJobs(target) if isinstance(target, ServiceDatabase) else _SQLiteJobs(target)

    def close(self) -> None:
        self._db.close()

    def create(self, params: dict[str, Any]) -> Job:
        job = Job(id=uuid.uuid4().hex[:16], status="queued", params=params, created_at=time.time())
        self._db.execute(f"INSERT INTO jobs (id, seq, status, params, created_at) "
                         f"VALUES (?, {self._db.next_seq}, ?, ?, ?)",
                         (job.id, job.status, json.dumps(params), job.created_at))
        return job

    def get(self, job_id: str) -> Job:
        found = self._jobs("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not found:
            raise NotFound(f"unknown training job {job_id!r}")
        return found[0]

    def list(self, limit: int = 100) -> list[Job]:
        return self._jobs("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,))

    def next_queued(self) -> Job | None:
        found = self._jobs("SELECT * FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1")
        return found[0] if found else None

    def running_id(self) -> str | None:
        """The id of the job that is running, if one is."""
        rows = self._db.execute("SELECT id FROM jobs WHERE status = 'running' ORDER BY seq LIMIT 1").rows
        return rows[0][0] if rows else None

    def update(self, job_id: str, **fields: Any) -> None:
        """Set columns of one job; dict fields are stored as JSON."""
        values = {k: json.dumps(v) if k in _JSON_FIELDS and v is not None else v for k, v in fields.items()}
        assignments = ", ".join(f"{name} = ?" for name in values)
        self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))

    def fail_interrupted(self) -> int:
        """Mark jobs left `running` by a previous process as failed; returns how many."""
        return self._db.execute(
            "UPDATE jobs SET status = 'failed', finished_at = ?, "
            "error = 'interrupted: the service restarted while this job was running' "
            "WHERE status = 'running'",
            (time.time(),),
        ).count

    def count_by_status(self) -> dict[str, int]:
        return {status: int(n) for status, n in
                self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").rows}

    def import_jobs(self, jobs: list[Job]) -> int:
        """Copy jobs of another store (oldest first), keeping their ids; ids already here are skipped.
        Returns how many were copied (`cgd migrate`)."""
        copied = 0
        for job in jobs:
            copied += self._db.execute(
                "INSERT INTO jobs (id, seq, status, params, created_at, started_at, finished_at, progress, "
                f"result, error) VALUES (?, {self._db.next_seq}, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (job.id, job.status, json.dumps(job.params), job.created_at, job.started_at, job.finished_at,
                 json.dumps(job.progress) if job.progress is not None else None, json.dumps(job.result),
                 job.error)).count
        return copied

    def _jobs(self, query: str, params: tuple = ()) -> list[Job]:
        found = self._db.execute(query, params)
        return [_to_job(dict(zip(found.columns, row, strict=True))) for row in found.rows]


def _to_job(row: dict[str, Any]) -> Job:
    row.pop("seq")
    for name in _JSON_FIELDS:
        if row[name] is not None:
            row[name] = json.loads(row[name])
    row["result"] = row["result"] or {}
    return Job(**row)
