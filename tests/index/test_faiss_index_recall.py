"""Approximate kinds reach recall@10 >= 0.95 against exact search on clustered vectors, at their defaults.

Setting (documented in docs/BENCHMARKS.md): 20,000 unit vectors of 128-d around 200 cluster centres,
100 held-out queries from the same distribution, default search settings of each kind
(HNSW efSearch 128; IVF nlist 128, nprobe 16; IVF-PQ refined with k_factor 10).
"""

from __future__ import annotations

import numpy as np
import pytest

from index import FaissVectorIndex, IndexSpec
from index.vectors import quantize


@pytest.fixture(scope="module")
def clustered_data() -> tuple[np.ndarray, np.ndarray]:
    return _clustered(20_000, 128, 200)


def _clustered(n: int, d: int, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    # module-scoped twin of the `clustered_vectors` fixture, so the data is drawn once for all kinds
    structure = np.random.default_rng(1234)
    latent = 32
    basis = structure.standard_normal((latent, d)) / np.sqrt(latent)
    scales = 1 / np.sqrt(1 + np.arange(latent))
    centres = structure.standard_normal((clusters, latent)) * scales
    rng = np.random.default_rng(0)

    def draw(m: int) -> np.ndarray:
        z = centres[rng.integers(0, clusters, m)] + 0.35 * rng.standard_normal((m, latent)) * scales
        x = z @ basis + 0.1 * rng.standard_normal((m, d)) / np.sqrt(d)
        return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)

    return quantize(draw(n)), draw(100)


@pytest.mark.parametrize("kind", ["SQ8", "HNSW", "HNSW-SQ8", "IVF-Flat", "IVF-SQ8", "IVF-PQ"])
def test_recall_at_10_against_exact(kind: str, clustered_data, exact_top_k) -> None:
    base, queries = clustered_data
    ids = np.arange(len(base), dtype=np.int64)
    index = FaissVectorIndex.create(IndexSpec.parse(kind), base.shape[1], len(base), base)
    index.add(ids, base)
    assert not index.exact_fallback
    _, found = index.search(queries, 10)
    _, truth = exact_top_k(queries, ids, base, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), truth.tolist(), strict=True)])
    assert recall >= 0.95, f"{kind} ({index.factory}) recall@10 = {recall:.3f}"
