"""SearchBatcher over a real gallery (SQLite + FAISS) through the real gateway: batching, bounds, filters."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from index import MetadataFilter, NewItem
from service.errors import Overloaded
from service.gallery_gateway import GalleryGateway
from service.search_batcher import SearchBatcher, SearchOptions

DIM = 16


def unit(rows: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def open_gallery(root: Path, threads: int = 1) -> tuple[GalleryGateway, np.ndarray]:
    gateway = await GalleryGateway.open(root, threads=threads)
    vectors = unit(20)
    items = [NewItem(image=f"img-{i}".encode(), metadata={"shop": "north" if i % 2 else "south", "n": i})
             for i in range(20)]
    await gateway.add(items, {"v1": vectors})
    return gateway, vectors


async def hold_executor(gateway: GalleryGateway) -> tuple[threading.Event, asyncio.Future]:
    """Occupy the gateway's only thread until the event is set."""
    release, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(30)

    held = asyncio.ensure_future(gateway.run(hold))
    while not started.is_set():
        await asyncio.sleep(0.001)
    return release, held


def test_queries_waiting_together_share_one_search_of_at_most_max_batch(tmp_path):
    async def scenario() -> tuple[list[int], list[list[int]]]:
        gateway, vectors = await open_gallery(tmp_path / "g")
        sizes: list[int] = []
        batcher = SearchBatcher(gateway, max_batch=3, max_queue=100, on_batch=sizes.append)
        batcher.start()
        release, held = await hold_executor(gateway)
        options = SearchOptions("v1")
        pending = [asyncio.ensure_future(batcher.search(vectors[i], 1, options)) for i in range(7)]
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(*pending)
        await held
        await batcher.stop()
        await gateway.close()
        return sizes, [[hit.item.id for hit in hits] for hits in results]

    sizes, results = asyncio.run(scenario())
    assert sizes == [3, 3, 1]  # seven queries waiting: searches of at most max_batch, in arrival order
    assert results == [[i + 1] for i in range(7)]  # each query finds its own item (ids start at 1)


def test_a_full_queue_answers_overloaded(tmp_path):
    async def scenario() -> None:
        gateway, vectors = await open_gallery(tmp_path / "g")
        batcher = SearchBatcher(gateway, max_batch=8, max_queue=2)
        batcher.start()
        release, held = await hold_executor(gateway)
        options = SearchOptions("v1")
        first = asyncio.ensure_future(batcher.search(vectors[0], 1, options))
        await asyncio.sleep(0.01)  # taken by the batcher: waiting for the executor, out of the queue
        queued = [asyncio.ensure_future(batcher.search(vectors[i], 1, options)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as refused:
            await batcher.search(vectors[3], 1, options)
        assert refused.value.status_code == 503 and refused.value.headers["Retry-After"]
        release.set()
        assert [len(hits) for hits in await asyncio.gather(first, *queued)] == [1, 1, 1]
        assert len(await batcher.search(vectors[3], 1, options)) == 1  # room again
        await held
        await batcher.stop()
        await gateway.close()

    asyncio.run(scenario())


def test_equal_filters_share_a_search_and_filter_it(tmp_path):
    async def scenario() -> tuple[list[int], list[set[str]]]:
        gateway, vectors = await open_gallery(tmp_path / "g")
        sizes: list[int] = []
        batcher = SearchBatcher(gateway, max_batch=16, max_queue=16, on_batch=sizes.append)
        batcher.start()
        release, held = await hold_executor(gateway)
        first = asyncio.ensure_future(batcher.search(vectors[0], 1, SearchOptions("v1")))
        await asyncio.sleep(0.01)
        north = [SearchOptions("v1", metadata=MetadataFilter.of({"shop": "north", "n": n})) for n in (1, 3)]
        same = SearchOptions("v1", metadata=MetadataFilter.of({"n": 5, "shop": "north"}))
        pending = [asyncio.ensure_future(batcher.search(vectors[0], 20, options))
                   for options in (*north, same, same)]
        await asyncio.sleep(0.01)
        release.set()
        await first
        results = await asyncio.gather(*pending)
        await held
        await batcher.stop()
        await gateway.close()
        return sizes, [{hit.item.metadata["shop"] + str(hit.item.metadata["n"]) for hit in hits}
                       for hits in results]

    sizes, results = asyncio.run(scenario())
    assert sorted(sizes) == [1, 1, 1, 2]  # one search per distinct filter; key order does not matter
    assert results == [{"north1"}, {"north3"}, {"north5"}, {"north5"}]
