"""Benchmark of the gallery's FAISS index kinds on synthetic clustered 1536-d unit vectors.

For each gallery size and index kind (through the backend the gallery uses: `FaissVectorIndex`, or
`PrefixVectorIndex` for `prefix:<kind>`, whose full vectors go to a file under `--workdir`):
build time (training + adding every vector), latency of adding 100 more vectors to the built index
(median and max of 5: the max includes the reallocation when a flat array outgrows its capacity),
search latency for 1 query (median and p99 of `--singles`, 1000 by default, each pass stopped after
`--singles-budget-s`: first the `--singles` searches right after the build (`search1_first_*`: they
pay the first touches of the heap, the libraries' code and the graph), then `--singles` more with
other queries, warm, the `search1_*` figures) and for 100 queries in one call (median of 3), recall@10
against exact search (100 queries), memory (resident-set growth after building and its peak during the
build, which includes the training sample and one chunk of generated vectors, and the serialised index
size; and the growth after all searches, which counts the full-vector pages a prefix kind touched).
A prefix kind's full-vector file is fsynced after the build (as the gallery's snapshot does), so no
write-back runs during the timed searches. `--cold` times its one-query searches again after dropping
the file from the kernel's page cache (POSIX_FADV_DONTNEED), so the re-ranked rows are read from disk.
`--ef-sweep EF,...` searches each built HNSW kind (a prefix kind: its coarse search) again with each
efSearch: one-query p50 / p99 over `--singles` queries of its own and recall@10 of the 100 queries.
`--compaction N` also measures memory once built, after removing half, and after the rebuild that
compaction does. `--huge-pages` starts those processes with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`:
glibc's malloc then asks for transparent huge pages (`madvise`) for its heap and mapped blocks, so
FAISS's arrays (a graph's links and codes) are held in 2 MiB pages where the kernel allows it.
`--reload` saves each built index as the gallery does and times the copy loaded from that snapshot
(what a service serves after a restart: FAISS's arrays read at their final size instead of grown
during the build); `rss_gib` and `peak_gib` still describe the build, `rss_reloaded_gib` the loaded
copy, and `rss_searched_gib` that copy after the searches.
The vectors are CGD-shaped (`--branches 3`: three L2-normalised 512-d blocks, so
prefix kinds find a first branch; 1: the plain clustered vectors). Each (size, kind) runs in a fresh
child process, so memory freed by an earlier kind (which the
allocator may keep) cannot hide the next kind's growth. Vectors are generated in chunks from fixed seeds,
so 1M x 1536 never has to sit in memory as float32 except inside a Flat index.
Optionally (`--gallery N`) the durable path is timed too: `Gallery.add` of 32-item batches (SQLite
commit + image files, fsynced) and `Gallery.search` with and without a label filter.

    .venv/bin/python benchmarks/index_bench.py --sizes 10000 --kinds Flat HNSW IVF-PQ   # a quick run
    nice -n 10 .venv/bin/python benchmarks/index_bench.py --sizes 10000,100000,1000000 \\
        --kinds Flat SQ8 HNSW HNSW-SQ8 IVF-PQ IVF-SQ8 "IVF1024,PQ64" --blas-sweep 100000,1000000 \\
        --gallery 2000 --out /tmp/index_bench.json  # everything (docs/BENCHMARKS.md: the runs made)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index import FaissVectorIndex, Gallery, IndexSpec, NewItem
from index.compaction import release_freed_memory
from index.gallery import DEFAULT_BLAS_THRESHOLD
from index.prefix_index import make_backend
from index.version_index import TRAINING_SAMPLE

LOG = logging.getLogger("index_bench")
FAISS_BLAS_THRESHOLD = int(faiss.cvar.distance_compute_blas_threshold)  # FAISS's default, read at import
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
CHUNK = 25_000
LATENT = 96


class ClusteredVectors:
    """Unit vectors of width `dim`: n/100 cluster centres in a `LATENT`-d space with a decaying spectrum,
    mapped by a fixed random matrix, plus per-item spread and isotropic noise. With `branches` > 1 each of
    that many equal blocks is L2-normalised and the whole divided by sqrt(branches), as CGD concatenates its
    branch projections (so `prefix:` kinds find a first branch). Chunk c is generated from seed (seed, c),
    so every pass over the data yields the same vectors."""

    def __init__(self, n: int, dim: int, seed: int = 0, branches: int = 1) -> None:
        self.n, self.dim, self.seed, self.branches = n, dim, seed, branches
        structure = np.random.default_rng(12345)
        self.basis = (structure.standard_normal((LATENT, dim)) / np.sqrt(LATENT)).astype(np.float32)
        self.scales = (1 / np.sqrt(1 + np.arange(LATENT))).astype(np.float32)
        self.centres = structure.standard_normal((max(n // 100, 10), LATENT)).astype(np.float32) * self.scales

    def _draw(self, rng: np.random.Generator, m: int) -> np.ndarray:
        z = self.centres[rng.integers(0, len(self.centres), m)]
        z = z + 0.35 * rng.standard_normal((m, LATENT), dtype=np.float32) * self.scales
        x = z @ self.basis
        x += 0.1 * float(np.linalg.norm(z, axis=1).mean()) / np.sqrt(self.dim) * rng.standard_normal(
            (m, self.dim), dtype=np.float32)
        blocks = x.reshape(m, self.branches, self.dim // self.branches)
        blocks /= np.linalg.norm(blocks, axis=2, keepdims=True) * np.sqrt(self.branches)
        return np.ascontiguousarray(x, dtype=np.float32)

    def chunks(self, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (c,), vectors (c, dim)) for the first `limit` (default all) vectors."""
        total = self.n if limit is None else min(limit, self.n)
        for start in range(0, total, CHUNK):
            rng = np.random.default_rng((self.seed, start // CHUNK))
            size = min(CHUNK, total - start)
            yield np.arange(start, start + size, dtype=np.int64), self._draw(rng, size)

    def extra(self, m: int, stream: int) -> np.ndarray:
        """m more vectors from the same distribution, not in the data set (queries: stream 0)."""
        return self._draw(np.random.default_rng((self.seed, 10**6 + stream)), m)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Start a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform module gives only the architecture)."""
    with open("/proc/cpuinfo") as handle:
        line = next((line for line in handle if line.startswith("model name")), ": " + platform.machine())
    return line.split(":", 1)[1].strip()


def huge_pages() -> dict:
    """The kernel's transparent-huge-page mode and this process's huge anonymous memory (KiB)."""
    mode = THP_SETTING.read_text().strip() if THP_SETTING.exists() else "absent"
    with open("/proc/self/smaps_rollup") as handle:
        huge = next((int(line.split()[1]) for line in handle if line.startswith("AnonHugePages:")), 0)
    return {"thp": mode, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "anon_huge_kib": huge}


def load_average() -> float:
    """The 1-minute load average (runnable processes, all users) at this moment."""
    return round(os.getloadavg()[0], 2)


def exact_top10(data: ClusteredVectors, queries: np.ndarray) -> np.ndarray:
    """Ids (Q,10) of the exact inner-product top-10, streamed over the chunks with NumPy."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for ids, vectors in data.chunks():
        scores = np.hstack([best_scores, queries @ vectors.T])
        all_ids = np.hstack([best_ids, np.broadcast_to(ids, (len(queries), len(ids)))])
        keep = np.argpartition(-scores, 9, axis=1)[:, :10]
        best_scores, best_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(all_ids, keep, 1)
    return best_ids


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def build_index(kind: str, data: ClusteredVectors, args: argparse.Namespace, directory: Path) -> Any:
    """A `VectorIndex` of `kind` filled with every vector, through the backend the gallery would use."""
    spec = IndexSpec.parse(kind, nprobe=args.nprobe, ef_search=args.ef_search, k_factor=args.k_factor)
    backend = make_backend(spec, False, directory)
    needed = backend.training_points(data.dim, data.n)
    training = None
    if needed:
        wanted = max(needed, min(data.n, TRAINING_SAMPLE))
        training = np.concatenate([v for _, v in data.chunks(wanted)])
    index = backend.create(data.dim, data.n, training)
    del training
    for ids, vectors in data.chunks():
        index.add(ids, vectors)
    return index


def time_singles(index: Any, queries: np.ndarray, budget_s: float) -> list[float]:
    """Milliseconds of one-query searches (top-10), one per row of `queries`, stopped after `budget_s`."""
    times: list[float] = []
    budget = time.perf_counter() + budget_s
    for q in queries:
        started = time.perf_counter()
        index.search(q[None, :], 10)
        times.append(1000 * (time.perf_counter() - started))
        if time.perf_counter() > budget:
            break
    return times


def write_back(directory: Path, evict: bool = False) -> int:
    """fsync every file under `directory` (a prefix kind's full vectors, as the gallery's snapshot does
    after a build, so no write-back competes with the searches timed next) and, with `evict`, drop them
    from the kernel's page cache, so the next searches read them from disk; returns how many files."""
    files = [path for path in directory.rglob("*") if path.is_file()]
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            if evict:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return len(files)


def bench_kind(kind: str, n: int, dim: int, queries: np.ndarray, truth: np.ndarray,
               args: argparse.Namespace) -> dict:
    """One kind at one size; runs in its own process (`isolated`). Memory: resident-set growth once built
    and again after every search (pages of memory-mapped full vectors that searches touched included)."""
    configure(args)
    data = ClusteredVectors(n, dim, branches=args.branches)
    singles_queries = data.extra(args.singles, stream=2)
    rss_before = rss_bytes()
    reset_peak_rss()
    with tempfile.TemporaryDirectory(dir=args.workdir) as directory:
        started = time.perf_counter()
        index = build_index(kind, data, args, Path(directory))
        build_s = time.perf_counter() - started
        rss_index = rss_bytes() - rss_before
        peak_build = peak_rss_bytes() - rss_before
        rss_reloaded = None
        if args.reload:  # as after a restart: saved as the gallery saves it, dropped, loaded
            snapshot = Path(directory) / "reloaded.index"
            index.save(snapshot, {})
            del index
            release_freed_memory()
            spec = IndexSpec.parse(kind, nprobe=args.nprobe, ef_search=args.ef_search, k_factor=args.k_factor)
            index = make_backend(spec, False, Path(directory)).load(snapshot)[0]
            rss_reloaded = rss_bytes() - rss_before
        write_back(Path(directory))
        first = time_singles(index, singles_queries, args.singles_budget_s)
        singles = time_singles(index, data.extra(args.singles, stream=4), args.singles_budget_s)
        sweep = [ef_row(index, ef, data.extra(args.singles, stream=10 + i), queries, truth, args)
                 for i, ef in enumerate(args.ef_sweep)]
        cold: list[float] = []
        if args.cold and write_back(Path(directory), evict=True):
            cold = time_singles(index, data.extra(args.singles, stream=3), args.singles_budget_s)
        batch_times = []
        for _ in range(3):
            started = time.perf_counter()
            _, found = index.search(queries[:100], 10)
            batch_times.append(1000 * (time.perf_counter() - started))
        rss_searched = rss_bytes() - rss_before
        recall = recall10(found, truth)
        more = data.extra(500, stream=1)
        adds = []
        for start in range(0, 500, 100):
            started = time.perf_counter()
            new_ids = np.arange(data.n + start, data.n + start + 100, dtype=np.int64)
            index.add(new_ids, more[start:start + 100])
            adds.append(1000 * (time.perf_counter() - started))
        row = {"n": data.n, "kind": kind, "factory": index.factory, "build_s": round(build_s, 1),
               "add100_ms": round(statistics.median(adds), 1),
               "add100_max_ms": round(max(adds), 1),
               "search1_first_ms": round(statistics.median(first), 2),
               "search1_first_p99_ms": round(percentile(first, 99), 2),
               "search1_ms": round(statistics.median(singles), 2),
               "search1_p99_ms": round(percentile(singles, 99), 2), "search1_n": len(singles),
               **({"search1_cold_ms": round(statistics.median(cold), 2),
                   "search1_cold_p99_ms": round(percentile(cold, 99), 2), "search1_cold_n": len(cold)}
                  if cold else {}),
               "search100_ms": round(statistics.median(batch_times), 1), "recall10": round(recall, 3),
               "rss_gib": round(rss_index / 2**30, 2), "rss_searched_gib": round(rss_searched / 2**30, 2),
               "peak_gib": round(peak_build / 2**30, 2),
               **({"rss_reloaded_gib": round(rss_reloaded / 2**30, 2)} if rss_reloaded is not None else {}),
               "serialised_gib": round(index.serialized_size() / 2**30, 2), "load1": load_average(),
               "huge_pages": huge_pages(),
               **({"ef_sweep": sweep} if sweep else {})}
    return row


def recall10(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of `truth` (Q, 10) found in the same row of `found`."""
    return float(np.mean([len(set(a) & set(b)) / 10
                          for a, b in zip(found.tolist(), truth.tolist(), strict=True)]))


def ef_row(index: Any, ef: int, singles: np.ndarray, queries: np.ndarray, truth: np.ndarray,
           args: argparse.Namespace) -> dict:
    """The built index searched again with efSearch `ef` (its spec's `ef_search` set for the duration):
    one-query p50 / p99 over `singles` (queries of its own: no pass repeats another's queries, which
    would find the same graph nodes and rows again), and recall@10 of the 100 queries."""
    spec = index.spec
    index.spec = dataclasses.replace(spec, ef_search=ef)
    try:
        times = time_singles(index, singles, args.singles_budget_s)
        _, found = index.search(queries[:100], 10)
    finally:
        index.spec = spec
    return {"ef_search": ef, "search1_ms": round(statistics.median(times), 2),
            "search1_p99_ms": round(percentile(times, 99), 2), "search1_n": len(times),
            "recall10": round(recall10(found, truth), 3)}


def isolated(kind: str, n: int, dim: int, queries: np.ndarray, truth: np.ndarray,
             args: argparse.Namespace) -> dict:
    """`bench_kind` in a fresh (spawned) child process."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        row = pool.submit(bench_kind, kind, n, dim, queries, truth, args).result()
    LOG.info("%s", row)
    return row


def configure(args: argparse.Namespace) -> None:
    """FAISS's process-wide settings from the command line."""
    faiss.cvar.distance_compute_blas_threshold = args.blas_threshold
    if args.threads:
        faiss.omp_set_num_threads(args.threads)


def flat_search_path(nq: int, n: int, dim: int, threshold: int) -> str:
    """Which code path FAISS 1.15's exhaustive inner-product search takes (faiss/utils/distances.cpp)."""
    threads = faiss.omp_get_max_threads()
    if threads > 1 and nq < threads and n >= max(10_000, threads * 1024):
        return "BLAS, database-parallel"
    return "BLAS" if nq * dim >= threshold else "SIMD loop"


def bench_blas_threshold(data: ClusteredVectors, queries: np.ndarray, repeats: int = 5) -> list[dict]:
    """Flat search time for 1..100 queries with the BLAS threshold at 1 (the gallery's setting) and at
    FAISS's default. FAISS 1.15 compares it with queries x dimension: below it, and with any id selector,
    it scans with its own SIMD loop; from it on, BLAS (and a single query on >= 10k vectors always takes
    a database-parallel BLAS path). The two thresholds alternate within each repeat, so a change of the
    machine's load hits both alike; min and median of `repeats`."""
    index = FaissVectorIndex.create(IndexSpec.parse("Flat"), data.dim, data.n)
    for ids, vectors in data.chunks():
        index.add(ids, vectors)
    thresholds = (1, FAISS_BLAS_THRESHOLD)
    rows = []
    for nq in (1, 2, 5, 10, 20, 50, 100):
        times: dict[int, list[float]] = {threshold: [] for threshold in thresholds}
        for _ in range(repeats):
            for threshold in thresholds:
                faiss.cvar.distance_compute_blas_threshold = threshold
                started = time.perf_counter()
                index.search(queries[:nq], 10)
                times[threshold].append(1000 * (time.perf_counter() - started))
        for threshold in thresholds:
            rows.append({"n": data.n, "threshold": threshold, "queries": nq,
                         "path": flat_search_path(nq, data.n, data.dim, threshold),
                         "min_ms": round(min(times[threshold]), 1),
                         "median_ms": round(statistics.median(times[threshold]), 1), "load1": load_average()})
            LOG.info("%s", rows[-1])
    return rows


def bench_compaction(kind: str, n: int, dim: int, args: argparse.Namespace) -> dict:
    """Resident memory of a `kind` index of n vectors once built, after removing half of them (tombstones
    for HNSW and IVF kinds), and after compaction as the registry does it (a new index built from the
    kept vectors, swapped in, the old one dropped, the freed heap handed back to the operating system).
    Runs in its own process (`isolated`)."""
    configure(args)
    data = ClusteredVectors(n, dim, branches=args.branches)
    rss_start = rss_bytes()
    with tempfile.TemporaryDirectory(dir=args.workdir) as directory:
        index = build_index(kind, data, args, Path(directory))
        built = rss_bytes() - rss_start
        removed = np.arange(0, n, 2, dtype=np.int64)
        index.remove(removed)
        after_delete = rss_bytes() - rss_start
        tombstones = index.tombstones
        kept = ClusteredVectors(n, dim, branches=args.branches)
        started = time.perf_counter()
        spec = IndexSpec.parse(kind, nprobe=args.nprobe, ef_search=args.ef_search, k_factor=args.k_factor)
        backend = make_backend(spec, False, Path(directory))
        needed = backend.training_points(dim, n - len(removed))
        training = None
        if needed:  # a sample of the kept (odd) vectors, as the store would draw it
            wanted = max(needed, min((n - len(removed)), TRAINING_SAMPLE))
            training = np.concatenate([v[1::2] for _, v in kept.chunks(2 * wanted)])
        fresh = backend.create(dim, n - len(removed), training)
        del training
        for ids, vectors in kept.chunks():
            fresh.add(ids[1::2], vectors[1::2])
        index = fresh  # the swap: the old index is dropped here
        release_freed_memory()  # as the compaction thread does once it has swapped
        compact_s = time.perf_counter() - started
        after_compaction = rss_bytes() - rss_start
        row = {"n": n, "kind": kind, "factory": index.factory, "rss_built_gib": round(built / 2**30, 2),
               "rss_half_deleted_gib": round(after_delete / 2**30, 2), "tombstones": tombstones,
               "rss_compacted_gib": round(after_compaction / 2**30, 2), "compact_s": round(compact_s, 1),
               "vectors_after": len(index), "load1": load_average()}
    return row


def isolated_compaction(kind: str, n: int, dim: int, args: argparse.Namespace) -> dict:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        row = pool.submit(bench_compaction, kind, n, dim, args).result()
    LOG.info("compaction %s", row)
    return row


def bench_gallery(n: int, dim: int, kind: str) -> dict:
    """Durable adds (32-item batches, 20 KB images) and searches through `Gallery`."""
    data = ClusteredVectors(n, dim, seed=7)
    rng = np.random.default_rng(3)
    add_ms = []
    with tempfile.TemporaryDirectory() as root, \
            Gallery.open(Path(root), index_kind=kind) as gallery:
        for ids, vectors in data.chunks():
            for start in range(0, len(ids), 32):
                items = [NewItem(rng.bytes(20_000), label=f"c{i % 50}") for i in ids[start:start + 32]]
                began = time.perf_counter()
                gallery.add(items, {"v1": vectors[start:start + 32]})
                add_ms.append(1000 * (time.perf_counter() - began))
        queries = data.extra(50, stream=0)
        timings = {}
        for name, label in (("search1_ms", None), ("search1_label_ms", "c7")):
            times = []
            for q in queries:
                began = time.perf_counter()
                gallery.search(q[None, :], 10, label=label)
                times.append(1000 * (time.perf_counter() - began))
            timings[name] = round(statistics.median(times), 2)
    row = {"n": n, "kind": kind, "add32_p50_ms": round(statistics.median(add_ms), 1),
           "add32_p95_ms": round(float(np.percentile(add_ms, 95)), 1), **timings}
    LOG.info("gallery %s", row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="gallery sizes, comma-separated")
    parser.add_argument("--kinds", nargs="+", default=["Flat", "HNSW", "IVF-PQ", "IVF-SQ8"],
                        help="index kinds (aliases or FAISS factory strings), separated by spaces")
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--nprobe", type=int, default=None, help="override the IVF kinds' nprobe")
    parser.add_argument("--ef-search", type=int, default=None, help="override the HNSW kinds' efSearch")
    parser.add_argument("--ef-sweep", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                        metavar="EF[,EF...]", help="also time the warm one-query searches and recall@10 of "
                        "each built HNSW (or prefix HNSW) index again with each efSearch")
    parser.add_argument("--k-factor", type=int, default=None,
                        help="override IVF-PQ's refine factor and the prefix kinds' calibrated factor")
    parser.add_argument("--branches", type=int, default=3,
                        help="CGD branches in the synthetic vectors (3: 512-d prefixes at d=1536; 1: none)")
    parser.add_argument("--singles", type=int, default=1000,
                        help="one-query searches timed (p50, p99) right after the build, then as many warm")
    parser.add_argument("--singles-budget-s", type=float, default=30.0,
                        help="stop timing one-query searches after this many seconds (exhaustive kinds)")
    parser.add_argument("--cold", action="store_true",
                        help="prefix kinds: also time --singles one-query searches after dropping the full "
                             "vectors from the page cache (cold: the re-ranked rows come from disk)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where prefix kinds write their full vectors (default: the temporary directory)")
    parser.add_argument("--blas-threshold", type=int, default=DEFAULT_BLAS_THRESHOLD)
    parser.add_argument("--threads", type=int, default=None, help="FAISS threads (default: all cores)")
    parser.add_argument("--blas-sweep", default="", metavar="N[,N...]",
                        help="also time Flat search of 1..100 queries per BLAS threshold over N vectors")
    parser.add_argument("--gallery", type=int, default=0, help="also time the durable Gallery with N items")
    parser.add_argument("--compaction", type=int, default=0, metavar="N",
                        help="also measure memory built / half deleted / compacted per kind at N vectors")
    parser.add_argument("--huge-pages", action="store_true",
                        help=f"run each kind's process with GLIBC_TUNABLES={HUGE_PAGES_TUNABLE} (malloc "
                             "asks for transparent huge pages)")
    parser.add_argument("--reload", action="store_true",
                        help="time each index loaded from a snapshot of the built one (as after a restart)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    if args.huge_pages:  # read by glibc when a process starts: the spawned children get it
        os.environ["GLIBC_TUNABLES"] = HUGE_PAGES_TUNABLE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    configure(args)
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "ram_gib": round(
                   os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
               "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
               "numpy": np.__version__, "python": platform.python_version(),
               "blas_threshold": args.blas_threshold, "faiss_default_blas_threshold": FAISS_BLAS_THRESHOLD,
               "load1_start": load_average()}
    LOG.info("machine %s", machine)
    results: dict = {"machine": machine, "command": " ".join(sys.argv), "kinds": [], "blas": [],
                     "gallery": []}
    for n in [int(s) for s in args.blas_sweep.split(",") if s]:
        data = ClusteredVectors(n, args.dim)
        results["blas"] += bench_blas_threshold(data, data.extra(100, stream=0))
        faiss.cvar.distance_compute_blas_threshold = args.blas_threshold
    for n in [int(s) for s in args.sizes.split(",") if s]:
        data = ClusteredVectors(n, args.dim, branches=args.branches)
        queries = data.extra(100, stream=0)
        started = time.perf_counter()
        truth = exact_top10(data, queries)
        LOG.info("n=%d: exact top-10 of 100 queries in %.1f s", n, time.perf_counter() - started)
        for kind in args.kinds:
            results["kinds"].append(isolated(kind, n, args.dim, queries, truth, args))
            if args.out is not None:
                args.out.write_text(json.dumps(results, indent=1))
    if args.compaction:
        results["compaction"] = [isolated_compaction(kind, args.compaction, args.dim, args)
                                 for kind in args.kinds]
    if args.gallery:
        results["gallery"].append(bench_gallery(args.gallery, args.dim, "Flat"))
    machine["load1_end"] = load_average()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
