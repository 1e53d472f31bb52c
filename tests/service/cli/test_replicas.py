"""`cgd replicas` on a real data directory and a real PostgreSQL (pgserver) with pgvector: the stale
replicas' folders, tables and heartbeats are removed; a live one and one still running here are kept."""

from __future__ import annotations

import contextlib
import json
import os
import time

import numpy as np
import psycopg

from index import Gallery, NewItem
from index.engines import Engines
from index.postgres import PostgresSettings
from index.remote_index import name_prefix
from service.cli import main
from service.replica_heartbeats import ReplicaHeartbeats
from service.service_db import ServiceDatabase
from tests.index.engines import create_database

STALE_AFTER_MINUTES = 0.02  # 1.2 s


def _tables(url: str, replica: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_tables WHERE starts_with(tablename, %s)",
                            (name_prefix(replica),)).fetchone()[0]


def test_stale_replicas_are_removed_and_the_others_kept(tmp_path, postgres_server, monkeypatch,
                                                        capsys) -> None:
    url = create_database(postgres_server)
    data, engines = tmp_path / "data", Engines(url, "pgvector")
    root = data / "gallery"
    monkeypatch.setenv("CGD_DATABASE_URL", url)
    monkeypatch.setenv("CGD_VECTOR_BACKEND", "pgvector")
    with Gallery.open(root, engines=engines, replica="gone") as gallery:
        gallery.add([NewItem(b"img")], {"v1": np.array([[1.0, 0.0]], dtype=np.float32)})
    for name in ("legacy", "live"):
        Gallery.open(root, engines=engines, replica=name).close()
    old = time.time() - 3600
    os.utime(root / "replicas" / "legacy", (old, old))  # no heartbeat (an earlier version): its folder's age
    with contextlib.closing(ServiceDatabase.open(PostgresSettings(url))) as database:
        heartbeats = ReplicaHeartbeats(database)
        for name in ("gone", "live", "stuck"):
            heartbeats.beat(name)
        time.sleep(STALE_AFTER_MINUTES * 60 + 0.3)
        heartbeats.beat("live")
        with Gallery.open(root, engines=engines, replica="stuck"):  # silent, yet running here
            assert main(["replicas", "--data-dir", str(data), "--remove-stale",
                         "--stale-after-minutes", str(STALE_AFTER_MINUTES)]) == 0
        report = {record["name"]: record for record in json.loads(capsys.readouterr().out)["replicas"]}
        assert report["gone"]["removed"] and len(report["gone"]["dropped"]) == 1
        assert report["legacy"]["removed"] and report["legacy"]["silent_s"] is None
        assert not report["live"]["stale"] and "removed" not in report["live"]
        assert report["stuck"]["stale"] and not report["stuck"]["removed"]
        assert sorted(path.name for path in (root / "replicas").iterdir()) == ["live", "stuck"]
        assert _tables(url, "gone") == 0
        assert [beat.name for beat in heartbeats.list()] == ["live", "stuck"]
    assert main(["replicas", "--data-dir", str(data)]) == 0  # a listing removes nothing
    listed = json.loads(capsys.readouterr().out)["replicas"]
    assert [record["name"] for record in listed] == ["live", "stuck"]
    assert not any("removed" in record for record in listed)
    assert (root / "replicas" / "stuck").is_dir()
