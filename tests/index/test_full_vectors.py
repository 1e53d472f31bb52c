"""FullVectors on real files: the id -> row lookups (dense table and sorted ids) agree through adds and
removals, rows come back as written (float16, converted exactly) through one descriptor kept open,
a saved state loads again, and `best_rows` ranks float16 rows exactly."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pytest

from index.full_vectors import FullVectors, best_rows, to_float32

D = 16


def rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, D)).astype(np.float32)


def test_float16_rows_are_converted_exactly() -> None:
    halves = np.array([[0.0, -0.0, 1.0, -2.5, 6e-8, -6e-8, 6.1e-5, 65504.0]], np.float16)
    halves = np.vstack([halves, np.random.default_rng(0).standard_normal((99, 8)).astype(np.float16)])
    converted = to_float32(halves)
    assert converted.dtype == np.float32
    np.testing.assert_array_equal(converted, halves.astype(np.float32))
    assert np.signbit(converted[0, 1]) and converted[0, 4] > 0  # -0 and the subnormals kept
    assert to_float32(np.zeros((0, 8), np.float16)).shape == (0, 8)


@pytest.mark.parametrize("on_disk", [True, False])
@pytest.mark.parametrize("id_base", [0, 10**12], ids=["dense ids", "sparse ids"])
def test_lookups_follow_adds_and_removals(on_disk: bool, id_base: int, tmp_path) -> None:
    rng = np.random.default_rng(1)
    vectors = FullVectors.create(D, 8, tmp_path if on_disk else None)
    expected: dict[int, np.ndarray] = {}

    def add(ids: np.ndarray) -> None:
        new = rows(rng, len(ids))
        vectors.add(ids, new)
        expected.update(zip(ids.tolist(), new.astype(np.float16).astype(np.float32), strict=True))

    def check(absent: np.ndarray) -> None:
        known = np.array(sorted(expected))
        np.testing.assert_array_equal(vectors.ids(), known)
        asked = np.concatenate([known, absent, np.array([-1, id_base + 10**7])])
        found = vectors.rows_of(asked.reshape(2, -1) if len(asked) % 2 == 0 else asked).reshape(-1)
        assert np.all(found[:len(known)] >= 0) and np.all(found[len(known):] == -1)
        np.testing.assert_array_equal(vectors.gather(found[:len(known)]),
                                      np.stack([expected[i] for i in known.tolist()]))

    add(id_base + np.arange(0, 3000))
    check(id_base + np.array([3000]))  # the lookup exists from here on, and must follow every change
    add(id_base + np.arange(3000, 3100))  # in order, inside the dense table
    removed = id_base + np.array([0, 17, 2999, 3050])
    assert vectors.remove(np.concatenate([removed, id_base + np.array([5_000_000])])) == len(removed)
    for gone in removed.tolist():
        del expected[gone]
    check(removed)
    add(id_base + np.array([9000, 5, 7000]) + 100_000)  # out of order and far beyond the table's end
    assert vectors.remove(id_base + np.array([109_000])) == 1
    del expected[id_base + 109_000]
    check(np.concatenate([removed, id_base + np.array([109_000, 3100])]))
    assert len(vectors) == len(expected) and vectors.dead == len(removed) + 1


def test_a_saved_state_loads_with_its_removals(tmp_path) -> None:
    rng = np.random.default_rng(2)
    vectors = FullVectors.create(D, 4, tmp_path)
    data = rows(rng, 50)
    vectors.add(np.arange(50), data)
    vectors.remove(np.arange(0, 50, 5))
    vectors_file, row_ids_file = vectors.save(tmp_path / "v.index")
    loaded = FullVectors.load(tmp_path / vectors_file, tmp_path / row_ids_file, D, vectors.rows)
    kept = np.setdiff1d(np.arange(50), np.arange(0, 50, 5))
    np.testing.assert_array_equal(loaded.ids(), kept)
    np.testing.assert_array_equal(loaded.gather(loaded.rows_of(kept)),
                                  data[kept].astype(np.float16).astype(np.float32))


def open_descriptors(path: Path) -> int:
    """How many of this process's file descriptors are open on `path`."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path.resolve()))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")
def test_the_file_is_opened_once_and_reads_stay_right_through_growth_removals_and_saves(tmp_path) -> None:
    rng = np.random.default_rng(3)
    vectors = FullVectors.create(D, 4, tmp_path)  # room for 1024 rows: the adds below grow the file
    data = rows(rng, 3000)
    vectors.add(np.arange(1000), data[:1000])
    assert open_descriptors(vectors.path) == 1
    for start in range(1000, 3000, 500):
        vectors.add(np.arange(start, start + 500), data[start:start + 500])
        vectors.gather(vectors.rows_of(np.arange(0, start, 7)))
    vectors.remove(np.arange(0, 3000, 3))
    vectors.save(tmp_path / "v.index")  # renames the file under the open descriptor
    vectors.add(np.arange(3000, 3010), data[:10])
    assert open_descriptors(vectors.path) == 1
    kept = np.setdiff1d(np.arange(3010), np.arange(0, 3000, 3))
    expected = np.vstack([data, data[:10]])[kept].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(vectors.gather(vectors.rows_of(kept)), expected)
    path = vectors.path
    del vectors
    gc.collect()
    assert open_descriptors(path) == 0


def test_best_rows_are_the_exact_top_k_of_the_float16_rows() -> None:
    rng = np.random.default_rng(4)
    halves = rows(rng, 40).astype(np.float16)
    query = rows(rng, 1)[0]
    exact = halves.astype(np.float64) @ query.astype(np.float64)
    scores, positions = best_rows(query, halves, 10)
    np.testing.assert_array_equal(positions, np.argsort(-exact, kind="stable")[:10])
    np.testing.assert_allclose(scores, exact[positions], rtol=1e-6, atol=1e-6)
    scores, positions = best_rows(query, halves[:3], 10)  # fewer rows than k: all of them, in order
    np.testing.assert_array_equal(positions, np.argsort(-exact[:3], kind="stable"))
    assert best_rows(query, halves[:0], 10)[1].shape == (0,)
