"""PrefixVectorIndex (`prefix:<kind>`) on real FAISS and real files: exactness when the factor covers the
gallery, the branch structure found in the vectors, filters, deletes, snapshots, and the Gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import Gallery, IndexSpec, InvalidIndexKind
from index.prefix_index import PrefixVectorIndex, coarse_ef_search, prefix_dim
from index.vectors import quantize

BRANCH, BRANCHES = 24, 3
D = BRANCH * BRANCHES
N = 1200  # above MIN_TRAINING_POINTS: the index is calibrated, not exact


def cgd_like(n: int, seed: int, branches: int = BRANCHES, branch: int = BRANCH) -> np.ndarray:
    """CGD-shaped unit vectors: `branches` L2-normalised projections of one clustered latent, concatenated
    and divided by sqrt(branches), rounded through float16 as the store does."""
    latent = 12
    centres = np.random.default_rng(99).standard_normal((60, latent))
    rng = np.random.default_rng(seed)
    z = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, latent))
    parts = []
    for b in range(branches):
        x = z @ np.random.default_rng(100 + b).standard_normal((latent, branch))
        x += 0.3 * rng.standard_normal((n, branch))
        parts.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return quantize((np.hstack(parts) / np.sqrt(branches)).astype(np.float32))


def exact(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(queries.astype(np.float64) @ vectors.astype(np.float64).T), axis=1,
                          kind="stable")[:, :k]]


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sparse shuffled ids (N,), gallery (N, D), queries (20, D))."""
    ids = np.random.default_rng(7).permutation(np.arange(N, dtype=np.int64) * 3 + 5)
    return ids, cgd_like(N, seed=1), cgd_like(20, seed=2)


def filled(kind: str, ids: np.ndarray, vectors: np.ndarray, tmp_path: Path,
           **settings: int) -> PrefixVectorIndex:
    spec = IndexSpec.parse(kind, **settings)
    index = PrefixVectorIndex.create(spec, vectors.shape[1], len(vectors), vectors, directory=tmp_path)
    index.add(ids, vectors)
    return index


def test_the_first_branch_is_found_in_the_vectors_and_a_rotation_hides_it() -> None:
    assert prefix_dim(cgd_like(50, seed=0)) == BRANCH
    assert prefix_dim(cgd_like(50, seed=0, branches=2, branch=36)) == 36
    rotation = np.linalg.qr(np.random.default_rng(3).standard_normal((D, D)))[0]
    assert prefix_dim(cgd_like(50, seed=0) @ rotation) == D  # learned whitening: no prefix


def test_prefix_kinds_parse_and_name_their_coarse_kind() -> None:
    spec = IndexSpec.parse("Prefix:hnsw-sq8", k_factor=4)
    assert (spec.name, spec.prefix, spec.k_factor) == ("prefix:HNSW-SQ8", True, 4)
    assert spec.coarse() == IndexSpec.parse("HNSW-SQ8")
    for bad in ("prefix:", "prefix:prefix:Flat", "prefix:IDMap,Flat"):
        with pytest.raises(InvalidIndexKind):
            IndexSpec.parse(bad)


@pytest.mark.parametrize("kind", ["prefix:Flat", "prefix:HNSW", "prefix:IVF-SQ8"])
def test_a_factor_that_covers_the_gallery_gives_the_exact_top_k(kind: str, data, tmp_path) -> None:
    ids, vectors, queries = data
    index = filled(kind, ids, vectors, tmp_path, k_factor=N)
    assert index.width == BRANCH and index.factory.startswith(f"prefix{BRANCH}:")
    scores, found = index.search(queries, 10)
    np.testing.assert_array_equal(found, exact(queries, ids, vectors, 10))
    np.testing.assert_allclose(scores, np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :10], atol=1e-5)
    allowed = np.sort(ids[::7])
    _, found = index.search(queries, 10, allowed)
    np.testing.assert_array_equal(found, exact(queries, allowed, vectors[np.isin(ids, allowed)][
        np.argsort(ids[np.isin(ids, allowed)])], 10))


def test_the_calibrated_factor_keeps_recall_and_rereads_exact_scores(data, tmp_path) -> None:
    ids, vectors, queries = data
    index = filled("prefix:HNSW", ids, vectors, tmp_path)
    assert 2 <= index.factor < N // 10
    scores, found = index.search(queries, 10)
    truth = exact(queries, ids, vectors, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), truth.tolist(), strict=True)])
    assert recall >= 0.95
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", index.reconstruct(found), queries), atol=1e-5)


def test_the_coarse_effort_follows_the_candidates_and_keeps_a_wide_search_recall(data, tmp_path) -> None:
    ids, vectors, queries = data
    assert coarse_ef_search(40, None) == 60 and coarse_ef_search(400, None) == 600
    assert coarse_ef_search(40, 500) == 500  # a set ef_search wins
    truth = exact(queries, ids, vectors, 10)

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), truth.tolist(),
                                                                           strict=True)]))

    default = filled("prefix:HNSW", ids, vectors, tmp_path / "default", k_factor=4)
    wide = filled("prefix:HNSW", ids, vectors, tmp_path / "wide", k_factor=4, ef_search=N)
    assert recall(default.search(queries, 10)[1]) >= recall(wide.search(queries, 10)[1]) - 0.01


def test_deleted_ids_are_never_returned_and_many_deletes_ask_for_a_compaction(data, tmp_path) -> None:
    ids, vectors, queries = data
    index = filled("prefix:HNSW", ids, vectors, tmp_path, k_factor=N)
    gone = ids[: N // 3]
    index.remove(gone)
    index.remove(gone)  # twice, and unknown ids, are harmless
    index.remove(np.asarray([10**9]))
    kept = ids[N // 3:]
    assert len(index) == len(kept) and index.tombstones == len(gone)
    _, found = index.search(queries, 10)
    assert not np.isin(found, gone).any()
    np.testing.assert_array_equal(found, exact(queries, kept, vectors[N // 3:], 10))
    assert index.maintenance() == "compact"
    _, found = index.search(queries, 10, np.sort(gone))
    assert (found == -1).all() or found.shape[1] == 0


def test_a_snapshot_reloads_the_same_index_and_leaves_no_stale_files(data, tmp_path) -> None:
    ids, vectors, queries = data
    index = filled("prefix:HNSW-SQ8", ids, vectors, tmp_path)
    path = tmp_path / "v1.index"
    index.save(path, {"version": "v1"})
    index.remove(ids[:5])
    index.add(np.asarray([10**6]), vectors[:1])
    index.save(path, {"version": "v1"})
    files = sorted(p.name.rsplit(".", 2)[-1] if p.name != "v1.index" else p.name for p in tmp_path.iterdir())
    assert files == ["npy", "v1.index", "vectors"]  # one vectors file, one row-ids file
    loaded, meta = PrefixVectorIndex.load(path, IndexSpec.parse("prefix:HNSW-SQ8"))
    assert meta["version"] == "v1" and len(loaded) == len(index) and loaded.factor == index.factor
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])
    loaded.add(np.asarray([10**6 + 1]), vectors[1:2])  # appends after the saved rows
    assert loaded.search(vectors[1:2], 1)[1][0, 0] in (ids[1], 10**6 + 1)


def test_below_the_training_size_it_is_exact(tmp_path) -> None:
    vectors = cgd_like(300, seed=4)
    ids = np.arange(300, dtype=np.int64)
    index = filled("prefix:HNSW", ids, vectors, tmp_path)
    assert index.exact_fallback and index.factory == "Flat" and index.maintenance() is None
    queries = cgd_like(5, seed=5)
    np.testing.assert_array_equal(index.search(queries, 7)[1], exact(queries, ids, vectors, 7))


def test_the_gallery_serves_a_prefix_kind_with_filters_deletes_versions_and_restarts(tmp_path,
                                                                                    new_items) -> None:
    root = tmp_path / "g"
    vectors, other = cgd_like(N, seed=1), cgd_like(N, seed=3)
    queries = cgd_like(5, seed=2)
    with Gallery.open(root, index_kind="prefix:Flat", k_factor=N) as gallery:
        items = gallery.add(new_items(N, shared_image=True), {"v1": vectors, "v2": other})
        ids = np.asarray([item.id for item in items])
        gallery.search(queries[:1], 1)
        stats = gallery.index_stats()  # trained once N items came; /ready shows these
        assert stats.factory.startswith(f"prefix{BRANCH}:Flat x") and stats.coarse_dim == BRANCH
        _, hits = gallery.search(queries, 10, label="cat")
        cats = np.asarray([item.id for item in items if item.label == "cat"])
        expected = exact(queries, cats, vectors[np.isin(ids, cats)], 10)
        assert [[hit.item.id for hit in row] for row in hits] == expected.tolist()
        first = hits[0][0].item.id
        gallery.delete(first)
        _, hits = gallery.search(queries[:1], 10, version="v2")
        assert first not in [hit.item.id for hit in hits[0]]
        gallery.activate("v2")
        gallery.activate("v1")  # rollback
    with Gallery.open(root, index_kind="prefix:Flat", k_factor=N) as gallery:
        _, hits = gallery.search(queries, 10, label="cat")
        assert first not in [hit.item.id for row in hits for hit in row]
        kept = cats[cats != first]
        assert [[hit.item.id for hit in row] for row in hits] == exact(
            queries, kept, vectors[np.isin(ids, kept)], 10).tolist()
        _, hits = gallery.search(queries, 10, qe_n=2)
        assert all(len(row) == 10 for row in hits)
    leftovers = [p.name for p in (root / "faiss").iterdir() if p.name.startswith(".")]
    assert leftovers == []
