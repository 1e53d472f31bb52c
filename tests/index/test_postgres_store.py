"""The PostgreSQL item store on a real server: migrations (of an old schema too), passwords kept out of
messages, and a server that goes away and comes back (requests fail with EngineUnavailable meanwhile,
then work again)."""

from __future__ import annotations

import time

import psycopg
import pytest

from index import EngineUnavailable, Gallery, NewItem
from index.engines import Engines
from index.postgres import PostgresSettings, migrate, redact
from index.postgres_store import MIGRATIONS, PostgresItemStore
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
        assert applied == [(number,) for number in range(1, len(MIGRATIONS) + 1)]


def test_label_and_metadata_changes_are_numbered_and_numbers_never_go_back(postgres_server, tmp_path,
                                                                           new_items) -> None:
    store = PostgresItemStore.open(tmp_path / "g", PostgresSettings(create_database(postgres_server)))
    try:
        items, _ = store.add(new_items(4), store.put_images([it.image for it in new_items(4)]), {})
        assert store.attribute_changes(None)[0] == 0  # adds are not changes
        store.update(items[1].id, label="x")
        store.update(items[2].id, metadata={"k": 1})
        latest, changed = store.attribute_changes(0)
        assert latest == 2 and changed.tolist() == [items[1].id, items[2].id]
        store.update(items[1].id, label="y")
        assert store.attribute_changes(2)[1].tolist() == [items[1].id]
        store.delete([items[1].id])  # its change (3) goes with it; 3 is never given again
        store.update(items[3].id, label="z")
        latest, changed = store.attribute_changes(3)
        assert latest == 4 and changed.tolist() == [items[3].id]
    finally:
        store.close()


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


def test_a_database_of_the_old_schema_is_migrated_so_that_items_may_lack_an_image(postgres_server,
                                                                                   tmp_path) -> None:
    url = create_database(postgres_server)
    with psycopg.connect(url, autocommit=True) as conn:  # the gallery as the first three steps left it
        migrate(conn, MIGRATIONS[:3], "schema_migrations")
        conn.execute("INSERT INTO items (external_id, label, metadata, sha256, created_at) "
                     "VALUES ('old', 'cat', '{\"i\": 1}', %s, 1.0)", ("ab" * 32,))
        with pytest.raises(psycopg.errors.NotNullViolation):
            conn.execute("INSERT INTO items (metadata, sha256, created_at) VALUES ('{}', NULL, 1.0)")
    store = PostgresItemStore.open(tmp_path / "g", PostgresSettings(url))
    try:
        old = store.get_by_external_id("old")
        assert (old.label, old.metadata, old.sha256) == ("cat", {"i": 1}, "ab" * 32)
        items, _ = store.add([NewItem(None, "bare")], [None], {})
        assert store.get(items[0].id).sha256 is None and store.count(has_image=False) == 1
        assert store.count() == 2
    finally:
        store.close()
