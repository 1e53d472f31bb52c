"""What Milvus Lite (milvus-lite 3.x, pure Python in this process) searches with, and where its time goes.

Loads `--n` synthetic 1536-d vectors (index_bench's `ClusteredVectors`) into a collection through the
gallery's `MilvusIndex` (10,000-vector batches, then `save`: flush and reload), then times single-query
searches (median of `--singles`) at three moments, per kind (HNSW, Flat):
  - `after_save`: right after `save` returned, as the backend benchmark measured;
  - `after_background`: once Milvus Lite's background worker (compaction of the flushed segments, then
    the index of each merged segment) has finished (`Collection._wait_for_bg`, an internal call, used
    here only to observe);
  - the segments and which of them carry a vector index at each moment.
It also times the same search with `limit` 1 and 100 (the per-row Python work Milvus Lite does per query
does not depend on k), filtered searches among 1% and 50% of the ids (sent as `id in [...]`), and exact
search in NumPy over the same vectors (the arithmetic alone).

    /work/notes/cpu bench .venv/bin/python benchmarks/milvus_lite_probe.py --n 50000 --out /tmp/mlp.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index_bench import ClusteredVectors, cpu_model, load_average

from index.milvus_index import MilvusBackend

BATCH = 10_000


def segments(uri: str, collection: str) -> list[dict[str, Any]]:
    """Each segment of the collection: rows and whether it has a vector index (Milvus Lite internals)."""
    from milvus_lite.server_manager import server_manager_instance

    _, db, _ = server_manager_instance._servers[str(Path(uri).resolve())]
    lite = db.get_collection(collection)
    return [{"rows": int(seg.num_rows), "indexed": "vector" in seg.indexes}
            for seg in lite._segments_snapshot()]


def wait_for_background(uri: str, collection: str) -> float:
    from milvus_lite.server_manager import server_manager_instance

    _, db, _ = server_manager_instance._servers[str(Path(uri).resolve())]
    started = time.perf_counter()
    db.get_collection(collection)._wait_for_bg()
    return time.perf_counter() - started


def time_search(index: Any, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> float:
    """Median ms of one-query searches (among the `allowed` ids when given)."""
    times = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None, :], k, allowed)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


def probe(kind: str, data: ClusteredVectors, queries: np.ndarray, workdir: Path) -> dict[str, Any]:
    uri = str(workdir / f"probe-{kind}.db")
    backend = MilvusBackend.open(uri, kind, workdir / "pointers", lambda ids: {})  # no labels, no metadata
    row: dict[str, Any] = {"kind": kind, "load_before": load_average()}
    try:
        index = backend.create(data.dim, data.n, None)
        started = time.perf_counter()
        for ids, vectors in data.chunks():
            for start in range(0, len(ids), BATCH):
                index.add(ids[start:start + BATCH], vectors[start:start + BATCH])
        index.save(workdir / "pointers" / f"{kind}.index", {})
        row["build_s"] = round(time.perf_counter() - started, 1)
        row["factory"] = index.factory
        row["segments_after_save"] = segments(uri, index.collection)
        row["search_ms_after_save"] = time_search(index, queries, 10)
        row["background_wait_s"] = round(wait_for_background(uri, index.collection), 1)
        row["segments_after_background"] = segments(uri, index.collection)
        row["search_ms_after_background"] = time_search(index, queries, 10)
        row["search_ms_k1"] = time_search(index, queries, 1)
        row["search_ms_k100"] = time_search(index, queries, 100)
        for share in (0.01, 0.5):  # a filter: the allowed ids go to Milvus as `id in [...]`
            allowed = np.arange(0, data.n, round(1 / share), dtype=np.int64)
            row[f"search_ms_filter_{len(allowed)}_ids"] = time_search(index, queries, 10, allowed)
    finally:
        backend.close()
    row["load_after"] = load_average()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--singles", type=int, default=30)
    parser.add_argument("--kinds", default="HNSW,Flat")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = ClusteredVectors(args.n, args.dim)
    queries = data.extra(args.singles, stream=1)
    everything = np.concatenate([vectors for _, vectors in data.chunks()])
    times = []
    for query in queries:
        started = time.perf_counter()
        np.argpartition(-(everything @ query), 10)[:10]
        times.append((time.perf_counter() - started) * 1000)
    report: dict[str, Any] = {"cpu": cpu_model(), "n": args.n, "dim": args.dim,
                              "numpy_exact_ms": round(statistics.median(times), 1), "rows": []}
    del everything
    with tempfile.TemporaryDirectory(prefix="milvus-probe-") as tmp:
        for kind in args.kinds.split(","):
            report["rows"].append(probe(kind, data, queries, Path(tmp)))
            print(json.dumps(report["rows"][-1]), flush=True)
    print(json.dumps(report, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
