"""Fixtures shared by every test folder: the real data sets beside the clone, one real PostgreSQL
server (with pgvector) per session for the gallery's PostgreSQL engines, and a Milvus server per test
that asks for one."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.index.engines import MilvusServer, PostgresControl

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _data_set(name: str) -> Path:
    root = SHARED_DATA / name
    if not (root / "labels.csv").is_file():
        pytest.skip(f"real data set {name!r} not found at {root} (expected ../shared/data beside the clone)")
    return root


@pytest.fixture(scope="session")
def caltech_dir() -> Path:
    """../shared/data/caltech101: real photos, 101 classes, `labels.csv`."""
    return _data_set("caltech101")


@pytest.fixture(scope="session")
def gtsrb_dir() -> Path:
    """../shared/data/gtsrb32: real 32 px traffic signs, 43 classes, `labels.csv`."""
    return _data_set("gtsrb32")


@pytest.fixture(scope="session")
def postgres_control() -> Iterator[PostgresControl]:
    """One real PostgreSQL server with pgvector for the session (pgserver's bundled binaries; as root it
    runs them as a user of their own, so its directory is made under /tmp, not pytest's private one).
    Stopped with `-m immediate`: its databases are thrown away, so no shutdown checkpoint is waited for
    (20-60 s on a busy disk after a session's worth of databases)."""
    import pgserver

    directory = Path(tempfile.mkdtemp(prefix="cgd-postgres-"))
    server = pgserver.get_server(directory, cleanup_mode=None)
    control = PostgresControl(server.get_uri(), directory, server.system_user)
    yield control
    control.stop("immediate")
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(postgres_control: PostgresControl) -> str:
    """The session's PostgreSQL server URL (make a database per gallery with `create_database`)."""
    return postgres_control.url


@pytest.fixture
def milvus_server(tmp_path: Path) -> Iterator[MilvusServer]:
    """A Milvus server (Milvus Lite's gRPC server in a child process) on a local port, running; stopped at
    teardown."""
    server = MilvusServer(tmp_path / "milvus-server")
    server.start()
    yield server
    server.stop()
