"""ReadWriteLock between real threads; ProcessLock between open files and processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from index.errors import GalleryLocked
from index.locking import ProcessLock, ReadWriteLock

WAIT_S = 5.0


def test_readers_share_and_a_writer_is_alone():
    lock = ReadWriteLock()
    both_in = threading.Barrier(2, timeout=WAIT_S)

    def reader() -> None:
        with lock.read():
            both_in.wait()  # would time out if the readers excluded each other

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join()

    order: list[str] = []
    writer_in = threading.Event()

    def late_reader() -> None:
        with lock.read():
            order.append("reader")

    with lock.write():
        writer_in.set()
        thread = threading.Thread(target=late_reader)
        thread.start()
        time.sleep(0.05)
        order.append("writer done")
    thread.join(WAIT_S)
    assert order == ["writer done", "reader"]


def test_a_waiting_writer_goes_before_new_readers():
    lock = ReadWriteLock()
    order: list[str] = []
    first_reader_in, release_first = threading.Event(), threading.Event()

    def first_reader() -> None:
        with lock.read():
            first_reader_in.set()
            release_first.wait(WAIT_S)

    def writer() -> None:
        with lock.write():
            order.append("writer")

    def second_reader() -> None:
        with lock.read():
            order.append("reader")

    threads = [threading.Thread(target=first_reader)]
    threads[0].start()
    first_reader_in.wait(WAIT_S)
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    time.sleep(0.05)  # the writer now waits for the first reader
    threads.append(threading.Thread(target=second_reader))
    threads[2].start()
    time.sleep(0.05)
    assert order == []  # the second reader waits behind the writer, the writer behind the first reader
    release_first.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert order == ["writer", "reader"]


def test_one_process_lock_at_a_time_and_the_kernel_drops_a_dead_holder(tmp_path):
    path = tmp_path / "gallery.lock"
    held = ProcessLock(path)
    with pytest.raises(GalleryLocked, match="another process"):
        ProcessLock(path)  # another open file of the same path: refused at once
    held.release()
    ProcessLock(path).release()

    holder = subprocess.Popen(
        [sys.executable, "-c", "import pathlib, time; from index.locking import ProcessLock; "
         f"ProcessLock(pathlib.Path({str(path)!r})); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GalleryLocked):
            ProcessLock(path)
    finally:
        holder.kill()
        holder.wait()
    ProcessLock(path).release()  # the kernel released the dead process's lock
