"""Model versions side by side, atomic activation and rollback, training on the fly, concurrency. Every
test but the FAISS-only trained kind runs on SQLite + FAISS, PostgreSQL + pgvector and PostgreSQL +
Milvus Lite (`gallery_engines`)."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest

from index import Gallery, UnknownVersion, VersionInUse
from tests.index.engines import ENGINE_NAMES

on_every_engine = pytest.mark.parametrize("gallery_engines", ENGINE_NAMES, indirect=True)


@on_every_engine
def test_new_version_is_built_beside_the_live_one_and_swapped(open_gallery, new_items, unit_vectors) -> None:
    gallery = open_gallery()
    items = gallery.add(new_items(20), {"v1": unit_vectors(20, 32, seed=1)})
    ids = np.array([it.id for it in items])
    assert gallery.ids_missing_vectors("v2").tolist() == ids.tolist()
    x2 = unit_vectors(20, 16, seed=2)
    assert gallery.put_vectors("v2", ids[:15], x2[:15]) == 15
    assert gallery.put_vectors("v2", ids[:15], x2[:15]) == 0  # write-once
    late = gallery.add(new_items(2, prefix="late"), {"v1": unit_vectors(2, 32, seed=3)})
    assert gallery.ids_missing_vectors("v2").tolist() == ids[15:].tolist() + [it.id for it in late]
    assert gallery.versions() == ["v1", "v2"] and gallery.live_version == "v1"
    assert gallery.search(x2[:1], 1, version="v2")[1][0][0].item.id == ids[0]  # served before going live

    asked: list[list[int]] = []

    def embed(missing: list) -> np.ndarray:
        asked.append([it.id for it in missing])
        return unit_vectors(len(missing), 16, seed=4)

    gallery.activate("v2", fill_missing=embed)
    assert asked == [ids[15:].tolist() + [it.id for it in late]]
    assert gallery.live_version == "v2" and len(gallery.ids_missing_vectors("v2")) == 0
    version, hits = gallery.search(x2[3:4], 1)
    assert version == "v2" and hits[0][0].item.id == ids[3] and hits[0][0].score == pytest.approx(1, abs=1e-3)
    assert gallery.index_stats().vectors == 22
    with pytest.raises(VersionInUse):
        gallery.drop_version("v2")
    gallery.activate("v1")  # rollback
    version, hits = gallery.search(unit_vectors(1, 32, seed=1), 1)
    assert version == "v1" and hits[0][0].item.id == ids[0]
    gallery.drop_version("v2")
    assert gallery.versions() == ["v1"]
    assert not (gallery.root / "faiss" / "v2.index").exists()
    with pytest.raises(UnknownVersion):
        gallery.search(x2[:1], 1, version="v2")


@on_every_engine
def test_live_version_survives_restart(tmp_path, new_items, unit_vectors, gallery_engines) -> None:
    engines = gallery_engines.for_root(tmp_path / "g")
    with Gallery.open(tmp_path / "g", engines=engines) as gallery:
        items = gallery.add(new_items(4), {"v1": unit_vectors(4, seed=1), "v2": unit_vectors(4, 8, seed=2)})
        gallery.activate("v2")
    with Gallery.open(tmp_path / "g", engines=engines) as gallery:
        assert gallery.live_version == "v2"
        assert gallery.search(unit_vectors(4, 8, seed=2)[2:3], 1)[1][0][0].item.id == items[2].id


@on_every_engine
def test_activation_of_a_version_without_vectors(open_gallery, new_items, unit_vectors) -> None:
    gallery = open_gallery()
    gallery.activate("v0")  # empty gallery: allowed, nothing to search yet
    assert gallery.live_version == "v0" and gallery.search(unit_vectors(2), 3) == ("v0", [[], []])
    gallery.add(new_items(3), {"v0": unit_vectors(3)})
    assert len(gallery.search(unit_vectors(1), 3)[1][0]) == 3
    with pytest.raises(UnknownVersion):
        gallery.activate("v9")  # items exist and nothing could embed them
    gallery.activate("v9", fill_missing=lambda items: unit_vectors(len(items), 8))
    assert gallery.live_version == "v9" and gallery.index_stats().vectors == 3


def test_trained_kind_trains_once_enough_vectors_exist(open_gallery, new_items, unit_vectors) -> None:
    gallery = open_gallery(index_kind="IVF16,Flat")
    gallery.add(new_items(600, shared_image=True), {"v1": unit_vectors(600, seed=1)})
    stats = gallery.index_stats()
    assert stats.exact_fallback and stats.factory == "Flat" and stats.kind == "IVF16,Flat"
    gallery.add(new_items(400, shared_image=True), {"v1": unit_vectors(400, seed=2)})
    stats = gallery.index_stats()
    assert not stats.exact_fallback and stats.factory == "IVF16,Flat" and stats.vectors == 1000


@on_every_engine
def test_searches_never_see_half_a_batch(open_gallery, new_items, unit_vectors) -> None:
    gallery = open_gallery(index_kind="HNSW")
    gallery.add(new_items(1, labels=("seed",)), {"v1": unit_vectors(1)})
    batch, batches = 64, 8
    errors: list[str] = []
    done = threading.Event()

    def write() -> None:
        for b in range(batches):
            gallery.add(new_items(batch, labels=(f"b{b}",), shared_image=True),
                        {"v1": unit_vectors(batch, seed=100 + b)})
        done.set()

    def read() -> None:
        queries = unit_vectors(2, seed=7)
        try:
            while not done.is_set():
                _, hits = gallery.search(queries, 10**6)  # everything searchable, per query
                for row in hits:
                    sizes = Counter(hit.item.label for hit in row if hit.item.label != "seed")
                    if set(sizes.values()) - {batch}:
                        errors.append(f"partial batches: {sizes}")
                b = int(np.random.default_rng().integers(batches))
                _, hits = gallery.search(queries, batch, label=f"b{b}")
                if {len(row) for row in hits} - {0, batch}:
                    errors.append(f"batch {b}: {[len(row) for row in hits]}")
        except Exception as exc:  # reported by the main thread
            errors.append(repr(exc))

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:5]
    assert gallery.count() == 1 + batch * batches


@on_every_engine
def test_no_search_mixes_two_versions(open_gallery, new_items, unit_vectors) -> None:
    gallery = open_gallery()
    x1 = unit_vectors(200, seed=1)
    items = gallery.add(new_items(200), {"v1": x1, "v2": -x1})  # v2 ranks everything backwards
    stored = {v: {it.id: gallery.vector(it.id, v) for it in items} for v in ("v1", "v2")}
    errors: list[str] = []
    done = threading.Event()

    def swap() -> None:
        for round_ in range(20):
            gallery.activate("v2" if round_ % 2 == 0 else "v1")
        done.set()

    def read() -> None:
        try:
            while not done.is_set():
                version, hits = gallery.search(x1[:4], 5)
                for q, row in enumerate(hits):
                    for hit in row:
                        if abs(float(x1[q] @ stored[version][hit.item.id]) - hit.score) > 1e-4:
                            errors.append(f"{version}: score {hit.score} of item {hit.item.id}")
        except Exception as exc:  # reported by the main thread
            errors.append(repr(exc))

    threads = [threading.Thread(target=swap)] + [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:5]
    assert gallery.live_version == "v1"
