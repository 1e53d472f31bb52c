"""Removing a gone replica's folder and index tables, on a real PostgreSQL (pgserver) with FAISS, pgvector
or Milvus Lite: the other replica's folder, tables and searches are untouched, and a running replica's are
never removed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import psycopg
import pytest

from index import Gallery, GalleryLocked
from index.engines import Engines
from index.remote_index import name_prefix
from index.replicas import remove_replica, replica_folders
from tests.index.engines import create_database


@pytest.fixture(params=["faiss", "pgvector", "milvus"])
def engines(request, postgres_server, tmp_path) -> Callable[[str], Engines]:
    """engines(replica) -> the engines it opens with: one database, and with Milvus a Milvus Lite file per
    replica (Lite serves one process per file, and closing a client stops the file's server)."""
    url = create_database(postgres_server)
    return lambda replica: Engines(url, request.param, str(tmp_path / f"{replica}.milvus.db")
                                   if request.param == "milvus" else None)


def _tables(engines: Engines, replica: str) -> list[str]:
    """The replica's pgvector tables or Milvus collections."""
    if engines.vector_backend == "milvus":
        from pymilvus import MilvusClient

        collections = MilvusClient(uri=engines.milvus_uri).list_collections()  # not closed: see `engines`
        return [name for name in collections if name.startswith(name_prefix(replica))]
    with psycopg.connect(engines.database_url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE starts_with(tablename, %s)",
                            (name_prefix(replica),)).fetchall()
    return [row[0] for row in rows]


def test_a_stopped_replica_is_removed_and_the_others_keep_serving(tmp_path, engines, new_items,
                                                                  unit_vectors) -> None:
    root = tmp_path / "gallery"
    vectors = unit_vectors(4)
    with Gallery.open(root, engines=engines("a"), replica="a") as a:
        items = a.add(new_items(4), {"v1": vectors})
        with Gallery.open(root, engines=engines("b"), replica="b") as b:
            assert b.search(vectors[:1], 1)[1][0][0].item.id == items[0].id
            with pytest.raises(GalleryLocked):  # b runs: its lock is held
                remove_replica(root, engines("b"), "b")
        assert set(replica_folders(root)) == {"a", "b"}
        b_tables, a_tables = _tables(engines("b"), "b"), _tables(engines("a"), "a")
        assert len(b_tables) == len(a_tables) == (0 if engines("a").vector_backend == "faiss" else 1)
        dropped = remove_replica(root, engines("b"), "b")
        assert sorted(dropped) == sorted(b_tables)
        assert set(replica_folders(root)) == {"a"} and _tables(engines("b"), "b") == []
        assert _tables(engines("a"), "a") == a_tables
        assert a.search(vectors[2:3], 1)[1][0][0].item.id == items[2].id
        with pytest.raises(FileNotFoundError):
            remove_replica(root, engines("b"), "b")
    with Gallery.open(root, engines=engines("b"), replica="b") as b:  # the name can serve again: rebuilt
        hit = b.search(vectors[3:4], 1)[1][0][0]
        assert hit.item.id == items[3].id and np.isclose(hit.score, 1.0, atol=1e-2)
