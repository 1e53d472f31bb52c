"""Snapshot files: a round trip keeps the index and the metadata; any damage is SnapshotCorrupt."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index.errors import SnapshotCorrupt
from index.snapshots import MAGIC, read_snapshot, write_snapshot


@pytest.fixture
def flat(unit_vectors) -> tuple[faiss.Index, np.ndarray]:
    vectors = unit_vectors(50, 16)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    index.add_with_ids(vectors, np.arange(100, 150, dtype=np.int64))
    return index, vectors


def test_a_snapshot_round_trip_keeps_the_index_and_the_metadata(tmp_path, flat):
    index, vectors = flat
    path = tmp_path / "faiss" / "v1.index"
    write_snapshot(path, index, {"version": "v1", "dim": 16})
    write_snapshot(path, index, {"version": "v1", "dim": 16, "again": True})  # replaces it atomically
    loaded, meta = read_snapshot(path)
    assert meta == {"version": "v1", "dim": 16, "again": True}
    assert loaded.ntotal == 50
    expected, got = index.search(vectors[:5], 3), loaded.search(vectors[:5], 3)
    np.testing.assert_array_equal(expected[1], got[1])
    np.testing.assert_allclose(expected[0], got[0])
    assert [p.name for p in path.parent.iterdir()] == ["v1.index"]  # no temporary file left


@pytest.mark.parametrize("damage", ["flip a payload byte", "truncate", "drop the end marker",
                                    "not a snapshot", "missing", "empty"])
def test_a_damaged_snapshot_is_refused(tmp_path, flat, damage):
    path = tmp_path / "v1.index"
    write_snapshot(path, flat[0], {"version": "v1"})
    data = bytearray(path.read_bytes())
    if damage == "flip a payload byte":
        data[len(MAGIC) + 100] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "drop the end marker":
        data = data[:-3]
    elif damage == "not a snapshot":
        data[:len(MAGIC)] = b"X" * len(MAGIC)
    elif damage == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))
    if damage == "missing":
        path.unlink()
    with pytest.raises(SnapshotCorrupt):
        read_snapshot(path)
