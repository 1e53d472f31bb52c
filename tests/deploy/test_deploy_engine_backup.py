"""DEPLOYMENT.md's backup and restore of the gallery engines, run as written on real engines: `pg_dump -Fc`
of a live PostgreSQL gallery with the data directory's online backup (`docker/backup.py`: the images),
changes made after them, then `pg_restore --clean --if-exists` and the data directory restored; the
gallery reopened is the one backed up, and every item finds itself."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from index import Gallery, NewItem
from index.engines import Engines
from tests.deploy.test_deploy_backup import SCRIPT
from tests.index.engines import create_database

REPLICA = "host-a"  # with CGD_DATABASE_URL the service always opens its gallery as a replica


def _pg(tool: str, *args: str) -> None:
    """Run one of the PostgreSQL client tools that pgserver bundles (pg_dump, pg_restore)."""
    from pgserver._commands import POSTGRES_BIN_PATH

    result = subprocess.run([str(POSTGRES_BIN_PATH / tool), *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def _vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 32)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("vector_backend", ["pgvector", "milvus"])
def test_pg_dump_and_pg_restore_bring_back_the_gallery_backed_up(vector_backend: str, postgres_server,
                                                                 tmp_path: Path) -> None:
    url = create_database(postgres_server)
    milvus = str(tmp_path / "gallery.milvus.db") if vector_backend == "milvus" else None
    engines = Engines(url, vector_backend, milvus)
    data = tmp_path / "data"
    root = data / "gallery"
    x = _vectors(30, seed=1)
    with Gallery.open(root, index_kind="HNSW", engines=engines, replica=REPLICA) as gallery:
        items = gallery.add([NewItem(f"img-{i}".encode(), label="kept") for i in range(30)], {"v1": x})
        _pg("pg_dump", "-Fc", "-d", url, "-f", str(tmp_path / "gallery.dump"))  # while it runs
        files = subprocess.run([sys.executable, str(SCRIPT), "--data-dir", str(data)], capture_output=True,
                               check=True, timeout=120).stdout
        late = gallery.add([NewItem(f"late-{i}".encode(), label="late") for i in range(5)],
                           {"v1": _vectors(5, seed=2)})
        for item in items[:3]:
            gallery.delete(item.id)
        gallery.update(items[3].id, label="renamed")
    _pg("pg_restore", "--clean", "--if-exists", "-d", url, str(tmp_path / "gallery.dump"))
    shutil.rmtree(data)
    with tarfile.open(fileobj=io.BytesIO(files)) as archive:
        archive.extractall(data, filter="data")
    assert not list(root.glob("replicas/*/faiss/*.index"))  # left out: the indexes are rebuilt
    with Gallery.open(root, index_kind="HNSW", engines=engines, replica=REPLICA) as gallery:
        assert gallery.count() == 30 and gallery.index_stats().vectors == 30
        _, hits = gallery.search(x, 1)
        assert [row[0].item.id for row in hits] == [item.id for item in items]  # the deleted ones are back
        assert gallery.image(items[0].id) == b"img-0"
        found = {h.item.id for row in gallery.search(x, 40)[1] for h in row}
        assert not found & {item.id for item in late}
        _, kept = gallery.search(x[3:4], 40, label="kept")
        assert len(kept[0]) == 30 and kept[0][0].item.id == items[3].id  # its label as backed up
        assert gallery.search(x[3:4], 5, label="renamed")[1] == [[]]
