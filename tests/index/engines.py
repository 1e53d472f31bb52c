"""Real engines for the gallery tests: one PostgreSQL (pgserver, with pgvector) per session, a database
per gallery, a Milvus Lite file per gallery, and a Milvus server where a test needs one to stop and come
back (Milvus Lite's own gRPC server, `python -m milvus_lite server`, in a child process). No mocks: these
are the servers the backends talk to."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg

from index.engines import Engines

ENGINE_NAMES = ("sqlite-faiss", "postgresql-pgvector", "postgresql-milvus")
_SERVER_KINDS = {"Flat": "Flat", "SQfp16": "Flat", "HNSW": "HNSW"}  # FAISS kind -> the same search elsewhere
_numbers = itertools.count()


def database_url(server_url: str, name: str) -> str:
    """The server's URL with another database name."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def create_database(server_url: str) -> str:
    """A new, empty database on the server; returns its URL."""
    name = f"gallery_{next(_numbers)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return database_url(server_url, name)


@dataclass(frozen=True)
class PostgresControl:
    """The test server: its URL, data directory and the system user pgserver runs it as."""

    url: str
    directory: Path
    user: str

    def stop(self, mode: str = "fast") -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(["-m", mode, "-w", "stop"], pgdata=self.directory, user=self.user)

    def start(self) -> None:
        """Start it again as pgserver does (Unix socket only, in the URL's socket directory)."""
        from pgserver._commands import pg_ctl

        socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]
        pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self.directory / "log"), "start"],
               pgdata=self.directory, user=self.user)


@dataclass
class MilvusServer:
    """Milvus Lite's gRPC server in a child process, serving `directory` on a local port: a Milvus server
    URI the backend reaches over the network, which a test can stop (kill -9) and start again."""

    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it (on the same port as before, if it ran) and wait until it listens."""
        if not self.port:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
        log = self.directory.parent / f"{self.directory.name}.log"
        with log.open("a") as output:  # a file, not a pipe: its output never blocks it
            self.process = subprocess.Popen(
                [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.directory),
                 "--host", "127.0.0.1", "--port", str(self.port)], stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self._listening():
            assert self.process.poll() is None, f"Milvus Lite's server stopped: {log.read_text()}"
            assert time.monotonic() < deadline, f"Milvus Lite's server did not start: {log.read_text()}"
            time.sleep(0.1)

    def _listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        """Kill it (-9: a server that goes away without a word)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None


@dataclass
class EngineChoice:
    """One engine combination; `for_root(root)` gives the same engines every time a root is reopened."""

    name: str
    server_url: str | None = None
    _opened: dict[Path, Engines | None] = field(default_factory=dict)

    @property
    def vector_backend(self) -> str:
        return self.name.split("-")[1]

    def for_root(self, root: Path) -> Engines | None:
        if root not in self._opened:
            self._opened[root] = self._make(root)
        return self._opened[root]

    def _make(self, root: Path) -> Engines | None:
        if self.name == "sqlite-faiss":
            return None
        assert self.server_url is not None
        milvus = str(root.parent / f"{root.name}.milvus.db") if self.vector_backend == "milvus" else None
        return Engines(database_url=create_database(self.server_url), vector_backend=self.vector_backend,
                       milvus_uri=milvus)

    def kind(self, faiss_kind: str) -> str:
        """The index kind to ask for: the FAISS one, or the server backend's kind that searches alike."""
        return faiss_kind if self.vector_backend == "faiss" else _SERVER_KINDS[faiss_kind]
