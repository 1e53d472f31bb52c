"""IndexRegistry over a real store and FAISS: its locks and views, loading, rebuilds, one lock per search."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from index import FaissBackend, Gallery, GalleryError, IndexSpec, NewItem, SQLiteItemStore
from index.locking import ReadWriteLock
from index.registry import IndexRegistry, IndexView, WritableIndexView


def stored(tmp_path: Path, unit_vectors, n: int = 30) -> tuple[SQLiteItemStore, np.ndarray]:
    store = SQLiteItemStore.open(tmp_path / "g")
    vectors = unit_vectors(n)
    items = [NewItem(image=f"img-{i}".encode()) for i in range(n)]
    store.add(items, store.put_images([it.image for it in items]), {"v1": vectors})
    return store, vectors


def test_views_are_the_only_way_to_the_indexes(tmp_path, unit_vectors):
    store, vectors = stored(tmp_path, unit_vectors)
    registry = IndexRegistry(tmp_path / "g" / "faiss", store, FaissBackend(IndexSpec.parse("Flat")))
    with registry.reading() as view:
        assert type(view) is IndexView and view.get("v1") is None  # nothing loaded yet
        assert not hasattr(view, "put") and not hasattr(view, "remove")
    index = registry.ensure("v1")
    assert registry.ensure("v1") is index and len(index) == 30
    with registry.writer(), registry.writing() as view:
        assert isinstance(view, WritableIndexView)
        view.remove(np.asarray([1, 2], dtype=np.int64))
        view.add("v2", np.asarray([99], dtype=np.int64), vectors[:1])  # not loaded: ignored
    with registry.reading() as view:
        assert len(view.get("v1")) == 28 and view.get("v2") is None
    with registry.writer():
        registry.close()
    with pytest.raises(GalleryError), registry.reading():
        pass
    with pytest.raises(GalleryError), registry.writing():
        pass
    store.close()


def test_a_snapshot_is_loaded_and_reconciled_with_the_store(tmp_path, unit_vectors):
    store, _ = stored(tmp_path, unit_vectors)
    backend = FaissBackend(IndexSpec.parse("Flat"))
    first = IndexRegistry(tmp_path / "g" / "faiss", store, backend)
    first.ensure("v1")
    with first.writer():
        first.close()  # writes the snapshot
    store.delete([5])  # the store changes while no index is loaded
    second = IndexRegistry(tmp_path / "g" / "faiss", store, backend)
    index = second.ensure("v1")
    assert 5 not in index.vectors.ids().tolist() and len(index) == 29
    store.close()


def test_rebuild_only_loaded_builds_nothing_for_an_unloaded_version(tmp_path, unit_vectors):
    store, _ = stored(tmp_path, unit_vectors)
    registry = IndexRegistry(tmp_path / "g" / "faiss", store, FaissBackend(IndexSpec.parse("Flat")))
    registry.rebuild("v1", only_loaded=True)
    with registry.reading() as view:
        assert view.get("v1") is None
    before = registry.ensure("v1")
    registry.rebuild("v1", only_loaded=True)
    with registry.reading() as view:
        assert view.get("v1") is not before and len(view.get("v1")) == 30
    store.close()


def test_concurrent_first_searches_build_the_index_once(tmp_path, unit_vectors, monkeypatch):
    builds = []
    original = IndexRegistry.build
    monkeypatch.setattr(IndexRegistry, "build", lambda self, v: builds.append(v) or original(self, v))
    with Gallery.open(tmp_path / "g") as gallery:
        gallery.add([NewItem(image=f"i{i}".encode()) for i in range(10)],
                    {"v1": unit_vectors(10, seed=1), "v2": unit_vectors(10, seed=2)})
        builds.clear()  # v1 is live and loaded; v2 is stored but not loaded
        barrier = threading.Barrier(4)

        def search() -> None:
            barrier.wait()
            gallery.search(unit_vectors(1), 2, version="v2")

        threads = [threading.Thread(target=search) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert builds == ["v2"]


def test_a_search_takes_the_shared_lock_once(tmp_path, unit_vectors, monkeypatch):
    with Gallery.open(tmp_path / "g") as gallery:
        gallery.add([NewItem(image=f"i{i}".encode(), metadata={"k": i % 2}) for i in range(10)],
                    {"v1": unit_vectors(10)})
        gallery.search(unit_vectors(1), 3)  # loaded
        acquisitions = []
        original = ReadWriteLock.read
        monkeypatch.setattr(ReadWriteLock, "read", lambda self: acquisitions.append(1) or original(self))
        gallery.search(unit_vectors(2), 3, metadata={"k": 1}, qe_n=2)
        assert len(acquisitions) == 1
