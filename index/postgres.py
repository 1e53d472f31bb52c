"""PostgreSQL connections for the gallery: settings, a pool, schema migrations, URLs without passwords.

`PostgresSettings` names the server (`url`) and bounds what the gallery waits for: `pool_size`
connections, `connect_timeout_s` to connect, `statement_timeout_s` per statement. Every connection
commits durably (`synchronous_commit=on`). `redact(url)` is the URL as logs, errors and /ready show it.
`migrate` applies a list of schema steps once each (the gallery's tables, the service's).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from index.errors import EngineUnavailable

LOG = logging.getLogger(__name__)

URL_SCHEMES = ("postgresql", "postgres")
_MIGRATION_LOCK = 0x43474447  # pg_advisory_xact_lock key ("CGDG")


class DatabaseUnavailable(EngineUnavailable):
    """The database server cannot be reached or does not answer in time (the message has no password)."""


@dataclass(frozen=True, repr=False)
class PostgresSettings:
    """Where the database is and how long to wait for it."""

    url: str
    pool_size: int = 8
    connect_timeout_s: float = 5.0
    statement_timeout_s: float = 30.0

    def __repr__(self) -> str:
        return f"PostgresSettings(url={redact(self.url)!r}, pool_size={self.pool_size})"


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme in URL_SCHEMES


def redact(url: str) -> str:
    """`url` with any password replaced by ***, in the URL itself and in its query (password=...)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            credentials, host = netloc.rsplit("@", 1)
            user = credentials.split(":", 1)[0]
            netloc = f"{user}:***@{host}" if ":" in credentials else f"{user}@{host}"
        query = "&".join("password=***" if pair.lower().startswith("password=") else pair
                         for pair in parts.query.split("&")) if parts.query else ""
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable database URL>"


def scrub(message: str, url: str) -> str:
    """An error message with the URL's password (if any) removed."""
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        password = None
    message = message.replace(url, redact(url))
    return message.replace(str(password), "***") if password else message


def open_pool(settings: PostgresSettings,
              configure: Callable[[psycopg.Connection], None] | None = None) -> ConnectionPool:
    """A pool of autocommit connections (each passed to `configure` once); raises DatabaseUnavailable if
    no connection is made in time."""
    statement_ms = int(settings.statement_timeout_s * 1000)
    conninfo = make_conninfo(settings.url, connect_timeout=max(1, round(settings.connect_timeout_s)),
                             options=f"-c statement_timeout={statement_ms} -c synchronous_commit=on")
    pool = ConnectionPool(conninfo, min_size=1, max_size=settings.pool_size, open=False,
                          kwargs={"autocommit": True}, configure=configure,
                          timeout=settings.connect_timeout_s, name="cgd-gallery")
    try:
        pool.open(wait=True, timeout=settings.connect_timeout_s)
    except Exception as exc:
        pool.close()
        raise DatabaseUnavailable(f"cannot connect to {redact(settings.url)}: "
                                  f"{scrub(str(exc), settings.url)}") from None
    return pool


@contextlib.contextmanager
def pooled(pool: ConnectionPool, url: str) -> Iterator[psycopg.Connection]:
    """A connection from `pool`; a server that cannot be reached or answers too late (connect or statement
    timeout) becomes DatabaseUnavailable, without the password."""
    try:
        with pool.connection() as conn:
            yield conn
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise DatabaseUnavailable(f"database {redact(url)}: {scrub(str(exc), url)}") from None


def migrate(conn: psycopg.Connection, steps: Sequence[str], table: str) -> int:
    """Apply the `steps` (SQL scripts, in order) that `table` does not record yet, each in its own
    transaction under an advisory lock (several processes starting at once apply each step once);
    returns how many were applied."""
    applied = 0
    for number, script in enumerate(steps, start=1):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, "
                         "applied_at DOUBLE PRECISION NOT NULL)")
            if conn.execute(f"SELECT 1 FROM {table} WHERE version = %s", (number,)).fetchone():
                continue
            conn.execute(script)
            conn.execute(f"INSERT INTO {table} (version, applied_at) VALUES (%s, %s)", (number, time.time()))
            applied += 1
    return applied


def open_migrated_pool(settings: PostgresSettings, steps: Sequence[str], table: str) -> ConnectionPool:
    """`open_pool`, then `migrate` the database with `steps` (recorded in `table`); nothing stays open if
    either fails."""
    pool = open_pool(settings)
    try:
        with pooled(pool, settings.url) as conn:
            applied = migrate(conn, steps, table)
    except BaseException:
        pool.close()
        raise
    if applied:
        LOG.info("database %s: %d schema migration(s) applied (%s)", redact(settings.url), applied, table)
    return pool
