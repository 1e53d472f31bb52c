"""Coarse-to-fine (`prefix:<kind>`) against exact search on real embeddings.

Embeds every image of each `labels.csv` folder given (all splits) with the default model (or
`--checkpoint`), caches the embeddings under `--cache` (not in the repository), indexes them as the gallery
would (rounded through float16, `Flat` for exact search, each `prefix:` kind through its backend), and lets
every image query the others: R@1 and MAP@R (R = the other images of the query's label) per kind, and the
difference from exact search in points.

    nice -n 19 .venv/bin/python benchmarks/prefix_real_check.py ../shared/data/caltech101 \\
        ../shared/data/gtsrb32 --kinds prefix:Flat prefix:HNSW-SQ8 --out /tmp/prefix_real.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.index_bench import cpu_model, load_average
from index import IndexSpec
from index.prefix_index import make_backend
from index.vectors import quantize

LOG = logging.getLogger("prefix_real_check")


def embeddings(root: Path, checkpoint: Path | None, cache: Path, batch: int,
               runtime: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(unit vectors (N, d), labels (N,), model version) of every image under `root`, embedded with
    `runtime` (any: the same model; the cache is per model version), cached."""
    from model.data import open_rgb, read_labels_csv
    from model.embedder import Embedder

    images = read_labels_csv(root)
    embedder = Embedder.load(checkpoint, device="cpu", runtime=runtime)
    path = cache / f"{root.name}-{embedder.version}.npz"
    labels = np.asarray([image.label for image in images])
    if path.is_file():
        cached = np.load(path)
        if len(cached["vectors"]) == len(images):
            return cached["vectors"], labels, embedder.version
    started = time.perf_counter()
    chunks = []
    for start in range(0, len(images), batch):
        chunks.append(embedder.embed_images([open_rgb(image.path) for image in images[start:start + batch]]))
        LOG.info("%s: %d/%d embedded", root.name, start + len(chunks[-1]), len(images))
    vectors = np.concatenate(chunks)
    LOG.info("%s: %d images in %.0f s", root.name, len(vectors), time.perf_counter() - started)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, vectors=vectors)
    return vectors, labels, embedder.version


def ranked(kind: str, vectors: np.ndarray, relevant: np.ndarray, directory: Path) -> tuple[np.ndarray, str]:
    """Ids (N, max R) of each vector's top-R others (R = `relevant`, itself left out; -1 beyond R) from an
    index of `kind`, searched with k = R + 1 per query, and what served."""
    backend = make_backend(IndexSpec.parse(kind), False, directory)
    ids = np.arange(len(vectors), dtype=np.int64)
    needed = backend.training_points(vectors.shape[1], len(vectors))
    index = backend.create(vectors.shape[1], len(vectors), vectors if needed else None)
    index.add(ids, vectors)
    found = np.full((len(vectors), max(int(relevant.max()), 1)), -1, np.int64)
    for r in np.unique(relevant[relevant > 0]):
        group = np.flatnonzero(relevant == r)
        for start in range(0, len(group), 256):
            queries = group[start:start + 256]
            _, hits = index.search(vectors[queries], int(r) + 1)
            for row, own in zip(hits, queries, strict=True):
                others = row[(row != own) & (row >= 0)][:r]
                found[own, :len(others)] = others
    return found, index.factory


def relevant_counts(labels: np.ndarray) -> np.ndarray:
    """R (N,): how many other images share each image's label."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse] - 1


def scores(found: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """R@1 and MAP@R (in %) of ranked ids (N, >= max R) for every query that has another of its label."""
    relevant = relevant_counts(labels)
    queries = np.flatnonzero(relevant > 0)
    hits = (found >= 0) & (labels[np.maximum(found, 0)] == labels[:, None])
    r_at_1 = hits[queries, 0].mean()
    aps = []
    for q in queries:
        r = relevant[q]
        row = hits[q, :r]
        precision = np.cumsum(row) / np.arange(1, r + 1)
        aps.append(float((precision * row).sum() / r))
    return {"R@1": round(100 * float(r_at_1), 2), "MAP@R": round(100 * float(np.mean(aps)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="folders with a labels.csv")
    parser.add_argument("--kinds", nargs="+", default=["prefix:Flat", "prefix:HNSW-SQ8"])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the embedded default model")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cgd-prefix-check")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runtime", default="torch", choices=["auto", "torch", "onnxruntime", "openvino"],
                        help="inference runtime for embedding (onnxruntime: about 3.5x torch on a CPU)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = {"cpu": cpu_model(), "command": " ".join(sys.argv), "runtime": args.runtime,
               "load1_start": load_average(), "rows": []}
    for folder in args.folders:
        if not (folder / "labels.csv").is_file():
            LOG.warning("skipping %s: no labels.csv", folder)
            continue
        vectors, labels, version = embeddings(folder, args.checkpoint, args.cache, args.batch, args.runtime)
        vectors = quantize(vectors)  # as the store keeps them
        relevant = relevant_counts(labels)
        with tempfile.TemporaryDirectory() as directory:
            exact, _ = ranked("Flat", vectors, relevant, Path(directory))
            baseline = scores(exact, labels)
            results["rows"].append({"data": folder.name, "n": len(vectors), "model": version, "kind": "Flat",
                                    **baseline})
            for kind in args.kinds:
                found, factory = ranked(kind, vectors, relevant, Path(directory))
                row = {"data": folder.name, "n": len(vectors), "model": version, "kind": kind,
                       "factory": factory, **scores(found, labels)}
                row["R@1_diff"] = round(row["R@1"] - baseline["R@1"], 2)
                row["MAP@R_diff"] = round(row["MAP@R"] - baseline["MAP@R"], 2)
                row["top1_same"] = round(float(np.mean(found[:, 0] == exact[:, 0])), 4)
                results["rows"].append(row)
                LOG.info("%s", row)
    results["load1_end"] = load_average()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["rows"], indent=1))


if __name__ == "__main__":
    main()
