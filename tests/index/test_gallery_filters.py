"""Label and metadata filters on every engine: a filtered search returns exactly the exact top-k among
the items the filter keeps (values that need escaping, 1 vs 1.0 vs true vs "1", null vs a missing key),
and label / metadata changes reach the filter at once, after a restart, and when made while a version's
index was not loaded, behind the gallery's back (as a crash between the store and Milvus leaves it) or
through another replica.
Every test runs on SQLite + FAISS, PostgreSQL + pgvector and PostgreSQL + Milvus Lite."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from index import Gallery, NewItem
from index.engines import open_store
from tests.index.engines import ENGINE_NAMES

pytestmark = pytest.mark.parametrize("gallery_engines", ENGINE_NAMES, indirect=True)

LABELS = ["cat", 'say "hi"', "back\\slash", "line\nbreak", "tab\tand\x01control", "naïve 中文 😀",
          'x" or label != "', "", None]
FILTERS: list[tuple[str | None, dict[str, Any] | None]] = [
    ("cat", None), ('say "hi"', None), ("back\\slash", None), ("line\nbreak", None),
    ("tab\tand\x01control", None), ("naïve 中文 😀", None), ('x" or label != "', None), ("", None),
    (None, {"n": 1}), (None, {"n": 1.0}), (None, {"f": 1}), (None, {"f": 1.5}), (None, {"n": True}),
    (None, {"b": True}), (None, {"s": "1"}), (None, {"s": 1}), (None, {"maybe": None}), (None, {"maybe": 0}),
    (None, {"we\\ird key": "v"}), (None, {"nested": 1}), (None, {"neg": -3}), (None, {"missing": "x"}),
    (None, {"big": 2**60}), ("cat", {"b": True, "n": 0}), ('say "hi"', {"s": "2", "f": 1}),
]


def metadata(i: int) -> dict[str, Any]:
    """Values of every type, alike across keys: n int, f float (1.0 beside 1.5), b bool, s the digit as
    a string, maybe null / missing / 0, a key with a space and a backslash, a nested object."""
    meta: dict[str, Any] = {"n": i % 5, "f": (i % 5) / 2, "b": i % 2 == 0, "s": str(i % 5), "neg": -(i % 4),
                            "nested": {"n": 1}, "big": 2**60 + i % 2}
    if i % 3 == 0:
        meta["maybe"] = None
    elif i % 3 == 2:
        meta["maybe"] = 0
    if i % 4 == 0:
        meta["we\\ird key"] = "v"
    return meta


def keeps(item: Any, label: str | None, terms: dict[str, Any] | None) -> bool:
    """The filter's meaning: equal label; each metadata value equal in type (numbers alike) and value."""
    if label is not None and item.label != label:
        return False
    for key, value in (terms or {}).items():
        if key not in item.metadata:
            return False
        stored = item.metadata[key]
        if isinstance(value, bool) or value is None or isinstance(value, str):
            if type(stored) is not type(value) or stored != value:
                return False
        elif isinstance(stored, bool) or not isinstance(stored, int | float) or stored != value:
            return False
    return True


def expected_ids(items: list[Any], vectors: np.ndarray, queries: np.ndarray, k: int, label: str | None,
                 terms: dict[str, Any] | None) -> list[list[int]]:
    rows = [row for row, item in enumerate(items) if keeps(item, label, terms)]
    if not rows:
        return [[] for _ in queries]
    ids = np.array([items[row].id for row in rows])
    scores = queries.astype(np.float64) @ vectors[rows].astype(np.float64).T
    return ids[np.argsort(-scores, axis=1, kind="stable")[:, :k]].tolist()


def found_ids(gallery: Gallery, queries: np.ndarray, k: int, **kw: Any) -> list[list[int]]:
    return [[hit.item.id for hit in row] for row in gallery.search(queries, k, **kw)[1]]


def test_a_filtered_search_is_the_exact_top_k_among_the_filtered_items(open_gallery, unit_vectors) -> None:
    gallery = open_gallery(index_kind="HNSW")
    n = 240
    vectors = unit_vectors(n, seed=11)
    items = gallery.add([NewItem(b"same", label=LABELS[i % len(LABELS)], metadata=metadata(i))
                         for i in range(n)], {"v1": vectors})
    queries = unit_vectors(3, seed=12)
    for label, terms in FILTERS:
        expected = expected_ids(items, vectors, queries, 10, label, terms)
        assert found_ids(gallery, queries, 10, label=label, metadata=terms) == expected, (label, terms)
    assert found_ids(gallery, queries, 10, metadata={"n": True}) == [[], [], []]  # true is not 1
    cats = [item for item in items if item.label == "cat"]
    assert len(found_ids(gallery, queries, 100, label="cat")[0]) == len(cats)


def test_a_selective_filter_is_the_exact_top_k_among_its_items(open_gallery, clustered_vectors) -> None:
    """1 % of the items carry the label or metadata value: their exact top-k on every engine (Milvus gets
    their ids and scores them exactly: its HNSW walk under such a filter returned wrong hits at 100k,
    recall@10 0.72; here, at 3,000, the walks found them too, and tests/index/test_milvus_index.py shows
    one that does not)."""
    gallery = open_gallery(index_kind="HNSW")
    n = 3000
    vectors, queries = clustered_vectors(n, 64, clusters=30, seed=17, queries=20)
    items = gallery.add([NewItem(b"same", label="rare" if i % 100 == 7 else "common", metadata={"r": i % 100})
                         for i in range(n)], {"v1": vectors})
    gallery.close()
    gallery = open_gallery(index_kind="HNSW")  # the index as saved: Milvus's rows sealed, with their graph
    for label, terms in (("rare", None), (None, {"r": 7}), ("rare", {"r": 7})):
        expected = expected_ids(items, vectors, queries, 10, label, terms)
        assert found_ids(gallery, queries, 10, label=label, metadata=terms) == expected, (label, terms)


def test_label_and_metadata_changes_reach_the_filter_at_once_and_after_a_restart(open_gallery,
                                                                                 unit_vectors) -> None:
    gallery = open_gallery(index_kind="HNSW")
    vectors = unit_vectors(40, seed=13)
    items = gallery.add([NewItem(b"same", label="old", metadata={"i": i}) for i in range(40)],
                        {"v1": vectors})
    gallery.update(items[3].id, label="new", metadata={"tag": 'he said "x"'})
    query = vectors[3:4]
    assert found_ids(gallery, query, 5, label="new") == [[items[3].id]]
    assert found_ids(gallery, query, 5, metadata={"tag": 'he said "x"'}) == [[items[3].id]]
    assert items[3].id not in found_ids(gallery, query, 5, label="old")[0]
    assert found_ids(gallery, query, 5, metadata={"i": 3}) == [[]]  # the metadata was replaced
    gallery.update(items[3].id, label=None)
    assert found_ids(gallery, query, 5, label="new") == [[]]
    gallery.close()
    gallery = open_gallery()
    assert found_ids(gallery, query, 5, metadata={"tag": 'he said "x"'}) == [[items[3].id]]
    assert found_ids(gallery, query, 5, label="new") == [[]]


def test_changes_made_while_an_index_was_not_loaded_or_behind_the_gallery_reach_the_filter(
        open_gallery, unit_vectors, gallery_engines) -> None:
    gallery = open_gallery(index_kind="HNSW")
    v1, v2 = unit_vectors(30, seed=14), unit_vectors(30, 8, seed=15)
    items = gallery.add([NewItem(b"same", label="a", metadata={"k": 1}) for _ in range(30)],
                        {"v1": v1, "v2": v2})
    assert len(found_ids(gallery, v2[:1], 50, version="v2", label="a")[0]) == 30  # v2's index is made
    root = gallery.root
    gallery.close()
    gallery = open_gallery()  # only v1, the live version, is loaded now
    gallery.update(items[0].id, label="b")
    gallery.close()
    store = open_store(root, gallery_engines.for_root(root) or _embedded())
    try:  # as a crash after the store's commit and before the engine's copy was written leaves it
        store.update(items[1].id, label="b", metadata={"k": 2})
    finally:
        store.close()
    gallery = open_gallery()
    for version, query in (("v1", v1[:1]), ("v2", v2[:1])):
        assert sorted(found_ids(gallery, query, 50, version=version, label="b")[0]) == [items[0].id,
                                                                                         items[1].id]
        assert found_ids(gallery, query, 50, version=version, metadata={"k": 2}) == [[items[1].id]]
        assert len(found_ids(gallery, query, 50, version=version, label="a")[0]) == 28


def _embedded() -> Any:
    from index.engines import Engines

    return Engines()


def test_a_change_made_through_another_replica_reaches_this_ones_filter(tmp_path, gallery_engines,
                                                                        unit_vectors) -> None:
    if gallery_engines.server_url is None:
        pytest.skip("replicas share a gallery through PostgreSQL")
    root = tmp_path / "shared"
    engines = gallery_engines.for_root(root)
    other = engines  # Milvus Lite serves one process per file: replica b has a file of its own
    if engines.milvus_uri is not None:
        other = dataclasses.replace(engines, milvus_uri=str(tmp_path / "replica-b.milvus.db"))
    vectors = unit_vectors(10, seed=16)
    with Gallery.open(root, engines=engines, replica="a") as a, \
            Gallery.open(root, engines=other, replica="b") as b:
        items = a.add([NewItem(b"same", label="old") for _ in range(10)], {"v1": vectors})
        b.follow(b.sync())
        assert len(found_ids(b, vectors[:1], 20, label="old")[0]) == 10
        a.update(items[0].id, label="new", metadata={"k": 1})
        b.sync()
        assert found_ids(b, vectors[:1], 5, label="new") == [[items[0].id]]
        assert found_ids(b, vectors[:1], 5, metadata={"k": 1}) == [[items[0].id]]
        assert items[0].id not in found_ids(b, vectors[:1], 20, label="old")[0]
