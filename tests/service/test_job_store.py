"""JobStore on a real SQLite file and on a real PostgreSQL (pgserver): order, JSON fields, restarts,
interrupted jobs, unknown ids."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from index.postgres import PostgresSettings
from service.errors import NotFound
from service.job_store import JobStore
from service.service_db import ServiceDatabase
from tests.index.engines import create_database


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request, tmp_path) -> Iterator[Callable[[], JobStore]]:
    """open_store() -> the same job store every call (reopened: a new connection, as after a restart)."""
    databases: list[ServiceDatabase] = []
    if request.param == "sqlite":
        yield lambda: JobStore(tmp_path / "jobs.sqlite3")
        return
    url = create_database(request.getfixturevalue("postgres_server"))

    def reopen() -> JobStore:
        databases.append(ServiceDatabase.open(PostgresSettings(url)))
        return JobStore(databases[-1])

    yield reopen
    for database in databases:
        database.close()


def test_jobs_keep_their_order_and_fields_across_a_reopen(open_store):
    store = open_store()
    first = store.create({"epochs": 1, "labels": ["a", "b"]})
    second = store.create({"epochs": 2})
    store.update(first.id, status="running", started_at=10.0, progress={"phase": "training", "epoch": 1})
    store.update(second.id, result={"promoted": False})
    store.close()

    store = open_store()
    assert [job.id for job in store.list()] == [second.id, first.id]  # newest first
    assert [job.id for job in store.list(limit=1)] == [second.id]
    job = store.get(first.id)
    assert (job.status, job.params, job.started_at) == ("running", {"epochs": 1, "labels": ["a", "b"]}, 10.0)
    assert job.progress == {"phase": "training", "epoch": 1} and job.result == {}
    assert store.get(second.id).result == {"promoted": False} and store.get(second.id).progress is None
    assert store.running_id() == first.id
    assert store.next_queued().id == second.id  # the oldest queued one
    assert store.count_by_status() == {"running": 1, "queued": 1}
    store.close()


def test_a_job_left_running_by_a_dead_process_is_marked_failed(open_store):
    store = open_store()
    running, queued = store.create({}), store.create({})
    store.update(running.id, status="running")
    store.close()  # the process "dies" with the job running

    store = open_store()
    assert store.fail_interrupted() == 1
    failed = store.get(running.id)
    assert failed.status == "failed" and "restarted" in failed.error and failed.finished_at is not None
    assert store.get(queued.id).status == "queued"  # queued jobs still run after the restart
    assert store.running_id() is None and store.fail_interrupted() == 0
    store.close()


def test_an_unknown_job_is_not_found(open_store):
    store = open_store()
    with pytest.raises(NotFound, match="unknown training job"):
        store.get("0123456789abcdef")
    assert store.next_queued() is None and store.list() == [] and store.count_by_status() == {}
    store.close()
