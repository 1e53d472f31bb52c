"""`PgvectorIndex` on a real PostgreSQL with pgvector (pgserver): label and metadata filters are a SQL
WHERE on the items table joined with the vector search, so the filtered search is the exact filtered
top-k, also where the HNSW walk alone finds too few, and an update is seen by the next search."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from index.engines import Engines
from index.filters import ItemFilter, MetadataFilter
from index.pgvector_index import PgvectorBackend
from index.postgres_store import PostgresItemStore
from index.records import NewItem
from tests.index.engines import create_database


def test_filters_join_the_items_table_for_the_exact_filtered_top_k(postgres_server, tmp_path: Path,
                                                                   unit_vectors) -> None:
    settings = Engines(database_url=create_database(postgres_server), vector_backend="pgvector").postgres()
    store = PostgresItemStore.open(tmp_path, settings)
    backend = PgvectorBackend.open(settings, "HNSW", tmp_path / "pointers")
    try:
        n, dim = 300, 16
        vectors = unit_vectors(n, dim, seed=5)
        items, _ = store.add([NewItem(b"same", label="rare" if i % 50 == 0 else "common",
                                      metadata={"i": i % 7, "q": 'a"b\\'}) for i in range(n)],
                             store.put_images([b"same"] * n), {"v1": vectors})
        ids = np.asarray([item.id for item in items], dtype=np.int64)
        index = backend.create(dim, n, None)
        index.add(ids, vectors)
        index.save(tmp_path / "pointers" / "v1.index", {})  # builds the HNSW graph
        queries = unit_vectors(3, dim, seed=6)
        labels = np.asarray([item.label for item in items])
        groups = np.asarray([item.metadata["i"] for item in items])
        for where, keep in [(ItemFilter("rare"), labels == "rare"),  # 6 of 300: the graph walk falls short
                            (ItemFilter("common", MetadataFilter.of({"i": 3, "q": 'a"b\\'})),
                             (labels == "common") & (groups == 3))]:
            assert index.can_filter(where)
            scores = queries @ vectors[keep].T
            expected = ids[keep][np.argsort(-scores, axis=1, kind="stable")[:, :10]]
            _, found = index.search(queries, 10, where)
            assert found.tolist() == expected.tolist()
        store.update(int(ids[1]), label="rare")
        _, found = index.search(vectors[1:2], 1, ItemFilter("rare"))
        assert found.tolist() == [[ids[1]]]
        assert index.sync_attributes() == 0  # it holds no copy
    finally:
        backend.close()
        store.close()
