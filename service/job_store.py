"""Durable training-job records: `jobs.sqlite3` in the data directory, or the `jobs` table of the
service's PostgreSQL tables (`service.service_db`) when `CGD_DATABASE_URL` is set.

Replicas on one database share the queue: `claim` takes the oldest queued job only while no job runs
anywhere (under a transaction-scoped advisory lock, so two replicas never claim at once), and records
the replica as its `owner`. The owner writes a heartbeat while the job runs; a job whose owner
restarted, or whose heartbeat stopped (its replica died), is failed with the reason, and the next job
proceeds. A cancel request is a flag in the record, which the owner reads with its heartbeat.
"""

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
REPLICA_COLUMNS = {"owner": "TEXT", "heartbeat_at": "REAL",
                   "cancel_requested": "INTEGER NOT NULL DEFAULT 0"}  # added with replicas
_CLAIM_LOCK = 0x43474A42  # pg_advisory_xact_lock key ("CGJB"): one claim at a time, cluster-wide
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
    owner: str | None = None  # the replica that runs (or ran) it
    cancel_requested: bool = False


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
        present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, kind in REPLICA_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        self._lock = threading.Lock()

    def execute(self, query: str, params: tuple = ()) -> _Rows:
        with self._lock:
            cursor = self._db.execute(query, params)
            columns = [c[0] for c in cursor.description or ()]
            return _Rows(columns, cursor.fetchall(), cursor.rowcount)

    def claim(self, query: str, params: tuple) -> _Rows:
        """The claiming statement (one process: its lock is enough)."""
        return self.execute(query, params)

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
            return self._run(conn, query, params)

    def claim(self, query: str, params: tuple) -> _Rows:
        """The claiming statement under the cluster-wide claim lock (released at commit)."""
        with self._database.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CLAIM_LOCK,))
            return self._run(conn, query, params)

    @staticmethod
    def _run(conn: Any, query: str, params: tuple) -> _Rows:
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

    def claim(self, owner: str) -> Job | None:
        """Mark the oldest queued job running for `owner` and return it; None when none is queued or a job
        runs already (on any replica)."""
        now = time.time()
        found = self._db.claim(
            "UPDATE jobs SET status = 'running', owner = ?, started_at = ?, heartbeat_at = ?, progress = ? "
            "WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1) "
            "AND status = 'queued' AND NOT EXISTS (SELECT 1 FROM jobs WHERE status = 'running') RETURNING *",
            (owner, now, now, json.dumps({"phase": "preparing"})))
        return _to_job(dict(zip(found.columns, found.rows[0], strict=True))) if found.rows else None

    def heartbeat(self, job_id: str) -> bool:
        """The owner's sign of life for a running job; returns whether a cancel was requested."""
        rows = self._db.execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND status = 'running' "
                                "RETURNING cancel_requested", (time.time(), job_id)).rows
        return bool(rows and rows[0][0])

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; False when it is no longer queued."""
        return self._db.execute("UPDATE jobs SET status = 'cancelled', finished_at = ? "
                                "WHERE id = ? AND status = 'queued'", (time.time(), job_id)).count > 0

    def request_cancel(self, job_id: str) -> None:
        """Ask the running job's owner, whichever replica it is, to stop it."""
        self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
                         (job_id,))

    def running_id(self) -> str | None:
        """The id of the job that is running, if one is."""
        rows = self._db.execute("SELECT id FROM jobs WHERE status = 'running' ORDER BY seq LIMIT 1").rows
        return rows[0][0] if rows else None

    def update(self, job_id: str, **fields: Any) -> None:
        """Set columns of one job; dict fields are stored as JSON."""
        values = {k: json.dumps(v) if k in _JSON_FIELDS and v is not None else v for k, v in fields.items()}
        assignments = ", ".join(f"{name} = ?" for name in values)
        self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))

    def fail_interrupted(self, owner: str | None) -> int:
        """Mark the jobs `owner` left running (it restarted; jobs of before replicas have no owner) as
        failed, or every running job with None (one process owns the store); returns how many. Other
        replicas' running jobs are left alone."""
        mine, params = ("", ()) if owner is None else (" AND (owner = ? OR owner IS NULL)", (owner,))
        return self._db.execute(
            "UPDATE jobs SET status = 'failed', finished_at = ?, "
            "error = 'interrupted: the service restarted while this job was running' "
            f"WHERE status = 'running'{mine}", (time.time(), *params),
        ).count

    def fail_stale(self, max_silence_s: float) -> int:
        """Mark running jobs whose owner sent no heartbeat for `max_silence_s` as failed (their replica
        died); returns how many."""
        now = time.time()
        return self._db.execute(
            "UPDATE jobs SET status = 'failed', finished_at = ?, error = 'interrupted: replica ' || "
            "COALESCE(owner, 'unknown') || CAST(? AS TEXT) WHERE status = 'running' AND heartbeat_at < ?",
            (now, f", which ran this job, stopped answering (no heartbeat for {max_silence_s:.0f} s)",
             now - max_silence_s),
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
    row.pop("heartbeat_at")
    row["cancel_requested"] = bool(row["cancel_requested"])
    for name in _JSON_FIELDS:
        if row[name] is not None:
            row[name] = json.loads(row[name])
    row["result"] = row["result"] or {}
    return Job(**row)
