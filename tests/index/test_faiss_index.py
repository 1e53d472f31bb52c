"""FaissVectorIndex on real FAISS: exactness against NumPy, removal, filters, training fallback, snapshots."""

from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from index import FaissVectorIndex, IndexSpec, InvalidIndexKind, SnapshotCorrupt
from index.faiss_index import omp_threads, searches_one_query_serially
from index.vectors import quantize

KINDS = ["Flat", "SQfp16", "SQ8", "HNSW", "HNSW-SQ8", "IVF-Flat", "IVF-SQ8", "IVF-PQ"]
N, D = 2000, 32


def _filled(kind: str, vectors: np.ndarray, ids: np.ndarray) -> FaissVectorIndex:
    index = FaissVectorIndex.create(IndexSpec.parse(kind), vectors.shape[1], len(vectors), vectors)
    index.add(ids, vectors)
    return index


@pytest.fixture
def data(unit_vectors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids (N,) sparse and shuffled, gallery vectors rounded through float16 (N,D), queries (20,D))."""
    ids = np.random.default_rng(7).permutation(np.arange(N, dtype=np.int64) * 3 + 5)
    return ids, quantize(unit_vectors(N, D, seed=1)), unit_vectors(20, D, seed=2)


@pytest.mark.parametrize("kind", ["Flat", "SQfp16"])
def test_exact_kinds_equal_brute_force(kind: str, data, exact_top_k) -> None:
    ids, vectors, queries = data
    index = _filled(kind, vectors, ids)
    scores, found = index.search(queries, 10)
    expected_scores, expected_ids = exact_top_k(queries, ids, vectors, 10)
    np.testing.assert_array_equal(found, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    allowed = np.sort(ids[::7])
    scores, found = index.search(queries, 10, allowed)
    rows = np.isin(ids, allowed)
    expected_scores, expected_ids = exact_top_k(queries, ids[rows], vectors[rows], 10)
    np.testing.assert_array_equal(found, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_removes_at_once_and_reconstructs(kind: str, data) -> None:
    ids, vectors, _ = data
    index = _filled(kind, vectors, ids)
    assert not index.exact_fallback and len(index) == N
    gone = ids[:50]
    index.remove(np.concatenate([gone, [10**9]]))  # unknown ids are ignored
    assert len(index) == N - 50
    assert not np.isin(gone, index.ids()).any()
    _, found = index.search(vectors[:50], 100)
    assert not np.isin(found, gone).any()
    tolerance = 0 if kind in ("Flat", "SQfp16") else 0.05
    np.testing.assert_allclose(index.reconstruct(ids[50:60]), vectors[50:60], atol=tolerance)


@pytest.mark.parametrize("kind", KINDS)
def test_filters_return_k_hits_when_k_exist(kind: str, data) -> None:
    ids, vectors, queries = data
    index = _filled(kind, vectors, ids)
    index.remove(ids[:100])
    few = np.sort(np.concatenate([ids[:3], ids[500:507]]))  # 3 of them are removed: 7 remain
    scores, found = index.search(queries, 10, few)
    assert found.shape == (20, 7)
    assert all(set(row) == set(ids[500:507]) for row in found.tolist())
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    many = np.sort(ids[::5])
    _, found = index.search(queries, 10, many)
    assert found.shape == (20, 10) and np.isin(found, many).all()
    assert not np.isin(found, ids[:100]).any()


def test_trained_kind_is_exact_until_enough_vectors(data, exact_top_k) -> None:
    ids, vectors, queries = data
    spec = IndexSpec.parse("IVF-Flat")
    index = FaissVectorIndex.create(spec, D, 500, None)
    assert index.exact_fallback and index.factory == "Flat"
    index.add(ids[:500], vectors[:500])
    assert index.maintenance() is None
    _, found = index.search(queries, 5)
    np.testing.assert_array_equal(found, exact_top_k(queries, ids[:500], vectors[:500], 5)[1])
    index.add(ids[500:], vectors[500:])
    assert index.maintenance() == "train"
    trained = FaissVectorIndex.create(spec, D, N, vectors)
    assert not trained.exact_fallback and trained.factory == "IVF32,Flat" and trained.trained_on == N


def test_many_tombstones_ask_for_compaction(data) -> None:
    ids, vectors, _ = data
    index = _filled("HNSW", vectors, ids)
    index.remove(ids[: N // 5])
    assert index.tombstones == N // 5 and index.maintenance() is None
    index.remove(ids[N // 5: N // 3])
    assert index.maintenance() == "compact"


@pytest.mark.parametrize("kind", ["Flat", "HNSW", "IVF-PQ"])
def test_snapshot_round_trip(kind: str, data, tmp_path: Path) -> None:
    ids, vectors, queries = data
    index = _filled(kind, vectors, ids)
    index.remove(ids[:10])
    index.save(tmp_path / "x.index", {"note": "kept"})
    assert not index.dirty
    loaded, meta = FaissVectorIndex.load(tmp_path / "x.index", IndexSpec.parse(kind))
    assert meta["note"] == "kept" and loaded.factory == index.factory
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    for a, b in zip(loaded.search(queries, 10), index.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SnapshotCorrupt):
        FaissVectorIndex.load(tmp_path / "x.index", IndexSpec.parse("SQ8"))  # configured kind changed


def test_damaged_snapshots_are_refused(data, tmp_path: Path) -> None:
    ids, vectors, _ = data
    path = tmp_path / "x.index"
    _filled("Flat", vectors, ids).save(path, {})
    spec = IndexSpec.parse("Flat")
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x40
    for damaged in (bytes(flipped), good[: len(good) // 2], good[:-3], b"garbage", b""):
        path.write_bytes(damaged)
        with pytest.raises(SnapshotCorrupt):
            FaissVectorIndex.load(path, spec)
    path.unlink()
    with pytest.raises(SnapshotCorrupt):
        FaissVectorIndex.load(path, spec)


def test_index_kinds_are_parsed_once() -> None:
    assert IndexSpec.parse("ivf-pq").name == "IVF-PQ"
    assert IndexSpec.parse("IVF-PQ").factory(1536, 1_000_000) == "IVF1024,PQ384x4fs,Refine(SQ8)"
    assert IndexSpec.parse("HNSW16,Flat").factory(64, 10) == "HNSW16,Flat"
    for bad in ("", "IDMap,Flat", "NoSuchIndex"):
        with pytest.raises(InvalidIndexKind):
            IndexSpec.parse(bad).validate(64)
    with pytest.raises(InvalidIndexKind):
        IndexSpec.parse("HNSW", ef_search=0)


def test_an_index_copy_for_searches_follows_adds_and_removes(data) -> None:
    """The GPU copy's code path, with a CPU copy standing in (no GPU here): adds and physical removals
    reach the copy instead of dropping it, and a change it refuses drops it for the CPU index."""
    ids, vectors, _ = data
    index = _filled("Flat", vectors[:100], ids[:100])
    copy = faiss.clone_index(index._index)
    index._gpu, index._gpu_index = True, copy
    index.add(ids[100:101], vectors[100:101])
    assert index._gpu_index is copy and copy.ntotal == 101
    assert index.search(vectors[100:101], 1)[1][0, 0] == ids[100]  # answered by the copy
    index.remove(ids[:1])
    assert index._gpu_index is copy and copy.ntotal == 100
    hnsw = _filled("HNSW", vectors[:100], ids[:100])
    hnsw._gpu, hnsw._gpu_index = True, faiss.IndexFlatIP(D)  # refuses add_with_ids
    hnsw.add(ids[100:101], vectors[100:101])
    assert hnsw._gpu_index is None


def test_a_thread_setting_of_faiss_threads_holds_for_that_thread_only_and_is_restored() -> None:
    seen: dict[str, int] = {}

    def other_thread() -> None:
        with omp_threads(1):
            seen["other_inside"] = faiss.omp_get_max_threads()

    faiss.omp_set_num_threads(3)
    try:
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        seen["main"] = faiss.omp_get_max_threads()  # the other thread's setting did not reach this one
        with omp_threads(2):
            seen["inside"] = faiss.omp_get_max_threads()
        seen["after"] = faiss.omp_get_max_threads()
    finally:
        faiss.omp_set_num_threads(1)  # the session's setting (conftest)
    assert seen == {"other_inside": 1, "main": 3, "inside": 2, "after": 3}


@pytest.mark.parametrize(("kind", "serial"), [("HNSW", True), ("HNSW-SQ8", True), ("IVF-SQ8", True),
                                              ("IVF-PQ", True), ("Flat", False), ("SQ8", False)])
def test_one_query_runs_on_one_thread_where_faiss_searches_it_serially(kind: str, serial: bool, data) -> None:
    """Graph and inverted-list kinds search one query on the calling thread alone (FAISS would only wake
    a second thread to translate the result ids), with the same hits; the caller's setting is kept."""
    ids, vectors, queries = data
    index = _filled(kind, vectors, ids)
    assert searches_one_query_serially(index._index.index) is serial
    batched = index.search(queries, 10)
    faiss.omp_set_num_threads(2)
    try:
        singles = [index.search(query[None, :], 10) for query in queries]
        assert faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(1)
    np.testing.assert_array_equal(np.vstack([found for _, found in singles]), batched[1])
