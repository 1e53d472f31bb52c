"""Benchmark of the gallery's vector backends on the same synthetic vectors as index_bench.py: FAISS in
the process, pgvector in a real PostgreSQL (pgserver's binaries, started here in a temporary directory)
and Milvus Lite (a local file), each through the `VectorBackend` / `VectorIndex` the gallery uses.

Per backend and kind: build time (adding every vector in 10,000-vector batches, plus what the backend
does when the gallery saves it: pgvector creates its HNSW graph then), the latency of adding 100 more
(median of 5 adds), single-query search latency (median and p95 of `--singles`) and recall@10 against
exact search (`--queries` queries); each row names the index actually built (`factory`). The CPU model,
its AVX flags and the load average before and after every row are recorded.

Filtered search (the pgvector and Milvus rows): item i has the label `label-<i % 100>` and the metadata
{"half": i % 2}, in an `items` table beside the pgvector table (what the store holds) and in each Milvus
collection's copy. For a label filter (1 % of the items) and a metadata filter (50 %), the single-query
latency and recall@10 against the exact filtered top-10 (over `--filtered-singles` queries, fewer once a
way has taken `--filtered-budget-s`), twice: as the filter (`ItemFilter`: a join with `items` on pgvector,
a Milvus expression over the copy) and as the matching ids (`id = ANY(...)`, `id in [...]`; the store's
query for them is not counted). What the gallery sends: pgvector always gets the filter; Milvus gets
the ids when at most `MilvusIndex.exact_filter_limit` (4,096) items match (the label filter here: then
scored exactly), else the filter, but on Milvus Lite metadata filters go as ids
(`MilvusBackend.json_filters`; its JSON-path expressions are not measured: seconds a query). Milvus
rows also time the check of the copy against the items that the gallery runs when an index starts
serving (`sync_attributes()`): with the store's change numbers (nothing changed) and in full (no
change numbers), and an unfiltered search asking for every field (pymilvus's default, which the index
no longer uses: it asks for the ids only).

    /work/notes/cpu bench .venv/bin/python benchmarks/backend_bench.py --n 100000 --out /tmp/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index_bench import ClusteredVectors, cpu_model, exact_top10, load_average

from index.faiss_index import FaissBackend
from index.filters import ItemFilter, MetadataFilter
from index.kinds import IndexSpec
from index.postgres import PostgresSettings
from index.records import Item

ROWS = {  # name -> (backend, kind)
    "faiss-flat": ("faiss", "Flat"),
    "faiss-hnsw": ("faiss", "HNSW"),
    "pgvector-hnsw": ("pgvector", "HNSW"),
    "milvus-lite-hnsw": ("milvus", "HNSW"),
    "milvus-lite-flat": ("milvus", "Flat"),
}
BATCH = 10_000
FILTERS = {  # name -> (the filter, which ids (N,) it keeps)
    "label 1%": (ItemFilter("label-7"), lambda ids: ids % 100 == 7),
    "metadata 50%": (ItemFilter(None, MetadataFilter.of({"half": 1})), lambda ids: ids % 2 == 1),
}


def synthetic_items(ids: Any) -> dict[int, Item]:
    """The items the Milvus collections copy labels and metadata from (the store's part in the gallery)."""
    return {int(i): Item(int(i), None, f"label-{int(i) % 100}", {"half": int(i) % 2}, "", 0.0) for i in ids}


def no_changes(since: int | None) -> tuple[int, np.ndarray]:
    """The store's numbered label / metadata changes: none (`ItemStore.attribute_changes`)."""
    return 0, np.zeros(0, dtype=np.int64)


def items_table(backend: Any, n: int) -> None:
    """An `items` table beside the pgvector table, with the synthetic labels and metadata and the store's
    indexes on them, for pgvector's filters to join."""
    with backend.connection() as conn:
        conn.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, label TEXT, metadata JSONB NOT NULL)")
        with conn.cursor() as cur, cur.copy("COPY items (id, label, metadata) FROM STDIN") as copy:
            for i in range(n):
                copy.write_row((i, f"label-{i % 100}", json.dumps({"half": i % 2})))
        conn.execute("CREATE INDEX ON items (label)")
        conn.execute("CREATE INDEX ON items USING GIN (metadata jsonb_path_ops)")
        conn.execute("ANALYZE items")


def exact_filtered_top10(data: ClusteredVectors, queries: np.ndarray, keeps: Any) -> np.ndarray:
    """Ids (Q,10) of the exact inner-product top-10 among the ids `keeps` keeps."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for ids, vectors in data.chunks():
        kept = keeps(ids)
        scores = np.hstack([best_scores, queries @ vectors[kept].T])
        all_ids = np.hstack([best_ids, np.broadcast_to(ids[kept], (len(queries), int(kept.sum())))])
        keep = np.argsort(-scores, axis=1)[:, :10]
        best_scores, best_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(all_ids, keep, 1)
    return best_ids


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(t)) / 10
                                for f, t in zip(found.tolist(), truth.tolist(), strict=True)])), 4)


def filtered_rows(index: Any, data: ClusteredVectors, queries: np.ndarray, singles: int,
                  budget_s: float) -> dict[str, Any]:
    """Per filter: latency and recall@10 as a Milvus expression and as an id list, over up to `singles`
    queries (fewer once a way has taken `budget_s` seconds, at least 3), the recall over those queries."""
    every_id = index.ids()
    queries = queries[:singles]
    results: dict[str, Any] = {}
    for name, (where, keeps) in FILTERS.items():
        truth = exact_filtered_top10(data, queries, keeps)
        row: dict[str, Any] = {"expression": index.can_filter(where)}
        ways = (("expression", where),) if row["expression"] else ()
        for way, allowed in (*ways, ("ids", every_id[keeps(every_id)])):
            latencies: list[float] = []
            began = time.perf_counter()
            for query in queries:
                if len(latencies) >= 3 and time.perf_counter() - began > budget_s:
                    break
                started = time.perf_counter()
                index.search(query[None, :], 10, allowed)
                latencies.append(1000 * (time.perf_counter() - started))
            timed = len(latencies)
            row[f"{way}_queries"] = timed
            row[f"{way}_ms_median"] = round(statistics.median(latencies), 2)
            row[f"{way}_ms_p95"] = round(float(np.percentile(latencies, 95)), 2)
            row[f"{way}_recall_at_10"] = recall_at_10(index.search(queries[:timed], 10, allowed)[1],
                                                      truth[:timed])
        results[name] = row
    return results


def cpu_flags() -> list[str]:
    with open("/proc/cpuinfo") as handle:
        flags = next((line for line in handle if line.startswith("flags")), ": ").split(":", 1)[1].split()
    return sorted(flag for flag in flags if flag.startswith(("avx", "amx")))


def make_backend(backend: str, kind: str, workdir: Path, postgres_url: str | None) -> Any:
    if backend == "faiss":
        return FaissBackend(IndexSpec.parse(kind))
    if backend == "pgvector":
        from index.pgvector_index import PgvectorBackend

        assert postgres_url is not None
        return PgvectorBackend.open(PostgresSettings(postgres_url, statement_timeout_s=3600), kind,
                                    workdir / "pointers")
    from index.milvus_index import MilvusBackend

    return MilvusBackend.open(str(workdir / f"bench-{kind}.db"), kind, workdir / "pointers", synthetic_items,
                              changes=no_changes)


def bench_row(name: str, data: ClusteredVectors, queries: np.ndarray, truth: np.ndarray, singles: int,
              filtered_singles: int, filtered_budget_s: float, workdir: Path,
              postgres_url: str | None) -> dict[str, Any]:
    backend_name, kind = ROWS[name]
    row: dict[str, Any] = {"row": name, "backend": backend_name, "kind": kind, "n": data.n, "dim": data.dim,
                           "load_before": load_average()}
    backend = make_backend(backend_name, kind, workdir, postgres_url)
    try:
        started = time.perf_counter()
        index = backend.create(data.dim, data.n, None)
        for ids, vectors in data.chunks():
            for start in range(0, len(ids), BATCH):
                index.add(ids[start:start + BATCH], vectors[start:start + BATCH])
        row["load_s"] = round(time.perf_counter() - started, 1)
        index.save(workdir / "pointers" / f"{name}.index", {"bench": name})  # pgvector builds HNSW here
        row["build_s"] = round(time.perf_counter() - started, 1)
        row["factory"] = index.factory
        extra = data.extra(500, stream=5)
        adds = []
        for i in range(5):
            t = time.perf_counter()
            index.add(np.arange(data.n + 100 * i, data.n + 100 * (i + 1), dtype=np.int64),
                      extra[100 * i:100 * (i + 1)])
            adds.append(1000 * (time.perf_counter() - t))
        row["add100_ms_median"] = round(statistics.median(adds), 1)
        index.remove(np.arange(data.n, data.n + 500, dtype=np.int64))
        latencies = []
        for query in queries[:singles]:
            t = time.perf_counter()
            index.search(query[None, :], 10)
            latencies.append(1000 * (time.perf_counter() - t))
        row["search_ms_median"] = round(statistics.median(latencies), 2)
        row["search_ms_p95"] = round(float(np.percentile(latencies, 95)), 2)
        _, found = index.search(queries, 10)
        row["recall_at_10"] = recall_at_10(found, truth)
        if backend_name == "milvus":
            row.update(milvus_extras(backend, index, queries[:singles]))
        if backend_name == "pgvector":
            items_table(backend, data.n)
        if backend_name != "faiss":
            row["filtered"] = filtered_rows(index, data, queries, filtered_singles, filtered_budget_s)
        index.release()
    finally:
        backend.close()
    row["load_after"] = load_average()
    return row


def milvus_extras(backend: Any, index: Any, queries: np.ndarray) -> dict[str, Any]:
    """The copy's check with change numbers and in full, and unfiltered searches asking for every field."""
    extras: dict[str, Any] = {}
    for way, changes in (("numbered", no_changes), ("full", None)):
        backend.changes = changes
        started = time.perf_counter()
        extras[f"attribute_check_{way}_rewritten"] = index.sync_attributes()
        extras[f"attribute_check_{way}_s"] = round(time.perf_counter() - started, 2)
    backend.changes = no_changes
    latencies = []
    for query in queries:
        started = time.perf_counter()
        backend.call("search", index.collection, data=[query], limit=10, anns_field="vector",
                     search_params={"metric_type": "IP", "params": {"ef": backend.ef_search}})
        latencies.append(1000 * (time.perf_counter() - started))
    extras["search_all_fields_ms_median"] = round(statistics.median(latencies), 2)
    return extras


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--queries", type=int, default=100, help="queries for recall@10")
    parser.add_argument("--singles", type=int, default=100, help="single-query searches timed")
    parser.add_argument("--filtered-singles", type=int, default=30,
                        help="single-query filtered searches timed per filter and way (Milvus rows)")
    parser.add_argument("--filtered-budget-s", type=float, default=40.0,
                        help="seconds after which a filter's way stops timing more queries (at least 3)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--faiss-threads", type=int, default=1,
                        help="FAISS OpenMP threads (1: on a shared, loaded machine spinning threads make "
                             "FAISS 10-20x slower, as tests/index/conftest.py notes)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.faiss_threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a timeout's TERM still stops the PostgreSQL
    data = ClusteredVectors(args.n, args.dim)
    queries = data.extra(args.queries, stream=0)
    truth = exact_top10(data, queries)
    facts = {"cpu": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count(), "n": args.n, "dim": args.dim,
             "faiss_threads": args.faiss_threads}
    print(json.dumps(facts), flush=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cgd-backend-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # pgserver runs PostgreSQL as a user of its own when started as root
        server = None
        if any(ROWS[name][0] == "pgvector" for name in args.rows):
            import pgserver

            server = pgserver.get_server(workdir / "postgres", cleanup_mode="stop")
        try:
            for name in args.rows:
                url = server.get_uri() if server is not None else None
                row = bench_row(name, data, queries, truth, args.singles, args.filtered_singles,
                                args.filtered_budget_s, workdir, url)
                print(json.dumps(row), flush=True)
                results.append(row)
        finally:
            if server is not None:
                server.cleanup()
    if args.out is not None:
        args.out.write_text(json.dumps({"facts": facts, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
