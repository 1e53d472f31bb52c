"""Whitening, DBA and alpha-QE through the gallery equal the same steps done with NumPy (exact kind), on
SQLite + FAISS, PostgreSQL + pgvector and PostgreSQL + Milvus Lite (`gallery_engines`)."""

from __future__ import annotations

import numpy as np
import pytest

from index import Gallery, NotEnoughData
from index.postprocess import apply_whitening, fit_learned_whitening, fit_pca_whitening
from tests.index.engines import ENGINE_NAMES

pytestmark = pytest.mark.parametrize("gallery_engines", ENGINE_NAMES, indirect=True)


def _stored(gallery: Gallery) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    items, _ = gallery.list_items(0, 10**6)
    ids = np.array([it.id for it in items])
    return ids, np.array([gallery.vector(int(i)) for i in ids]), [it.label for it in items]


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _hit_ids(hits) -> list[list[int]]:
    return [[h.item.id for h in row] for row in hits]


@pytest.fixture
def gallery(open_gallery, new_items, clustered_vectors) -> Gallery:
    opened = open_gallery()
    base, _ = clustered_vectors(240, 16, clusters=20)
    opened.add(new_items(240, labels=tuple(f"c{i}" for i in range(7)), shared_image=True), {"v1": base})
    return opened


def test_query_expansion(gallery: Gallery, clustered_vectors, exact_top_k) -> None:
    _, queries = clustered_vectors(240, 16, clusters=20, queries=6)
    ids, x, _ = _stored(gallery)
    scores, top = exact_top_k(queries, np.arange(len(ids)), x, 3)
    expanded = _normalise(queries + np.einsum("qn,qnd->qd", np.clip(scores, 0, None) ** 2, x[top]))
    expected_scores, expected_ids = exact_top_k(expanded, ids, x, 10)
    _, hits = gallery.search(queries, 10, qe_n=3, qe_alpha=2.0)
    assert _hit_ids(hits) == expected_ids.tolist()
    np.testing.assert_allclose([[h.score for h in row] for row in hits], expected_scores, atol=1e-5)
    assert _hit_ids(gallery.search(queries, 10)[1]) != _hit_ids(hits)  # QE changed something


def test_database_side_augmentation(gallery: Gallery, clustered_vectors, exact_top_k) -> None:
    _, queries = clustered_vectors(240, 16, clusters=20, queries=6)
    ids, x, _ = _stored(gallery)
    scores = x @ x.T
    np.fill_diagonal(scores, -np.inf)
    top = np.argsort(-scores, axis=1)[:, :2]
    weights = np.clip(np.take_along_axis(scores, top, 1), 0, None) ** 3
    augmented = _normalise(x + np.einsum("nk,nkd->nd", weights, x[top]))
    info = gallery.set_dba(n=2, alpha=3.0)
    assert (info.dba_n, info.dba_alpha) == (2, 3.0)
    expected_scores, expected_ids = exact_top_k(queries, ids, augmented, 10)
    _, hits = gallery.search(queries, 10)
    assert _hit_ids(hits) == expected_ids.tolist()
    np.testing.assert_allclose([[h.score for h in row] for row in hits], expected_scores, atol=1e-4)
    gallery.set_dba(n=0)
    assert _hit_ids(gallery.search(queries, 10)[1]) == exact_top_k(queries, ids, x, 10)[1].tolist()


@pytest.mark.parametrize("kind", ["learned", "pca"])
def test_whitening_applies_to_queries_and_gallery(kind: str, gallery: Gallery, clustered_vectors, exact_top_k,
                                                  tmp_path) -> None:
    _, queries = clustered_vectors(240, 16, clusters=20, queries=6)
    ids, x, labels = _stored(gallery)
    info = gallery.fit_whitening(kind=kind, dim=8)
    assert info.whitening == kind
    fitted = fit_learned_whitening(x, labels, 8) if kind == "learned" else fit_pca_whitening(x, 8)
    expected_scores, expected_ids = exact_top_k(apply_whitening(queries, fitted), ids,
                                                apply_whitening(x, fitted), 10)
    _, hits = gallery.search(queries, 10)
    assert _hit_ids(hits) == expected_ids.tolist()
    np.testing.assert_allclose([[h.score for h in row] for row in hits], expected_scores, atol=1e-4)
    np.testing.assert_array_equal(gallery.vector(int(ids[0])), x[0])  # stored vectors stay raw
    gallery.clear_whitening()
    assert gallery.version_info("v1").whitening is None
    assert _hit_ids(gallery.search(queries, 10)[1]) == exact_top_k(queries, ids, x, 10)[1].tolist()


def test_whitening_is_stored_with_the_version(tmp_path, new_items, unit_vectors, gallery_engines) -> None:
    engines = gallery_engines.for_root(tmp_path / "g")
    with Gallery.open(tmp_path / "g", engines=engines) as gallery:
        gallery.add(new_items(60), {"v1": unit_vectors(60, 16)})
        gallery.fit_whitening(kind="learned", dim=4)
        before = gallery.search(unit_vectors(3, 16, seed=5), 5)
    with Gallery.open(tmp_path / "g", engines=engines) as gallery:
        assert gallery.version_info("v1").whitening == "learned"
        assert gallery.index_stats().vectors == 60
        assert gallery.search(unit_vectors(3, 16, seed=5), 5) == before


def test_learned_whitening_needs_labels(open_gallery, new_items, unit_vectors) -> None:
    gallery = open_gallery()
    gallery.add(new_items(10, labels=()), {"v1": unit_vectors(10, 16)})
    with pytest.raises(NotEnoughData):
        gallery.fit_whitening(kind="learned")
