"""Compaction on a real Gallery: deletes past the threshold rebuild the index in the background while
searches and adds go on; nothing is lost, no deleted item is ever returned, and the tombstones go; the
heap the old index freed goes back to the operating system."""

from __future__ import annotations

import ctypes.util
import os
import threading
import time

import numpy as np
import pytest

from index import NewItem
from index.compaction import release_freed_memory

N, D = 1200, 32
DELETED = 2 * N // 5  # past the compaction threshold (a quarter of the index)


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["HNSW", "prefix:HNSW"])  # prefix: full vectors read from an open file
def test_compaction_under_concurrent_searches_and_adds_loses_nothing(open_gallery, kind: str) -> None:
    gallery = open_gallery(index_kind=kind)
    rng = np.random.default_rng(0)
    items = gallery.add([NewItem(b"x", metadata={"i": i}) for i in range(N)], {"v1": unit_rows(rng, N)})
    deleted: set[int] = set()
    errors: list[BaseException] = []
    returned_deleted: list[int] = []
    added: list[int] = []
    stop = threading.Event()

    def search(seed: int) -> None:
        local = np.random.default_rng(seed)
        queries = unit_rows(local, 64)
        while not stop.is_set():
            gone = set(deleted)  # deleted before this search began: must never come back
            try:
                _, hits = gallery.search(queries[local.integers(0, 64, 4)], 10)
            except BaseException as exc:  # any failure of a search fails the test
                errors.append(exc)
                return
            returned_deleted.extend(hit.item.id for row in hits for hit in row if hit.item.id in gone)

    def add() -> None:
        local = np.random.default_rng(4)
        while not stop.is_set():
            try:
                new = gallery.add([NewItem(b"y") for _ in range(5)], {"v1": unit_rows(local, 5)})
            except BaseException as exc:
                errors.append(exc)
                return
            added.extend(item.id for item in new)
            time.sleep(0.01)

    threads = [threading.Thread(target=search, args=(seed,)) for seed in (1, 2)]
    threads.append(threading.Thread(target=add))
    for thread in threads:
        thread.start()
    try:
        for item in items[:DELETED]:
            gallery.delete(item.id)
            deleted.add(item.id)
        gallery._registry._compactions.wait("v1", timeout=60)  # the compaction the deletes started
        freed = gallery.index_stats().tombstones < len(deleted)
        stats = gallery.compact(wait=True)  # and one on demand, still under traffic
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert errors == [] and returned_deleted == []
    assert freed and stats.tombstones == 0
    assert stats.vectors == gallery.count() == N - len(deleted) + len(added)
    kept = [item.id for item in items[DELETED:]] + added
    _, hits = gallery.search(np.stack([gallery.vector(i) for i in kept[:: 25]]), 1)
    assert [row[0].item.id for row in hits] == kept[:: 25]  # every kept item is still found


def test_compact_on_demand_frees_the_tombstones_of_a_prefix_kind(open_gallery) -> None:
    gallery = open_gallery(index_kind="prefix:HNSW")
    rng = np.random.default_rng(3)
    items = gallery.add([NewItem(b"x") for _ in range(N)], {"v1": unit_rows(rng, N)})
    for item in items[:100]:
        gallery.delete(item.id)
    assert gallery.index_stats().tombstones == 100  # below the threshold: held
    stats = gallery.compact()
    assert stats.tombstones == 0 and stats.vectors == N - 100


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not ctypes.util.find_library("c") or not os.path.exists("/proc/self/statm"),
                    reason="needs glibc and /proc (Linux)")
def test_freed_heap_memory_goes_back_to_the_system() -> None:
    blocks, pins = [], []
    for i in range(2048):  # 64 KiB each, below any mmap threshold: 128 MiB from the heap
        blocks.append(np.ones(8192))
        if i % 64 == 63:
            pins.append(np.ones(8192))  # so each freed run of blocks sits inside the heap, not at its top
    del blocks  # free for malloc but still resident: glibc gives back only the top of the heap by itself
    freed = resident_bytes()
    assert release_freed_memory()
    assert freed - resident_bytes() > 100 * 2**20
    assert len(pins) == 32
