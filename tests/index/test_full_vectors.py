"""FullVectors on real files: the id -> row lookups (dense table and sorted ids) agree through adds and
removals, rows come back as written (float16, converted exactly), and a saved state loads again."""

from __future__ import annotations

import numpy as np
import pytest

from index.full_vectors import FullVectors, to_float32

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
