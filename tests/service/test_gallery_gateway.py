"""GalleryGateway over a real gallery: every call on its one executor, the event loop left free."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from index import GalleryError, ItemNotFound, NewItem
from service.gallery_gateway import BACKGROUND_NICE, GalleryGateway

DIM = 8


def unit(rows: int) -> np.ndarray:
    vectors = np.random.default_rng(0).standard_normal((rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_calls_run_on_the_executor_threads_only(tmp_path: Path):
    async def scenario() -> tuple[set[str], int, str]:
        gateway = await GalleryGateway.open(tmp_path / "g", threads=2)
        running, peak, names = 0, 0, set()
        lock = threading.Lock()

        def work() -> None:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
                names.add(threading.current_thread().name)
            time.sleep(0.05)
            with lock:
                running -= 1

        await asyncio.gather(*(gateway.run(work) for _ in range(6)))
        loop_thread = threading.current_thread().name
        await gateway.close()
        return names, peak, loop_thread

    names, peak, loop_thread = asyncio.run(scenario())
    assert peak == 2 and len(names) == 2
    assert all(name.startswith("cgd-io") for name in names) and loop_thread not in names


def test_the_event_loop_keeps_running_while_the_gallery_works(tmp_path: Path):
    async def scenario() -> tuple[float, int]:
        gateway = await GalleryGateway.open(tmp_path / "g", threads=1)
        lags: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                before = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - before - 0.005)

        task = asyncio.create_task(ticker())
        items = [NewItem(image=f"img-{i}".encode()) for i in range(300)]
        for start in range(0, 300, 50):  # SQLite commits (synchronous=FULL), blobs, FAISS adds
            await gateway.add(items[start:start + 50], {"v1": unit(50)})
        count = await gateway.count()
        done.set()
        await task
        await gateway.close()
        return max(lags), count

    worst_lag, count = asyncio.run(scenario())
    assert count == 300
    assert worst_lag < 0.05, worst_lag


def test_read_images_leaves_out_deleted_items_and_erased_images(tmp_path: Path):
    async def scenario() -> tuple[list[int], list[bytes], list[int]]:
        gateway = await GalleryGateway.open(tmp_path / "g", threads=2)
        items = await gateway.add([NewItem(image=f"img-{i}".encode()) for i in range(5)], {"v1": unit(5)})
        ids = np.asarray([item.id for item in items], dtype=np.int64)
        await gateway.delete(int(ids[1]))
        (await gateway.image_path(int(ids[3]))).unlink()  # an image erased behind the gallery's back
        kept, data = await gateway.read_images(ids, Path.read_bytes)
        missing = (await gateway.ids_missing_vectors("v2")).tolist()
        await gateway.close()
        return kept.tolist(), data, missing

    kept, data, missing = asyncio.run(scenario())
    assert kept == [1, 3, 5] and data == [b"img-0", b"img-2", b"img-4"]
    assert missing == [1, 3, 4, 5]


class ThreadNiceness(logging.Handler):
    """Notes, for each record, the emitting thread's name and niceness (read in that thread)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[tuple[str, str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        self.seen.append((record.getMessage(), record.threadName, niceness))


@pytest.mark.skipif(sys.platform != "linux", reason="thread niceness is per thread on Linux only")
def test_prepare_builds_a_versions_index_in_a_nicer_thread_of_its_own(tmp_path: Path):
    """The new version's index is built by a `cgd-build` thread `BACKGROUND_NICE` nicer than the process;
    the executor's threads keep the process's niceness."""
    async def scenario() -> tuple[int, int]:
        gateway = await GalleryGateway.open(tmp_path / "g", threads=2)
        items = await gateway.add([NewItem(image=f"img-{i}".encode()) for i in range(6)], {"v1": unit(6)})
        await gateway.put_vectors("v2", np.asarray([item.id for item in items]), unit(6))
        await gateway.prepare("v2")
        await gateway.prepare("v3")  # no vectors yet: nothing to build, no error
        stats = await gateway.index_stats("v2")
        executor = await gateway.run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        await gateway.close()
        return stats.vectors, executor

    handler = ThreadNiceness()
    logger = logging.getLogger("index.version_index")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        size, executor = asyncio.run(scenario())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    process = os.getpriority(os.PRIO_PROCESS, 0)
    builds = [(thread, niceness) for message, thread, niceness in handler.seen if "for version v2" in message]
    assert size == 6 and executor == process
    assert builds and all(thread.startswith("cgd-build") for thread, _ in builds)
    assert all(niceness == min(19, process + BACKGROUND_NICE) for _, niceness in builds)


def test_errors_reach_the_caller_and_close_ends_the_gallery(tmp_path: Path):
    async def scenario() -> None:
        gateway = await GalleryGateway.open(tmp_path / "g", threads=1)
        with pytest.raises(ItemNotFound):
            await gateway.get(42)
        gallery = gateway.gallery
        await gateway.close()
        with pytest.raises(GalleryError):
            gallery.count()

    asyncio.run(scenario())
    asyncio.run(_reopen(tmp_path / "g"))  # the gallery's process lock was released


async def _reopen(root: Path) -> None:
    gateway = await GalleryGateway.open(root, threads=1)
    await gateway.close()
