"""JobStore on a real SQLite file and on a real PostgreSQL (pgserver): order, JSON fields, restarts,
interrupted jobs, unknown ids, and the queue shared by replicas (one claim at a time, heartbeats, cancel
requests, the jobs of a replica that died)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

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
    assert store.claim("r1") is None  # one job at a time: the first one runs
    assert store.count_by_status() == {"running": 1, "queued": 1}
    store.close()


def test_a_job_left_running_by_a_dead_process_is_marked_failed(open_store):
    store = open_store()
    running, queued = store.create({}), store.create({})
    store.update(running.id, status="running")
    store.close()  # the process "dies" with the job running

    store = open_store()
    assert store.fail_interrupted(None) == 1
    failed = store.get(running.id)
    assert failed.status == "failed" and "restarted" in failed.error and failed.finished_at is not None
    assert store.get(queued.id).status == "queued"  # queued jobs still run after the restart
    assert store.running_id() is None and store.fail_interrupted(None) == 0
    store.close()


def test_an_unknown_job_is_not_found(open_store):
    store = open_store()
    with pytest.raises(NotFound, match="unknown training job"):
        store.get("0123456789abcdef")
    assert store.claim("r1") is None and store.list() == [] and store.count_by_status() == {}
    store.close()


def test_replicas_claim_one_job_at_a_time_in_order(open_store):
    replicas = [open_store() for _ in range(4)]  # four connections, as four replicas
    first, second = replicas[0].create({"n": 1}), replicas[1].create({"n": 2})
    with ThreadPoolExecutor(4) as pool:
        claims = list(pool.map(lambda pair: pair[1].claim(f"r{pair[0]}"), enumerate(replicas)))
    won = [job for job in claims if job is not None]
    assert len(won) == 1 and won[0].id == first.id and won[0].status == "running"
    owner = won[0].owner
    assert replicas[3].get(first.id).owner == owner and replicas[3].running_id() == first.id
    replicas[0].update(first.id, status="succeeded", finished_at=time.time())
    job = replicas[2].claim("r2")
    assert (job.id, job.owner, job.progress) == (second.id, "r2", {"phase": "preparing"})
    for store in replicas:
        store.close()


def test_a_cancel_request_reaches_the_owner_through_its_heartbeat(open_store):
    owner, other = open_store(), open_store()
    job = other.create({})
    assert owner.claim("a").id == job.id and not owner.heartbeat(job.id)
    assert not other.cancel_queued(job.id)  # it runs: only its owner can stop it
    other.request_cancel(job.id)
    assert other.get(job.id).cancel_requested and owner.heartbeat(job.id)
    owner.close()
    other.close()


def test_recovery_fails_only_the_restarted_replicas_jobs_and_those_of_silent_ones(open_store):
    store = open_store()
    mine, theirs, queued = store.create({}), store.create({}), store.create({})
    store.update(mine.id, status="running", owner="a", heartbeat_at=time.time())
    store.update(theirs.id, status="running", owner="b", heartbeat_at=time.time())
    assert store.fail_interrupted("a") == 1  # replica a restarted: b's job runs on
    assert store.get(mine.id).status == "failed" and store.get(theirs.id).status == "running"
    assert store.fail_stale(30.0) == 0
    store.update(theirs.id, heartbeat_at=time.time() - 31)  # b died: no heartbeat for 31 s
    assert store.fail_stale(30.0) == 1
    failed = store.get(theirs.id)
    assert failed.status == "failed" and "replica b" in failed.error
    assert "no heartbeat for 30 s" in failed.error
    assert store.claim("a").id == queued.id  # the next job proceeds
    store.close()
