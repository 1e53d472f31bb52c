"""SQLiteItemStore and BlobStore on a real SQLite file and a real directory."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from index import (
    DimensionMismatch,
    InvalidFilter,
    InvalidItem,
    ItemNotFound,
    NewItem,
    SQLiteItemStore,
    StorageCorrupted,
    UnknownVersion,
    VersionMoved,
)
from index import vectors as vector_rows
from index.blobs import BlobStore, sha256_hex
from index.vectors import quantize


@pytest.fixture
def store(tmp_path: Path):
    opened = SQLiteItemStore.open(tmp_path / "s")
    yield opened
    opened.close()


def _add(store: SQLiteItemStore, items: list[NewItem], vectors: dict[str, np.ndarray] | None = None):
    return store.add(items, store.put_images([it.image for it in items]), vectors or {})


def test_sqlite_runs_in_wal_mode_with_durable_commits(store: SQLiteItemStore) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_add_get_and_external_ids(store: SQLiteItemStore, new_items) -> None:
    items, created = _add(store, new_items(3, external=True))
    assert created == [True, True, True]
    assert [it.id for it in items] == sorted(it.id for it in items)
    assert store.get(items[1].id) == items[1]
    assert store.get_by_external_id("img-2") == items[2]
    assert items[0].metadata == {"i": 0, "even": True} and items[0].label == "cat"
    assert items[0].sha256 == sha256_hex(b"img-0")
    again, created = _add(store, [NewItem(b"other", external_id="img-1", label="x"),
                                  NewItem(b"new", external_id="n"), NewItem(b"new2", external_id="n")])
    assert created == [False, True, False]
    assert again[0] == items[1]  # unchanged
    assert again[2] == again[1]  # a repeat inside the batch yields the first one
    assert store.count() == 4
    with pytest.raises(ItemNotFound):
        store.get(999)
    with pytest.raises(ItemNotFound):
        store.get_by_external_id("nope")


def test_invalid_items_are_refused_before_anything_is_stored(store: SQLiteItemStore) -> None:
    with pytest.raises(InvalidItem):
        _add(store, [NewItem(b"a", metadata={"bad": object()})])
    with pytest.raises(InvalidItem):
        _add(store, [NewItem(b"a", metadata=["not", "an", "object"])])  # type: ignore[arg-type]
    with pytest.raises(InvalidItem):
        _add(store, [NewItem(b"a", label=3)])  # type: ignore[arg-type]
    with pytest.raises(InvalidItem):
        store.put_images([b""])
    assert store.count() == 0


def test_add_is_all_or_nothing(store: SQLiteItemStore, new_items, unit_vectors) -> None:
    _add(store, new_items(2), {"v1": unit_vectors(2, 4)})
    with pytest.raises(DimensionMismatch):  # the second version's width differs from what is stored
        _add(store, new_items(3, prefix="b"), {"v2": unit_vectors(3, 4), "v1": unit_vectors(3, 5)})
    assert store.count() == 2
    assert store.versions() == ["v1"]


def test_ids_are_never_reused(store: SQLiteItemStore, new_items) -> None:
    items, _ = _add(store, new_items(3))
    store.delete([items[-1].id])
    later, _ = _add(store, new_items(1, prefix="later"))
    assert later[0].id > items[-1].id


def test_list_update_and_labelled(store: SQLiteItemStore, new_items) -> None:
    items, _ = _add(store, new_items(7))
    page, total = store.list_items(offset=2, limit=3)
    assert [it.id for it in page] == [it.id for it in items[2:5]] and total == 7
    cats, total = store.list_items(label="cat")
    assert total == 3 and all(it.label == "cat" for it in cats)
    updated = store.update(items[0].id, label=None)
    assert updated.label is None and updated.metadata == items[0].metadata
    updated = store.update(items[1].id, metadata={"new": 1})
    assert updated.metadata == {"new": 1} and updated.label == "dog"
    assert [it.id for it in store.labelled_items({"dog"})] == [items[1].id, items[4].id]
    assert len(store.labelled_items()) == 6
    with pytest.raises(ItemNotFound):
        store.update(12345, label="x")


def test_label_and_metadata_changes_are_numbered_and_numbers_never_go_back(store: SQLiteItemStore,
                                                                           new_items) -> None:
    items, _ = _add(store, new_items(4))
    assert store.attribute_changes(None)[0] == 0  # adds are not changes
    store.update(items[1].id, label="x")
    store.update(items[2].id, metadata={"k": 1})
    latest, changed = store.attribute_changes(0)
    assert latest == 2 and changed.tolist() == [items[1].id, items[2].id]
    store.update(items[1].id, label="y")  # renumbered: after change 2 now
    assert store.attribute_changes(2)[1].tolist() == [items[1].id]
    store.delete([items[1].id])
    store.update(items[3].id)  # nothing to change: no number
    store.update(items[3].id, label="z")
    latest, changed = store.attribute_changes(3)
    assert latest == 4 and changed.tolist() == [items[3].id]  # 3 is never given again
    with pytest.raises(ItemNotFound):
        store.update(12345, label="x")
    assert store.attribute_changes(None)[0] == 4


def test_delete_erases_images_only_when_unshared(store: SQLiteItemStore) -> None:
    items, _ = _add(store, [NewItem(b"same"), NewItem(b"same"), NewItem(b"alone")])
    shared, alone = store.image_path(items[0].id), store.image_path(items[2].id)
    assert shared == store.image_path(items[1].id) and shared.read_bytes() == b"same"
    store.delete([items[0].id, items[2].id])
    assert shared.exists() and not alone.exists()
    assert store.image(items[1].id) == b"same"
    store.delete([items[1].id])
    assert not shared.exists()
    assert store.delete([items[1].id]) == []


def test_metadata_filters_compare_type_and_value(store: SQLiteItemStore, unit_vectors) -> None:
    metadata = [{"n": 1}, {"n": 1.0}, {"n": True}, {"n": "1"}, {"n": None}, {}, {"n": 2, "s": "x"}]
    items, _ = _add(store, [NewItem(f"m{i}".encode(), label="a" if i % 2 else "b", metadata=m)
                            for i, m in enumerate(metadata)], {"v": unit_vectors(7, 4)})
    ids = [it.id for it in items]

    def match(label=None, **filters) -> list[int]:
        return store.matching_ids("v", label, filters).tolist()

    assert match(n=1) == [ids[0], ids[1]]
    assert match(n=True) == [ids[2]]
    assert match(n="1") == [ids[3]]
    assert match(n=None) == [ids[4]]
    assert match(n=2, s="x") == [ids[6]]
    assert match("a", n=1) == [ids[1]]
    assert match(n=3) == []
    for bad in ({"n": [1]}, {"n": {"x": 1}}, {'q"uote': 1}, {"n": float("nan")}):
        with pytest.raises(InvalidFilter):
            store.matching_ids("v", None, bad)
    with pytest.raises(UnknownVersion):
        store.matching_ids("nope", None, None)


def test_vectors_are_float16_per_version(store: SQLiteItemStore, new_items, unit_vectors) -> None:
    x = unit_vectors(5, 8)
    items, _ = _add(store, new_items(5), {"v1": x})
    ids = np.array([it.id for it in items])
    found, stored = store.vectors("v1", ids[::-1])
    assert found.tolist() == sorted(ids.tolist())
    np.testing.assert_array_equal(stored, quantize(x))
    assert np.abs(stored - x).max() < 1e-3
    assert store.ids_missing_vectors("v2").tolist() == ids.tolist()
    written = store.put_vectors("v2", np.array([ids[1], 999, ids[3]]), unit_vectors(3, 6))
    assert written.tolist() == [ids[1], ids[3]]  # 999 does not exist
    assert store.put_vectors("v2", ids[1:2], unit_vectors(1, 6, seed=9)).tolist() == []  # write-once
    assert store.ids_missing_vectors("v2").tolist() == [ids[0], ids[2], ids[4]]
    assert store.version_info("v2").dim == 6
    assert [b[0].tolist() for b in store.iter_vectors("v1", batch=2)] == [ids[:2].tolist(), ids[2:4].tolist(),
                                                                       ids[4:].tolist()]
    assert store.sample_vectors("v1", 3).shape == (3, 8)
    store.delete([ids[0]])
    assert store.vector_ids("v1").tolist() == ids[1:].tolist()
    store.drop_version("v2")
    assert store.versions() == ["v1"]
    with pytest.raises(UnknownVersion):
        store.vectors("v2", ids)


def test_the_live_version_is_a_compare_and_set(store: SQLiteItemStore) -> None:
    store.set_live_version("v1", expected=None)
    store.set_live_version("v1", expected=None)  # already live: nothing to refuse
    with pytest.raises(VersionMoved, match="'v1' is live, not 'v0'"):
        store.set_live_version("v2", expected="v0")
    assert store.live_version() == "v1"
    store.set_live_version("v2", expected="v1")
    assert store.live_version() == "v2"


def test_blob_store_writes_atomically_and_detects_damage(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    (tmp_path / "blobs" / ".tmp" / "leftover").write_bytes(b"half")
    blobs = BlobStore(tmp_path / "blobs")  # reopening clears interrupted writes
    assert list((tmp_path / "blobs" / ".tmp").iterdir()) == []
    sha = sha256_hex(b"hello")
    blobs.put_many([(sha, b"hello"), (sha, b"hello")])
    assert blobs.path(sha) == tmp_path / "blobs" / sha[:2] / sha[2:]
    assert blobs.get(sha) == b"hello" and list(blobs.hashes()) == [sha]
    blobs.path(sha).write_bytes(b"hellO")
    with pytest.raises(StorageCorrupted):
        blobs.get(sha)
    blobs.delete(sha)
    with pytest.raises(StorageCorrupted):
        blobs.get(sha)


def test_sweep_removes_orphan_images(store: SQLiteItemStore) -> None:
    items, _ = _add(store, [NewItem(b"kept")])
    store.put_images([b"orphan"])  # as if the process died before the rows were committed
    assert store.sweep_blobs() == 1
    assert store.image(items[0].id) == b"kept"
    assert list(store.blobs.hashes()) == [items[0].sha256]


OLD_ITEMS = """
CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, external_id TEXT UNIQUE, label TEXT,
                    metadata TEXT NOT NULL, sha256 TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX items_label ON items(label);
CREATE INDEX items_sha256 ON items(sha256);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE attribute_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                                item_id INTEGER NOT NULL UNIQUE REFERENCES items(id) ON DELETE CASCADE);
"""  # the items table of galleries made when every item had an image


def test_a_gallery_of_the_old_schema_is_migrated_so_that_items_may_lack_an_image(tmp_path: Path,
                                                                                 unit_vectors) -> None:
    root = tmp_path / "old"
    root.mkdir()
    with contextlib.closing(sqlite3.connect(root / "items.sqlite3", isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(OLD_ITEMS + vector_rows.SCHEMA)
        conn.executemany("INSERT INTO items (external_id, label, metadata, sha256, created_at) "
                         "VALUES (?, 'cat', '{\"i\": 1}', ?, 1.0)",
                         [(f"e{i}", f"{i:064x}") for i in range(3)])
        conn.execute("BEGIN")
        vector_rows.insert(conn, "v1", np.array([1, 2, 3]), unit_vectors(3, 8))
        conn.execute("INSERT INTO settings (key, value) VALUES ('live_version', 'v1')")
        conn.execute("INSERT INTO attribute_changes (item_id) VALUES (2)")
        conn.execute("COMMIT")
        conn.execute("DELETE FROM items WHERE id = 3")  # its id is never given again
    store = SQLiteItemStore.open(root)
    try:
        assert [it.sha256 for it in store.get_many([1, 2]).values()] == [f"{i:064x}" for i in range(2)]
        assert store.get(1).metadata == {"i": 1} and store.live_version() == "v1"
        assert store.vector_ids("v1").tolist() == [1, 2]
        latest, changed = store.attribute_changes(0)
        assert latest == 1 and changed.tolist() == [2]
        items, _ = store.add([NewItem(None, "bare")], [None], {"v1": unit_vectors(1, 8)})
        assert items[0].id == 4 and store.get(4).sha256 is None and store.count(has_image=False) == 1
        store.delete([1])  # the references to items still cascade
        assert store.vector_ids("v1").tolist() == [2, 4]
    finally:
        store.close()
    with contextlib.closing(SQLiteItemStore.open(root)) as again:  # migrated once: opens as it is
        assert again.count() == 2
