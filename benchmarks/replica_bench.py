"""Search through 1 and 2 `cgd serve` replicas on one PostgreSQL gallery, and cross-replica visibility.

Starts a PostgreSQL server (pgserver, in a temporary directory) unless `--database-url` names one, then
replica `a` on a temporary data directory; ingests `--images` real images (round-robin over the class
folders of `--image-root`) through it; sends single-image POST /search requests from `--concurrency`
asyncio clients for `--seconds` (throughput, p50 / p99 latency, errors). Then starts replica `b` on the
same data directory and database and sends the same load spread over both (the client alternates; a load
balancer would do the same). Last, the visibility delay: `--trials` times, one new image is ingested on
`a`, and `b` is searched with it until the new item comes first; the delay runs from the 201 on `a` to
the first search on `b` that returns it (each search costs a forward pass: the figure is accurate to one
search's latency); a random pause between trials spreads them over `b`'s sync interval. Both replicas
and this client share the machine's cores.

    .venv/bin/python benchmarks/replica_bench.py --images 256 --concurrency 16 --seconds 40 \\
        --trials 20 --out /tmp/replica_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.local_service import free_port, wait_ready
from benchmarks.service_bench import ImageBytes, cpu_model, encode, read_images

HOST = "127.0.0.1"
DEFAULT_IMAGES = Path("/work/shared/data/caltech101/images")
INGEST_FILES = 32


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """`url`, or a fresh pgserver database for the run (removed afterwards)."""
    if url is not None:
        yield url
        return
    import pgserver

    directory = Path(tempfile.mkdtemp(prefix="cgd-replica-bench-pg-"))
    server = pgserver.get_server(directory, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


def start_replica(name: str, data_dir: Path, url: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`cgd serve` as replica `name`; returns the process and its base URL once /ready answers."""
    port = free_port()
    env = {**os.environ, "CGD_DATABASE_URL": url, "CGD_REPLICA_ID": name}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--host", HOST, "--port",
                                    str(port), "--data-dir", str(data_dir)], stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[1])
    base = f"http://{HOST}:{port}"
    with httpx.Client(base_url=base, timeout=30.0, trust_env=False) as client:
        wait_ready(client, process)
    return process, base


async def search_load(bases: list[str], queries: list[ImageBytes], concurrency: int, seconds: float) -> dict:
    """`concurrency` workers send single-image searches for `seconds`, worker w to replica w % len."""
    bodies = [encode("/search", image) for image in queries]
    latencies: list[float] = []
    errors = 0
    sent = 0
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=120.0,
                                                                     trust_env=False)) for base in bases]
        started = time.perf_counter()
        deadline = started + seconds

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal sent, errors
            while time.perf_counter() < deadline:
                body, headers = bodies[sent % len(bodies)]
                sent += 1
                began = time.perf_counter()
                try:
                    ok = (await client.post("/search", content=body, headers=headers)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(1000 * (time.perf_counter() - began))
                else:
                    errors += 1

        await asyncio.gather(*(worker(clients[w % len(clients)]) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]
    return {"replicas": len(bases), "concurrency": concurrency, "seconds": round(elapsed, 1),
            "searches": len(latencies), "errors": errors, "per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(statistics.median(ordered), 1),
            "p99_ms": round(float(np.percentile(ordered, 99)), 1), "load1": round(os.getloadavg()[0], 2)}


def visibility(a: str, b: str, images: list[ImageBytes], trials: int) -> dict:
    """Seconds from the 201 of an ingest on `a` to the first search on `b` that ranks the item first."""
    delays, searches = [], []
    pause = random.Random(0)
    with httpx.Client(base_url=a, timeout=60.0, trust_env=False) as on_a, \
            httpx.Client(base_url=b, timeout=60.0, trust_env=False) as on_b:
        for image in images[:trials]:
            added = on_a.post("/gallery", files={"files": (image.name, image.data)})
            acknowledged = time.perf_counter()
            item_id = added.json()["items"][0]["id"]
            tries = 0
            while True:
                tries += 1
                hits = on_b.post("/search", files={"file": (image.name, image.data)}, data={"k": "1"}).json()
                if hits["results"] and hits["results"][0]["id"] == item_id:
                    break
                if time.perf_counter() - acknowledged > 30:
                    raise RuntimeError(f"item {item_id} not visible on b after 30 s")
            delays.append(time.perf_counter() - acknowledged)
            searches.append(tries)
            time.sleep(pause.uniform(0.0, 1.0))  # the next ingest lands at a random point of b's sync
            # interval (a fixed pause locks the trials to one phase of it)
    ordered = sorted(delays)
    return {"trials": len(delays), "median_s": round(statistics.median(ordered), 3),
            "p90_s": round(float(np.percentile(ordered, 90)), 3), "max_s": round(ordered[-1], 3),
            "searches_per_trial": round(statistics.mean(searches), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-root", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--images", type=int, default=256, help="gallery size")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=40.0, help="per search level")
    parser.add_argument("--trials", type=int, default=20, help="visibility measurements")
    parser.add_argument("--database-url", default=None, help="default: a pgserver started for the run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    images = read_images(args.image_root, args.images + 64 + args.trials)
    gallery, queries = images[:args.images], images[args.images:args.images + 64]
    fresh = images[-args.trials:]
    work = Path(tempfile.mkdtemp(prefix="cgd-replica-bench-"))
    processes: list[subprocess.Popen] = []
    report: dict = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "images": args.images, "sync_interval_s": os.environ.get("CGD_SYNC_INTERVAL_S", "0.5")}
    try:
        with postgres(args.database_url) as url:
            process, a = start_replica("a", work / "data", url, work / "a.log")
            processes.append(process)
            with httpx.Client(base_url=a, timeout=300.0, trust_env=False) as client:
                for start in range(0, len(gallery), INGEST_FILES):
                    chunk = gallery[start:start + INGEST_FILES]
                    response = client.post("/gallery", files=[("files", (i.name, i.data)) for i in chunk],
                                           data={"labels": [i.label for i in chunk]})
                    response.raise_for_status()
            asyncio.run(search_load([a], queries, 4, 5.0))  # warm-up
            report["one_replica"] = asyncio.run(search_load([a], queries, args.concurrency, args.seconds))
            print(report["one_replica"], file=sys.stderr, flush=True)
            process, b = start_replica("b", work / "data", url, work / "b.log")
            processes.append(process)
            asyncio.run(search_load([b], queries, 4, 5.0))  # warm-up
            report["two_replicas"] = asyncio.run(search_load([a, b], queries, args.concurrency, args.seconds))
            print(report["two_replicas"], file=sys.stderr, flush=True)
            report["visibility"] = visibility(a, b, fresh, args.trials)
            print(report["visibility"], file=sys.stderr, flush=True)
            for process in processes:
                process.terminate()
                process.wait(timeout=60)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
