"""docker/backup.py (in the images as /opt/cgd/backup.py): a restorable tar of a live data directory."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.deploy.test_deploy_dockerfiles import DOCKERFILES, ROOT, Dockerfile

SCRIPT = ROOT / "docker" / "backup.py"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def live_data_dir(tmp_path):
    """A data directory like the service's; the database's commits are still only in its -wal file."""
    data = tmp_path / "data"
    (data / "gallery" / "blobs" / "ab").mkdir(parents=True)
    (data / "gallery" / "faiss").mkdir()
    (data / "models").mkdir()
    (data / "gallery" / "blobs" / "ab" / "abcdef.jpg").write_bytes(b"\xff\xd8 image bytes")
    (data / "gallery" / "faiss" / "v1.index").write_bytes(b"rebuildable")
    (data / "models" / "v2.pt").write_bytes(b"checkpoint" * 100)
    (data / "models" / "registry.json").write_text('{"active": "v2"}', encoding="utf-8")
    connection = sqlite3.connect(data / "gallery" / "items.sqlite3")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA wal_autocheckpoint=0")
    connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, sha TEXT)")
    connection.executemany("INSERT INTO items (sha) VALUES (?)", [(f"sha{i}",) for i in range(50)])
    connection.commit()
    yield data
    connection.close()


def run_backup(data_dir: Path) -> tuple[bytes, str]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--data-dir", str(data_dir)], capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout, result.stderr.decode()


def test_backup_restores_a_consistent_copy_of_a_live_data_directory(live_data_dir, tmp_path):
    assert (live_data_dir / "gallery" / "items.sqlite3-wal").stat().st_size > 0, (
        "rows must still be in the WAL"
    )
    archive, log = run_backup(live_data_dir)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = sorted(tar.getnames())
        restored = tmp_path / "restored"
        tar.extractall(restored, filter="data")
    assert names == [
        "gallery/blobs/ab/abcdef.jpg",
        "gallery/items.sqlite3",
        "models/registry.json",
        "models/v2.pt",
    ]
    with sqlite3.connect(restored / "gallery" / "items.sqlite3") as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("SELECT count(*), max(sha) FROM items").fetchone() == (50, "sha9")
    for name in ("gallery/blobs/ab/abcdef.jpg", "models/v2.pt", "models/registry.json"):
        assert digest(restored / name) == digest(live_data_dir / name)
    assert "4 files" in log


def test_backup_leaves_the_live_database_usable(live_data_dir):
    run_backup(live_data_dir)
    with sqlite3.connect(live_data_dir / "gallery" / "items.sqlite3") as connection:
        connection.execute("INSERT INTO items (sha) VALUES ('after')")
        assert connection.execute("SELECT count(*) FROM items").fetchone() == (51,)


def test_backup_refuses_a_missing_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--data-dir", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "is not a directory" in result.stderr


def test_images_ship_the_script_where_the_docs_run_it():
    deployment = (ROOT / "docs" / "DEPLOYMENT.md").read_text(encoding="utf-8")
    for path in DOCKERFILES.values():
        copies = [c.value for c in Dockerfile.read(path).all("COPY")]
        assert "docker/backup.py /opt/cgd/backup.py" in copies
    assert "docker compose exec -T api python /opt/cgd/backup.py >" in deployment
    assert "python /opt/cgd/backup.py" in SCRIPT.read_text(encoding="utf-8")
