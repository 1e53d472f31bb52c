"""Child process of test_gallery_crash.py: ingests batches into a gallery until it is killed.

Usage: crash_writer.py ROOT INDEX_KIND SEED [DATABASE_URL VECTOR_BACKEND MILVUS_URI] (engines as in
`index.engines.Engines`; "-" for none). After each `add` returns it writes "A <id> <external_id>"
per item; it writes "X <id>" before a `delete` and "D <id>" after it returns. Those lines (flushed at once)
are what the gallery acknowledged; an item with X and no D may or may not have been deleted.
Images are `image_bytes(external_id)`; vectors are random unit rows of width DIM.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from index import Gallery, NewItem
from index.engines import Engines

DIM = 32


def image_bytes(external_id: str) -> bytes:
    return hashlib.sha512(external_id.encode()).digest() * 4


def main(root: Path, kind: str, seed: int, engines: Engines | None) -> None:
    rng = np.random.default_rng(seed)
    gallery = Gallery.open(root, index_kind=kind, engines=engines)
    acknowledged: list[int] = []
    batch = 0
    while True:
        n = int(rng.integers(1, 24))
        vectors = rng.standard_normal((n, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"s{seed}-b{batch}-{i}" for i in range(n)]
        new = [NewItem(image_bytes(e), external_id=e, label=f"l{i % 3}", metadata={"batch": batch})
               for i, e in enumerate(ids)]
        items = gallery.add(new, {"v1": vectors})
        sys.stdout.write("".join(f"A {it.id} {it.external_id}\n" for it in items))
        sys.stdout.flush()
        acknowledged += [it.id for it in items]
        if batch % 4 == 3:
            victim = acknowledged.pop(int(rng.integers(len(acknowledged))))
            sys.stdout.write(f"X {victim}\n")
            sys.stdout.flush()
            gallery.delete(victim)
            sys.stdout.write(f"D {victim}\n")
            sys.stdout.flush()
        if batch % 5 == 4:
            gallery.snapshot()  # so that kills also land in the middle of snapshot writes
        batch += 1


if __name__ == "__main__":
    database_url, vector_backend, milvus_uri = [None if a == "-" else a for a in sys.argv[4:7]] or [None] * 3
    engines = Engines(database_url, vector_backend or "faiss", milvus_uri) if database_url else None
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), engines)
