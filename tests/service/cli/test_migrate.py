"""`cgd migrate` on real engines: a SQLite gallery moves into PostgreSQL with its ids, vectors, versions
and images; an interrupted run resumes; the copy is verified and serves the same answers."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

from index import Gallery, NewItem
from index.engines import Engines
from index.migration import migrate_gallery
from index.postgres import PostgresSettings
from service.cli import main
from service.job_store import JobStore
from service.model_registry import ModelRegistry
from service.service_db import ServiceDatabase
from tests.index.engines import create_database


def _unit(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _sqlite_gallery(root: Path) -> list[int]:
    """60 items (e5 without an image), two versions, the last item deleted (its id must never come back);
    returns live ids."""
    with Gallery.open(root) as gallery:
        items = gallery.add([NewItem(f"img-{i}".encode() if i != 5 else None, external_id=f"e{i}",
                                     label="ab"[i % 2], metadata={"i": i}) for i in range(60)],
                            {"v1": _unit(60)})
        gallery.put_vectors("v2", [it.id for it in items[:30]], _unit(30, 8, seed=1))
        gallery.delete(items[-1].id)
    return [it.id for it in items[:-1]]


def test_migrate_is_resumable_verified_and_keeps_ids(postgres_server, tmp_path, capsys) -> None:
    root = tmp_path / "data" / "gallery"
    ids = _sqlite_gallery(root)
    registry = ModelRegistry(tmp_path / "data")  # the data directory's model records and jobs come along
    registry.add_default("v1", {"embedding_dim": 16})  # the gallery's live version
    registry.add_default("v2", {"embedding_dim": 8})
    registry.set_active("v1")
    jobs = JobStore(tmp_path / "data" / "jobs.sqlite3")
    first, second = jobs.create({"epochs": 1}), jobs.create({"epochs": 2})
    jobs.update(first.id, status="succeeded", result={"promoted": True}, progress={"phase": "done"})
    jobs.close()
    url = create_database(postgres_server)

    def interrupt(done: int, total: int) -> None:
        if done >= 20:
            raise KeyboardInterrupt  # as a Ctrl-C after the second batch committed

    with pytest.raises(KeyboardInterrupt):
        migrate_gallery(root, Engines(url), interrupt, batch=10)
    assert main(["migrate", "--from", f"sqlite:{tmp_path / 'data'}", "--to", url, "--batch-size", "10"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 59 and report["copied_now"] == 39  # the first 20 were kept
    assert report["vectors"] == {"v1": 59, "v2": 30} and report["top1_agreement"] == 1.0
    assert (report["models"], report["jobs"]) == (2, 2)
    with contextlib.closing(ServiceDatabase.open(PostgresSettings(url))) as database:
        copied = ModelRegistry(tmp_path / "data", database)
        assert copied.active.version == "v1" and copied.records() == registry.records()
        moved = JobStore(database)
        assert [job.id for job in moved.list()] == [second.id, first.id]  # the same order
        assert moved.get(first.id).result == {"promoted": True} and moved.claim("r1").id == second.id
    with Gallery.open(root) as source:
        expected = source.search(_unit(5, seed=7), 5)[1]
    with Gallery.open(root, engines=Engines(url, "pgvector"), index_kind="HNSW") as copy:
        assert [it.id for it in copy.list_items(0, 100)[0]] == ids
        assert copy.get_by_external_id("e3").metadata == {"i": 3} and copy.image(ids[3]) == b"img-3"
        assert not copy.get_by_external_id("e5").has_image and copy.count(has_image=False) == 1
        assert [[h.item.id for h in row] for row in copy.search(_unit(5, seed=7), 5)[1]] == \
            [[h.item.id for h in row] for row in expected]
        assert copy.vector(ids[0], "v2").shape == (8,)
        new = copy.add([NewItem(b"after")], {"v1": _unit(1, seed=9)})[0]
        assert new.id > ids[-1] + 1  # the deleted last id is not reused
    assert main(["migrate", "--from", f"sqlite:{root}", "--to", url]) == 1  # the copy now differs


def test_migrate_refuses_what_it_cannot_move(tmp_path, capsys) -> None:
    assert main(["migrate", "--from", str(tmp_path), "--to", "postgresql://db/x"]) == 2
    assert main(["migrate", "--from", f"sqlite:{tmp_path}", "--to", "postgresql://u:pw@db/x"]) == 1
    assert "pw" not in capsys.readouterr().err
