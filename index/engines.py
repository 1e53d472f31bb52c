"""`Engines`: which engine stores the items and which one searches, and opening them.

Item store: SQLite under the gallery's directory (the default) or PostgreSQL (`database_url`).
Vector search: `faiss` in the process (the default), `pgvector` in the same PostgreSQL, or `milvus`
(`milvus_uri`: a server URI, or a local file path for Milvus Lite). Images stay files under the
gallery's directory whatever the engines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from index.errors import GalleryError
from index.postgres import PostgresSettings, is_postgres_url, redact
from index.protocols import ItemStore, ServerBackend
from index.remote_index import name_prefix
from index.store import SQLiteItemStore

if TYPE_CHECKING:
    from index.milvus_index import ChangeSource, ItemSource

VECTOR_BACKENDS = ("faiss", "pgvector", "milvus")


class InvalidEngines(GalleryError, ValueError):
    """A combination of engines that cannot work (pgvector without PostgreSQL, milvus without a URI)."""


@dataclass(frozen=True, repr=False)
class Engines:
    """The engines of one gallery; the defaults are the embedded ones (SQLite + FAISS)."""

    database_url: str | None = None
    vector_backend: str = "faiss"
    milvus_uri: str | None = None
    pool_size: int = 8
    connect_timeout_s: float = 5.0
    statement_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.vector_backend not in VECTOR_BACKENDS:
            raise InvalidEngines(f"vector backend must be one of {', '.join(VECTOR_BACKENDS)}, "
                                 f"got {self.vector_backend!r}")
        if self.database_url is not None and not is_postgres_url(self.database_url):
            raise InvalidEngines("database URL must start with postgresql://, got "
                                 f"{redact(self.database_url)}")
        if self.vector_backend == "pgvector" and self.database_url is None:
            raise InvalidEngines("the pgvector backend needs a PostgreSQL database URL (CGD_DATABASE_URL)")
        if self.vector_backend == "milvus" and not self.milvus_uri:
            raise InvalidEngines("the milvus backend needs CGD_MILVUS_URI (a server URI or a local file "
                                 "path)")
        if self.pool_size < 1 or self.connect_timeout_s <= 0 or self.statement_timeout_s <= 0:
            raise InvalidEngines("pool size, connect and statement timeouts must be positive")

    def __repr__(self) -> str:
        return f"Engines(store={self.store_name}, vectors={self.vector_backend})"

    @property
    def store_name(self) -> str:
        return "postgresql" if self.database_url is not None else "sqlite"

    def postgres(self) -> PostgresSettings:
        if self.database_url is None:
            raise InvalidEngines("no database URL is set")
        return PostgresSettings(self.database_url, self.pool_size, self.connect_timeout_s,
                                self.statement_timeout_s)


def server_kinds(vector_backend: str) -> Mapping[str, object]:
    """The CGD_INDEX_KIND values a server backend builds, by canonical name."""
    if vector_backend == "pgvector":
        from index.pgvector_index import KINDS
    elif vector_backend == "milvus":
        from index.milvus_index import KINDS
    else:
        raise InvalidEngines(f"{vector_backend} is not a server backend")
    return KINDS


def open_store(root: Path, engines: Engines) -> ItemStore:
    """The item store: PostgreSQL when a database URL is set, else SQLite under `root`."""
    if engines.database_url is None:
        return SQLiteItemStore.open(root)
    from index.postgres_store import PostgresItemStore

    return PostgresItemStore.open(root, engines.postgres())


def open_server_backend(engines: Engines, kind: str, directory: Path, *, ef_search: int | None = None,
                        nprobe: int | None = None, items: ItemSource, changes: ChangeSource | None = None,
                        replica: str | None = None) -> ServerBackend:
    """The pgvector or Milvus backend (`kind` checked against that engine's kinds); pointer files under
    `directory` name the tables or collections that serve, named with `replica`'s prefix; `items` reads
    items from the store (Milvus holds a copy of their labels and metadata to filter on) and `changes`
    the store's numbered changes of them (`ItemStore.attribute_changes`)."""
    prefix = name_prefix(replica)
    if engines.vector_backend == "pgvector":
        from index.pgvector_index import PgvectorBackend

        return PgvectorBackend.open(engines.postgres(), kind, directory, ef_search=ef_search, prefix=prefix)
    if engines.vector_backend == "milvus":
        from index.milvus_index import MilvusBackend

        return MilvusBackend.open(str(engines.milvus_uri), kind, directory, items, ef_search=ef_search,
                                  nprobe=nprobe, timeout_s=engines.connect_timeout_s, prefix=prefix,
                                  changes=changes)
    raise InvalidEngines(f"{engines.vector_backend} runs in the process: it has no server backend")
