"""Gallery on real engines: items, exact search, filters, deletion, restart, errors. Every test runs on
SQLite + FAISS, PostgreSQL + pgvector and PostgreSQL + Milvus Lite (`gallery_engines`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from index import (
    DimensionMismatch,
    Gallery,
    GalleryError,
    GalleryLocked,
    InvalidFilter,
    InvalidItem,
    InvalidQuery,
    InvalidVectors,
    ItemNotFound,
    MissingVectors,
    NewItem,
    UnknownVersion,
    VectorNotFound,
)
from index.vectors import quantize
from tests.index.engines import ENGINE_NAMES

pytestmark = pytest.mark.parametrize("gallery_engines", ENGINE_NAMES, indirect=True)


def _stored(gallery: Gallery, version: str = "v1") -> tuple[np.ndarray, np.ndarray]:
    """(ids, stored vectors) of every item, read back through the public API."""
    items, _ = gallery.list_items(0, 10**6)
    ids = np.array([it.id for it in items])
    return ids, np.array([gallery.vector(int(i), version) for i in ids])


def test_add_returns_items_in_input_order_and_keeps_external_ids_unique(open_gallery, new_items,
                                                                        unit_vectors) -> None:
    gallery = open_gallery()
    first = gallery.add(new_items(3, external=True), {"v1": unit_vectors(3)})
    assert gallery.live_version == "v1"  # the first version stored becomes live
    again = gallery.add([NewItem(b"x", external_id="new"), NewItem(b"y", external_id="img-1")],
                        {"v1": unit_vectors(2, seed=5)})
    assert again[1] == first[1] and again[0].external_id == "new"
    assert gallery.count() == 4
    np.testing.assert_array_equal(gallery.vector(first[1].id), quantize(unit_vectors(3))[1])
    assert gallery.add([], {"v1": np.zeros((0, 32), np.float32)}) == []


def test_add_checks_vectors(open_gallery, new_items, unit_vectors) -> None:
    gallery = open_gallery()
    gallery.add(new_items(2), {"v1": unit_vectors(2)})
    with pytest.raises(MissingVectors):
        gallery.add(new_items(1, prefix="b"), {"v2": unit_vectors(1)})
    with pytest.raises(DimensionMismatch):
        gallery.add(new_items(2, prefix="b"), {"v1": unit_vectors(3)})
    with pytest.raises(DimensionMismatch):
        gallery.add(new_items(2, prefix="b"), {"v1": unit_vectors(2, 16)})
    with pytest.raises(InvalidVectors):
        gallery.add(new_items(2, prefix="b"), {"v1": 2 * unit_vectors(2)})
    with pytest.raises(InvalidVectors):
        gallery.add(new_items(1, prefix="b"), {"v1": np.full((1, 32), np.nan, np.float32)})
    with pytest.raises(InvalidVectors):
        gallery.add(new_items(1, prefix="b"), {"v1": np.ones((1, 32), np.int64)})
    assert gallery.count() == 2


@pytest.mark.parametrize("kind", ["Flat", "SQfp16"])
def test_search_equals_brute_force(kind: str, open_gallery, new_items, unit_vectors, exact_top_k) -> None:
    gallery = open_gallery(index_kind=kind)
    gallery.add(new_items(300, shared_image=True), {"v1": unit_vectors(300, seed=1)})
    queries = unit_vectors(15, seed=2)
    version, hits = gallery.search(queries, 8)
    assert version == "v1" and [len(h) for h in hits] == [8] * 15
    ids, vectors = _stored(gallery)
    expected_scores, expected_ids = exact_top_k(queries, ids, vectors, 8)
    np.testing.assert_array_equal([[h.item.id for h in row] for row in hits], expected_ids)
    np.testing.assert_allclose([[h.score for h in row] for row in hits], expected_scores, atol=1e-5)
    assert gallery.search(queries[:1], 5000)[1][0][-1].item.id in ids  # k larger than the gallery
    assert len(gallery.search(queries[:1], 5000)[1][0]) == 300


def test_filters_on_label_and_metadata(open_gallery, new_items, unit_vectors, exact_top_k) -> None:
    gallery = open_gallery(index_kind="HNSW")
    items = gallery.add(new_items(300, shared_image=True), {"v1": unit_vectors(300, seed=1)})
    queries = unit_vectors(5, seed=2)
    _, hits = gallery.search(queries, 10, label="dog", metadata={"even": True})
    ids, vectors = _stored(gallery)
    wanted = np.array([it.id for it in items if it.label == "dog" and it.metadata["even"]])
    rows = np.isin(ids, wanted)
    _, expected = exact_top_k(queries, ids[rows], vectors[rows], 10)
    assert [[h.item.id for h in row] for row in hits] == expected.tolist()
    _, hits = gallery.search(queries, 10, metadata={"i": 7})
    assert [[h.item.id for h in row] for row in hits] == [[items[7].id]] * 5
    assert gallery.search(queries, 3, label="nobody")[1] == [[]] * 5
    with pytest.raises(InvalidFilter):
        gallery.search(queries, 3, metadata={"i": [1, 2]})


@pytest.mark.parametrize("bad", [{"i": [1, 2]}, {"": 1}, {"x": float("nan")}, ["i"]])
def test_a_bad_filter_is_refused_even_before_any_vector_is_stored(open_gallery, unit_vectors, bad) -> None:
    gallery = open_gallery()
    gallery.activate("v1")  # live, but nothing stored yet: the service's state after its first start
    assert gallery.search(unit_vectors(2), 3, metadata={"i": 1}) == ("v1", [[], []])
    with pytest.raises(InvalidFilter):
        gallery.search(unit_vectors(2), 3, metadata=bad)


@pytest.mark.parametrize("kind", ["Flat", "HNSW"])  # physical removal / tombstones
def test_delete_is_immediate_and_survives_restart(kind: str, tmp_path, new_items, unit_vectors,
                                                  gallery_engines) -> None:
    root = tmp_path / kind
    x = unit_vectors(300, seed=3)
    kind = gallery_engines.kind(kind)
    with Gallery.open(root, index_kind=kind, engines=gallery_engines.for_root(root)) as gallery:
        items = gallery.add(new_items(300), {"v1": x})
        gone = [it.id for it in items[:40]]
        for item_id in gone[:20]:
            gallery.delete(item_id)
        gallery.snapshot()  # the snapshot still holds the first 20 (as tombstones or removed)
        for item_id in gone[20:]:
            gallery.delete(item_id)
        found = {h.item.id for row in gallery.search(x[:40], 50)[1] for h in row}
        assert not found & set(gone)
    with Gallery.open(root, index_kind=kind, engines=gallery_engines.for_root(root)) as gallery:
        assert gallery.count() == 260 and gallery.index_stats().vectors == 260
        found = {h.item.id for row in gallery.search(x[:40], 50)[1] for h in row}
        assert not found & set(gone)
        for item_id in gone:
            with pytest.raises(ItemNotFound):
                gallery.get(item_id)


def test_items_can_be_read_updated_and_deleted(open_gallery, new_items, unit_vectors) -> None:
    gallery = open_gallery()
    items = gallery.add([*new_items(5, external=True), NewItem(b"img-0", label="copy")],
                        {"v1": unit_vectors(6)})
    assert gallery.get_by_external_id("img-3") == items[3]
    page, total = gallery.list_items(1, 2)
    assert [it.id for it in page] == [items[1].id, items[2].id] and total == 6
    assert gallery.list_items(0, 10, label="dog")[1] == 2
    updated = gallery.update(items[0].id, label="bird", metadata={"k": "v"})
    assert (updated.label, updated.metadata) == ("bird", {"k": "v"})
    assert gallery.search(unit_vectors(1), 10, label="bird")[1][0][0].item == updated
    assert gallery.update(items[0].id, metadata={}).label == "bird"
    assert {it.id for it in gallery.labelled_items({"bird", "copy"})} == {items[0].id, items[5].id}
    assert gallery.image(items[0].id) == b"img-0" == gallery.image_path(items[5].id).read_bytes()
    gallery.delete(items[0].id)
    assert gallery.image(items[5].id) == b"img-0"  # shared bytes are kept
    path = gallery.image_path(items[1].id)
    gallery.delete_by_external_id("img-1")
    assert not path.exists()
    with pytest.raises(ItemNotFound):
        gallery.delete(items[1].id)
    with pytest.raises(ItemNotFound):
        gallery.image(items[1].id)


def test_similar_excludes_the_item(open_gallery, new_items, unit_vectors) -> None:
    gallery = open_gallery()
    x = unit_vectors(50, seed=4)
    items = gallery.add(new_items(50), {"v1": x})
    hits = gallery.similar(items[0].id, 5)
    assert len(hits) == 5 and items[0].id not in [h.item.id for h in hits]
    _, direct = gallery.search(x[:1], 6)
    assert [h.item.id for h in hits] == [h.item.id for h in direct[0][1:]]
    assert all(h.item.label == "cat" for h in gallery.similar(items[0].id, 5, label="cat"))
    with pytest.raises(ItemNotFound):
        gallery.similar(10**6, 3)


def test_search_arguments_are_checked(open_gallery, new_items, unit_vectors) -> None:
    gallery = open_gallery()
    with pytest.raises(UnknownVersion):
        gallery.search(unit_vectors(1), 3)  # nothing live yet
    items = gallery.add(new_items(3), {"v1": unit_vectors(3)})
    for k in (0, -1, 2.5, True):
        with pytest.raises(InvalidQuery):
            gallery.search(unit_vectors(1), k)
    with pytest.raises(InvalidQuery):
        gallery.search(unit_vectors(1), 3, qe_n=-1)
    with pytest.raises(InvalidQuery):
        gallery.search(unit_vectors(1), 3, qe_n=1, qe_alpha=float("nan"))
    assert len(gallery.search(unit_vectors(1), np.int64(2), qe_n=np.int32(1))[1][0]) == 2
    with pytest.raises(DimensionMismatch):
        gallery.search(unit_vectors(1, 16), 3)
    with pytest.raises(DimensionMismatch):
        gallery.search(unit_vectors(1)[0], 3)
    with pytest.raises(UnknownVersion):
        gallery.search(unit_vectors(1), 3, version="v9")
    with pytest.raises(UnknownVersion):
        gallery.similar(items[0].id, 2, version="v9")
    gallery.put_vectors("v2", [items[1].id], unit_vectors(1, 8))
    with pytest.raises(VectorNotFound):
        gallery.vector(items[0].id, "v2")
    assert gallery.vector(items[1].id, "v2").shape == (8,)


def test_one_process_at_a_time_and_closed_is_closed(tmp_path, new_items, unit_vectors,
                                                    gallery_engines) -> None:
    engines = gallery_engines.for_root(tmp_path / "g")
    gallery = Gallery.open(tmp_path / "g", engines=engines)
    with pytest.raises(GalleryLocked):
        Gallery.open(tmp_path / "g", engines=engines)
    gallery.close()
    gallery.close()
    with pytest.raises(GalleryError):
        gallery.count()
    with Gallery.open(tmp_path / "g", engines=engines) as again:
        assert again.count() == 0


def blob_files(gallery) -> set[Path]:
    return {path for path in (gallery.root / "blobs").glob("??/*") if path.is_file()}


@pytest.mark.parametrize("metadata", [{"x": math.nan}, {"n": 10**30},
                                      {"deep": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}])
def test_an_add_refused_by_the_store_leaves_no_image_behind(open_gallery, new_items, unit_vectors,
                                                            metadata) -> None:
    gallery = open_gallery()
    gallery.add(new_items(2, prefix="kept"), {"v1": unit_vectors(2)})
    kept = blob_files(gallery)
    refused = [*new_items(2, prefix="new"), NewItem(image=b"refused-image", metadata=metadata)]
    with pytest.raises(InvalidItem):
        gallery.add(refused, {"v1": unit_vectors(3, seed=1)})
    assert blob_files(gallery) == kept
    assert gallery.count() == 2
    assert not list((gallery.root / "blobs" / ".tmp").iterdir())



def test_searches_write_nothing_even_after_a_first_add_on_an_empty_live_version(open_gallery, new_items,
                                                                                unit_vectors) -> None:
    gallery = open_gallery()
    gallery.activate("v1")  # live while the gallery is empty, as the service starts on a new data directory
    gallery.add(new_items(3), {"v1": unit_vectors(3)})
    files = {path: path.stat().st_mtime_ns for path in gallery.root.rglob("*") if path.is_file()}
    for _ in range(2):
        _, hits = gallery.search(unit_vectors(1, seed=5), 2)
        assert len(hits[0]) == 2
    assert {path: path.stat().st_mtime_ns for path in gallery.root.rglob("*") if path.is_file()} == files
