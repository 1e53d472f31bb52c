"""JobStore on a real SQLite file: order, JSON fields, restarts, interrupted jobs, unknown ids."""

from __future__ import annotations

import pytest

from service.errors import NotFound
from service.job_store import JobStore


def test_jobs_keep_their_order_and_fields_across_a_reopen(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    first = store.create({"epochs": 1, "labels": ["a", "b"]})
    second = store.create({"epochs": 2})
    store.update(first.id, status="running", started_at=10.0, progress={"phase": "training", "epoch": 1})
    store.update(second.id, result={"promoted": False})
    store.close()

    store = JobStore(path)
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


def test_a_job_left_running_by_a_dead_process_is_marked_failed(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    running, queued = store.create({}), store.create({})
    store.update(running.id, status="running")
    store.close()  # the process "dies" with the job running

    store = JobStore(path)
    assert store.fail_interrupted() == 1
    failed = store.get(running.id)
    assert failed.status == "failed" and "restarted" in failed.error and failed.finished_at is not None
    assert store.get(queued.id).status == "queued"  # queued jobs still run after the restart
    assert store.running_id() is None and store.fail_interrupted() == 0
    store.close()


def test_an_unknown_job_is_not_found(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    with pytest.raises(NotFound, match="unknown training job"):
        store.get("0123456789abcdef")
    assert store.next_queued() is None and store.list() == [] and store.count_by_status() == {}
    store.close()
