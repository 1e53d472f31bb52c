"""Fixtures for the `index/` tests: random and clustered unit vectors, new items, open galleries (on
SQLite + FAISS, or, where a module parametrises `gallery_engines`, on real PostgreSQL and Milvus)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from index import Gallery, NewItem
from tests.index.engines import EngineChoice


@pytest.fixture(scope="session", autouse=True)
def single_threaded_faiss() -> Iterator[None]:
    """FAISS on one thread: the test machines share two cores, and OpenMP threads that spin while other
    processes hold the cores make small builds 10-20 times slower."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


@pytest.fixture
def unit_vectors() -> Callable[..., np.ndarray]:
    """unit_vectors(n, d, seed) -> (n, d) float32 rows drawn uniformly on the sphere."""

    def make(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
        return _unit_rows(np.random.default_rng(seed).standard_normal((n, d)))

    return make


@pytest.fixture
def clustered_vectors() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """clustered_vectors(n, d, clusters, seed, queries) -> (base (n,d), queries (q,d)): unit vectors around
    shared cluster centres (low-rank, decaying spectrum) plus isotropic noise, like real embeddings."""

    def make(n: int, d: int = 64, clusters: int = 100, seed: int = 0,
             queries: int = 100) -> tuple[np.ndarray, np.ndarray]:
        latent = min(d, 32)
        structure = np.random.default_rng(1234)
        basis = structure.standard_normal((latent, d)) / np.sqrt(latent)
        scales = 1 / np.sqrt(1 + np.arange(latent))
        centres = structure.standard_normal((clusters, latent)) * scales
        rng = np.random.default_rng(seed)

        def draw(m: int) -> np.ndarray:
            z = centres[rng.integers(0, clusters, m)] + 0.35 * rng.standard_normal((m, latent)) * scales
            return _unit_rows(z @ basis + 0.1 * rng.standard_normal((m, d)) / np.sqrt(d))

        return draw(n), draw(queries)

    return make


@pytest.fixture
def new_items() -> Callable[..., list[NewItem]]:
    """new_items(n, prefix, labels, external, shared_image) -> n items with metadata {"i", "even"}, with
    distinct images, or one image for all (one file to fsync: faster where images do not matter)."""

    def make(n: int, prefix: str = "img", labels: tuple[str, ...] = ("cat", "dog", "eel"),
             external: bool = False, shared_image: bool = False) -> list[NewItem]:
        return [NewItem(image=b"shared" if shared_image else f"{prefix}-{i}".encode(),
                        external_id=f"{prefix}-{i}" if external else None,
                        label=labels[i % len(labels)] if labels else None,
                        metadata={"i": i, "even": i % 2 == 0}) for i in range(n)]

    return make


@pytest.fixture
def gallery_engines(request: pytest.FixtureRequest) -> EngineChoice:
    """The engines galleries open with: "sqlite-faiss" unless a test parametrises it (indirect) with
    "postgresql-pgvector" or "postgresql-milvus"."""
    name = getattr(request, "param", "sqlite-faiss")
    return EngineChoice(name, request.getfixturevalue("postgres_server") if name != "sqlite-faiss" else None)


@pytest.fixture
def open_gallery(tmp_path: Path, gallery_engines: EngineChoice) -> Iterator[Callable[..., Gallery]]:
    """open_gallery(name="g", **kw) -> a Gallery under tmp_path on `gallery_engines` (a FAISS
    `index_kind` becomes the other backend's kind that searches alike), closed at teardown if open."""
    opened: list[Gallery] = []

    def make(name: str = "g", **kw: object) -> Gallery:
        root = tmp_path / name
        if "index_kind" in kw:
            kw["index_kind"] = gallery_engines.kind(str(kw["index_kind"]))
        gallery = Gallery.open(root, engines=gallery_engines.for_root(root), **kw)
        opened.append(gallery)
        return gallery

    yield make
    for gallery in opened:
        gallery.close()


def brute_force(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product: (scores (Q,k), ids (Q,k)) with NumPy only."""
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


@pytest.fixture
def exact_top_k() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """exact_top_k(queries, ids, vectors, k) -> brute-force (scores, ids)."""
    return brute_force
