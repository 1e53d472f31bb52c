"""Crash safety for real: SIGKILL a writer at random moments (on SQLite, PostgreSQL, PostgreSQL + pgvector
and PostgreSQL + Milvus Lite); damaged or stale snapshots are rebuilt."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index import Gallery, ItemNotFound, SQLiteItemStore
from index.engines import Engines
from tests.index.crash_writer import image_bytes  # the child's own definition of the images
from tests.index.engines import EngineChoice

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _run_and_kill(root: Path, kind: str, seed: int, delay: float,
                  engines: Engines | None) -> tuple[dict[int, str], set[int], set[int]]:
    """Start the writer, SIGKILL it `delay` s after its first acknowledgement; returns what it acknowledged:
    ({id: external_id} added, {id} deleted, {id} being deleted when killed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    errors = root.parent / f"writer-{seed}.err"
    with open(errors, "w") as stderr:
        engine_args = [] if engines is None else [engines.database_url or "-", engines.vector_backend,
                                                  engines.milvus_uri or "-"]
        child = subprocess.Popen([sys.executable, str(HERE / "crash_writer.py"), str(root), kind, str(seed),
                                  *engine_args], stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    first = child.stdout.readline()
    assert first.startswith("A "), errors.read_text()
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    lines = [first, *child.stdout.read().splitlines(keepends=True)]  # what was flushed before the kill
    assert child.wait(timeout=30) == -signal.SIGKILL
    added, deleted, doubtful = {}, set(), set()
    for line in lines:
        if not line.endswith("\n"):  # cut off by the kill: not acknowledged
            continue
        fields = line.split()
        if fields[0] == "A":
            added[int(fields[1])] = fields[2]
        elif fields[0] == "X":
            doubtful.add(int(fields[1]))
        else:
            deleted.add(int(fields[1]))
    return added, deleted, doubtful - deleted


@pytest.mark.parametrize(("gallery_engines", "kind"), [
    ("sqlite-faiss", "Flat"), ("sqlite-faiss", "HNSW"), ("postgresql-faiss", "Flat"),
    ("postgresql-pgvector", "HNSW"), ("postgresql-milvus", "HNSW"),
], indirect=["gallery_engines"])
def test_every_acknowledged_item_survives_sigkill(kind: str, tmp_path: Path,
                                                  gallery_engines: EngineChoice) -> None:
    root = tmp_path / "g"
    engines = gallery_engines.for_root(root)
    rng = random.Random(f"crash-{kind}")
    all_added: dict[int, str] = {}
    all_deleted: set[int] = set()
    doubtful: set[int] = set()
    for round_ in range(3):
        added, deleted, in_doubt = _run_and_kill(root, kind, round_, rng.uniform(0.2, 1.5), engines)
        all_added.update(added)
        all_deleted |= deleted
        doubtful |= in_doubt
        assert len(added) > 0
        with Gallery.open(root, index_kind=kind, engines=engines) as gallery:
            alive = {i: e for i, e in all_added.items() if i not in all_deleted | doubtful}
            # besides these, the store may hold a batch committed just before the kill, unacknowledged
            assert len(alive) <= gallery.count() <= len(alive) + len(doubtful) + 23 * (round_ + 1)
            ids = np.array(sorted(alive))
            vectors = np.array([gallery.vector(int(i)) for i in ids])
            _, hits = gallery.search(vectors, 1)
            for item_id, row in zip(ids.tolist(), hits, strict=True):
                item = gallery.get(item_id)
                assert item.external_id == alive[item_id]
                assert gallery.image(item_id) == image_bytes(alive[item_id])
                assert row[0].item.id == item_id and row[0].score == pytest.approx(1.0, abs=1e-3)
            found = {h.item.id for row in gallery.search(vectors, 20)[1] for h in row}
            assert not found & all_deleted
            for item_id in all_deleted:
                with pytest.raises(ItemNotFound):
                    gallery.get(item_id)
            assert gallery.index_stats().vectors == gallery.count()


def _gallery_with_items(root: Path, unit_vectors, new_items, kind: str = "Flat") -> np.ndarray:
    with Gallery.open(root, index_kind=kind) as gallery:
        gallery.add(new_items(200), {"v1": unit_vectors(200, seed=1)})
        gallery.delete(gallery.list_items(0, 1)[0][0].id)
    return unit_vectors(10, seed=2)


def _results(root: Path, queries: np.ndarray, kind: str = "Flat") -> list[list[tuple[int, float]]]:
    with Gallery.open(root, index_kind=kind) as gallery:
        return [[(h.item.id, round(h.score, 5)) for h in row] for row in gallery.search(queries, 10)[1]]


@pytest.mark.parametrize("damage", ["missing", "truncated", "flipped", "garbage"])
def test_damaged_snapshot_is_rebuilt_from_the_store(damage: str, tmp_path: Path, unit_vectors, new_items,
                                                    caplog) -> None:
    root = tmp_path / "g"
    queries = _gallery_with_items(root, unit_vectors, new_items)
    expected = _results(root, queries)
    snapshot = root / "faiss" / "v1.index"
    data = snapshot.read_bytes()
    if damage == "missing":
        snapshot.unlink()
    elif damage == "truncated":
        snapshot.write_bytes(data[: len(data) // 3])
    elif damage == "flipped":
        snapshot.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        snapshot.write_bytes(b"\0" * 4096)
    with caplog.at_level(logging.WARNING, logger="index"):
        assert _results(root, queries) == expected
    assert (damage == "missing") != any("rebuilding" in r.message for r in caplog.records)
    assert snapshot.read_bytes() != b"\0" * 4096 and len(snapshot.read_bytes()) > 1000  # rewritten


def test_stale_snapshot_is_reconciled_with_the_store(tmp_path: Path, unit_vectors, new_items) -> None:
    root = tmp_path / "g"
    queries = _gallery_with_items(root, unit_vectors, new_items, kind="HNSW")
    assert len(_results(root, queries, kind="HNSW")) == 10
    snapshot = (root / "faiss" / "v1.index").read_bytes()
    store = SQLiteItemStore.open(root)  # changes the snapshot does not know about
    doomed = [int(i) for i in store.vector_ids("v1")[:30]]
    store.delete(doomed)
    extra = unit_vectors(5, seed=9)
    late = new_items(5, prefix="late")
    items, _ = store.add(late, store.put_images([it.image for it in late]), {"v1": extra})
    store.close()
    with Gallery.open(root, index_kind="HNSW") as gallery:
        assert (root / "faiss" / "v1.index").read_bytes() != snapshot  # loaded, reconciled, saved again
        assert gallery.index_stats().vectors == 199 - 30 + 5
        found = {h.item.id for row in gallery.search(queries, 50)[1] for h in row}
        assert not found & set(doomed)
        assert [row[0].item.id for row in gallery.search(extra, 1)[1]] == [it.id for it in items]


def test_snapshot_of_another_kind_is_replaced(tmp_path: Path, unit_vectors, new_items) -> None:
    root = tmp_path / "g"
    queries = _gallery_with_items(root, unit_vectors, new_items)
    exact = _results(root, queries)
    assert [[i for i, _ in row] for row in _results(root, queries, kind="SQfp16")] == [
        [i for i, _ in row] for row in exact]
    with Gallery.open(root, index_kind="SQfp16") as gallery:
        assert gallery.index_stats().factory == "SQfp16"
