"""VersionIndex over a real SQLite store and FAISS: whitening, DBA against brute force, snapshots."""

from __future__ import annotations

import numpy as np
import pytest

from index import FaissBackend, IndexSpec, NewItem, SQLiteItemStore
from index.errors import DimensionMismatch, SnapshotCorrupt
from index.postprocess import apply_whitening, database_side_augmentation, fit_pca_whitening
from index.version_index import VersionIndex, VersionSettings

N, D = 40, 16


@pytest.fixture
def store(tmp_path, unit_vectors):
    """A store holding N items with raw (N, D) vectors of version v1 (ids 1..N)."""
    store = SQLiteItemStore.open(tmp_path / "g")
    items = [NewItem(image=f"img-{i}".encode()) for i in range(N)]
    store.add(items, store.put_images([item.image for item in items]), {"v1": unit_vectors(N, D)})
    yield store
    store.close()


def raw_vectors(store) -> tuple[np.ndarray, np.ndarray]:
    ids = store.vector_ids("v1")
    return store.vectors("v1", ids)


def test_settings_check_shapes_and_fingerprint_what_a_snapshot_depends_on(unit_vectors):
    whitening = fit_pca_whitening(unit_vectors(200, D), dim=8)
    settings = VersionSettings(D, whitening)
    assert settings.index_dim == 8 and settings.transform(unit_vectors(3, D)).shape == (3, 8)
    with pytest.raises(DimensionMismatch):
        settings.transform(unit_vectors(3, D + 1))
    variants = (VersionSettings(D), settings, VersionSettings(D, dba_n=2),
                VersionSettings(D, dba_n=2, dba_alpha=1))
    assert len({repr(variant.fingerprint()) for variant in variants}) == 4


def test_a_whitened_build_searches_in_the_whitened_space(store, unit_vectors):
    ids, raw = raw_vectors(store)
    whitening = fit_pca_whitening(raw, dim=8)
    backend = FaissBackend(IndexSpec.parse("Flat"))
    version = VersionIndex.build("v1", VersionSettings(D, whitening), backend, store)
    assert len(version) == N and version.vectors.dim == 8
    scores, found = version.search(raw[:5], 3)
    space = apply_whitening(raw, whitening)
    brute = np.argsort(-(space[:5] @ space.T), axis=1)[:, :3]
    np.testing.assert_array_equal(found, ids[brute])
    np.testing.assert_allclose(scores, np.take_along_axis(space[:5] @ space.T, brute, 1), atol=1e-5)


def test_dba_replaces_each_vector_by_its_augmentation_with_its_neighbours(store):
    ids, raw = raw_vectors(store)
    settings = VersionSettings(D, dba_n=2, dba_alpha=3.0)
    version = VersionIndex.build("v1", settings, FaissBackend(IndexSpec.parse("Flat")), store)
    similarity = raw @ raw.T
    np.fill_diagonal(similarity, -np.inf)  # a vector is not its own neighbour
    top = np.argsort(-similarity, axis=1)[:, :2]
    expected = database_side_augmentation(raw, raw[top], np.take_along_axis(similarity, top, 1), 3.0)
    np.testing.assert_allclose(version.vectors.reconstruct(ids), expected, atol=1e-5)

    new_id = np.asarray([N + 100], dtype=np.int64)
    version.add(new_id, raw[:1])  # a new item is augmented against the current index
    assert not np.allclose(version.vectors.reconstruct(new_id)[0], raw[0])
    version.remove(new_id)
    assert len(version) == N


def test_a_snapshot_loads_only_under_the_settings_it_was_built_with(store, tmp_path):
    backend = FaissBackend(IndexSpec.parse("Flat"))
    settings = VersionSettings(D, dba_n=1)
    built = VersionIndex.build("v1", settings, backend, store)
    path = tmp_path / "v1.index"
    built.save(path)
    loaded = VersionIndex.load(path, "v1", settings, backend)
    _, raw = raw_vectors(store)
    np.testing.assert_array_equal(loaded.search(raw[:4], 5)[1], built.search(raw[:4], 5)[1])
    others = (("v2", settings), ("v1", VersionSettings(D)), ("v1", VersionSettings(D, dba_n=1, dba_alpha=1)))
    for name, other in others:
        with pytest.raises(SnapshotCorrupt):
            VersionIndex.load(path, name, other, backend)
