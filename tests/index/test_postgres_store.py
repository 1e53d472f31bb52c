"""The PostgreSQL item store on a real server: migrations, passwords kept out of messages, and a server
that goes away and comes back (requests fail with EngineUnavailable meanwhile, then work again)."""

from __future__ import annotations

import time

import psycopg
import pytest

from index import EngineUnavailable, Gallery
from index.engines import Engines
from index.postgres import redact
from tests.index.engines import create_database


def _with_password(url: str, password: str) -> str:
    """The URL with a password (the test server trusts local sockets, so it is sent and ignored)."""
    return url.replace("postgres:@", f"postgres:{password}@")


def test_redact_hides_passwords_in_the_url_and_its_query() -> None:
    assert redact("postgresql://cgd:s3cret@db:5432/gallery") == "postgresql://cgd:***@db:5432/gallery"
    assert redact("postgresql://db/gallery?user=cgd&password=s3cret") == \
        "postgresql://db/gallery?user=cgd&password=***"
    assert repr(Engines("postgresql://cgd:s3cret@db/g")).count("s3cret") == 0


def test_schema_is_migrated_once(postgres_server, tmp_path, new_items, unit_vectors) -> None:
    url = create_database(postgres_server)
    engines = Engines(url)
    with Gallery.open(tmp_path / "g", engines=engines) as gallery:
        gallery.add(new_items(3), {"v1": unit_vectors(3)})
    with Gallery.open(tmp_path / "g", engines=engines) as gallery:
        assert gallery.count() == 3 and gallery.engines == ("postgresql", "faiss")
    with psycopg.connect(url) as conn:
        applied = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert applied == [(1,), (2,)]


def test_a_server_that_goes_away_answers_engine_unavailable_then_reconnects(postgres_control, tmp_path,
                                                                            new_items, unit_vectors) -> None:
    url = _with_password(create_database(postgres_control.url), "hunter2-secret")
    engines = Engines(url, "pgvector", connect_timeout_s=1.0)
    with Gallery.open(tmp_path / "g", index_kind="HNSW", engines=engines) as gallery:
        items = gallery.add(new_items(5), {"v1": unit_vectors(5)})
        postgres_control.stop()
        try:
            for call in (gallery.count, lambda: gallery.search(unit_vectors(1), 3),
                         lambda: gallery.add(new_items(1, prefix="late"), {"v1": unit_vectors(1)})):
                started = time.monotonic()
                with pytest.raises(EngineUnavailable) as refused:
                    call()
                assert time.monotonic() - started < 15
                assert "hunter2-secret" not in str(refused.value)
        finally:
            postgres_control.start()  # the session's other tests need it
        deadline = time.monotonic() + 60
        while True:  # the pools reconnect by themselves (their retries back off: a few seconds)
            try:
                assert gallery.count() == 5
                break
            except EngineUnavailable:
                assert time.monotonic() < deadline, "no reconnection within 60 s"
                time.sleep(0.5)
        assert gallery.search(unit_vectors(5)[:1], 1)[1][0][0].item.id == items[0].id
