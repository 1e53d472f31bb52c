"""The service on PostgreSQL + pgvector, and on PostgreSQL + a Milvus server (real servers): /ready names
the engines; while a server is stopped, /ready and requests answer 503 with the reason and no password,
and it recovers by itself; `cgd serve` started while a server is down serves 503s, then everything once
the server is back."""

from __future__ import annotations

import time

from tests.index.engines import create_database


def wait_until_ready(client, seconds: float, log_tail=lambda: "") -> None:
    """Poll /ready until it answers 200 (the service reconnects by itself); fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, f"not ready within {seconds:g} s:\n{log_tail()}"
        time.sleep(0.5)


def add_two_on_postgresql(client, make_image, index_backend: str) -> int:
    """/ready names PostgreSQL and `index_backend`; images 1 and 2 are added: the id of image 1."""
    ready = client.get("/ready").json()
    assert ready["ready"], ready["reasons"]
    assert ready["store"]["backend"] == "postgresql" and ready["index"]["backend"] == index_backend
    images = [("files", ("a.png", make_image(1))), ("files", ("b.png", make_image(2)))]
    added = client.post("/gallery", files=images)
    assert added.status_code == 201, added.text
    return added.json()["items"][0]["id"]


def assert_the_first_hit_is(client, make_image, item_id: int) -> None:
    """A search with image 1 returns `item_id` first."""
    hits = client.post("/search", files={"file": ("q.png", make_image(1))})
    assert hits.status_code == 200, hits.text
    assert hits.json()["results"][0]["id"] == item_id


def assert_an_added_image_finds_itself(client, make_image) -> None:
    """Image 1 is added, then found first by a search with it."""
    added = client.post("/gallery", files=[("files", ("a.png", make_image(1)))])
    assert added.status_code == 201, added.text
    assert_the_first_hit_is(client, make_image, added.json()["items"][0]["id"])


def test_the_service_on_postgresql_and_pgvector_survives_its_database_going_away(
        tmp_path, open_app, make_image, expect_error, postgres_control) -> None:
    url = create_database(postgres_control.url).replace("postgres:@", "postgres:hunter2-secret@")
    settings = {"database_url": url, "vector_backend": "pgvector", "index_kind": "HNSW",
                "db_connect_timeout_s": 1.0}
    with open_app(tmp_path / "data", **settings) as client:
        first = add_two_on_postgresql(client, make_image, "pgvector")
        postgres_control.stop()
        try:
            not_ready = client.get("/ready")
            assert not_ready.status_code == 503 and "engine" in " ".join(not_ready.json()["reasons"])
            assert "hunter2-secret" not in not_ready.text
            body = expect_error(client.get("/gallery"), 503, "unavailable")
            assert "hunter2-secret" not in body["detail"]
            expect_error(client.post("/search", files={"file": ("q.png", make_image(1))}), 503, "unavailable")
            expect_error(client.get("/models"), 503, "unavailable")  # the model records are in it too
            expect_error(client.get("/train"), 503, "unavailable")  # and the training jobs
            assert client.get("/metrics").status_code == 200  # the last gallery figures stay
        finally:
            postgres_control.start()
        wait_until_ready(client, 60)  # the pools reconnect by themselves
        assert_the_first_hit_is(client, make_image, first)


def test_cgd_serve_starts_while_its_database_is_down_and_serves_once_it_is_back(
        tmp_path, serve, make_image, expect_error, postgres_control) -> None:
    url = create_database(postgres_control.url).replace("postgres:@", "postgres:hunter2-secret@")
    env = {"CGD_DATABASE_URL": url, "CGD_VECTOR_BACKEND": "pgvector", "CGD_INDEX_KIND": "HNSW",
           "CGD_DB_CONNECT_TIMEOUT_S": "1"}
    postgres_control.stop()
    try:
        server = serve(tmp_path / "data", tmp_path / "serve.log", env, until="/health")
        not_ready = server.client.get("/ready")
        assert not_ready.status_code == 503, not_ready.text
        reasons = " ".join(not_ready.json()["reasons"])
        assert reasons.startswith("engine: ") and "retrying" in reasons, reasons
        body = expect_error(server.client.get("/gallery"), 503, "not_ready")
        assert "does not answer" in body["detail"] and "retries" in body["detail"], body
        query = {"file": ("q.png", make_image(1))}
        expect_error(server.client.post("/search", files=query), 503, "not_ready")
        expect_error(server.client.post("/gallery", files=[("files", ("a.png", make_image(1)))]), 503)
        assert "hunter2-secret" not in not_ready.text + body["detail"]
    finally:
        postgres_control.start()
    wait_until_ready(server.client, 120, server.log_tail)  # the next attempt opens gallery and model
    assert_an_added_image_finds_itself(server.client, make_image)
    assert server.stop() == 0
    assert "hunter2-secret" not in server.log.read_text(errors="replace")


def test_the_service_on_a_milvus_server_survives_milvus_going_away(
        tmp_path, open_app, make_image, expect_error, postgres_server, milvus_server) -> None:
    settings = {"database_url": create_database(postgres_server), "vector_backend": "milvus",
                "milvus_uri": milvus_server.uri, "index_kind": "HNSW", "db_connect_timeout_s": 1.0}
    with open_app(tmp_path / "data", **settings) as client:
        first = add_two_on_postgresql(client, make_image, "milvus")
        milvus_server.stop()
        not_ready = client.get("/ready")
        assert not_ready.status_code == 503, not_ready.text
        reasons = not_ready.json()["reasons"]
        assert any(reason.startswith("engine: Milvus at ") for reason in reasons), reasons
        expect_error(client.post("/search", files={"file": ("q.png", make_image(1))}), 503, "unavailable")
        assert client.get("/gallery").status_code == 200  # the items are in PostgreSQL, which answers
        milvus_server.start()  # the same data and port; its collections come back unloaded
        wait_until_ready(client, 60)  # the client reconnects by itself
        assert_the_first_hit_is(client, make_image, first)


def test_cgd_serve_starts_while_its_milvus_server_is_down_and_serves_once_it_is_back(
        tmp_path, serve, make_image, expect_error, postgres_server, milvus_server) -> None:
    env = {"CGD_DATABASE_URL": create_database(postgres_server), "CGD_VECTOR_BACKEND": "milvus",
           "CGD_MILVUS_URI": milvus_server.uri, "CGD_INDEX_KIND": "HNSW", "CGD_DB_CONNECT_TIMEOUT_S": "1"}
    milvus_server.stop()
    server = serve(tmp_path / "data", tmp_path / "serve.log", env, until="/health")
    not_ready = server.client.get("/ready")
    assert not_ready.status_code == 503, not_ready.text
    reasons = " ".join(not_ready.json()["reasons"])
    assert reasons.startswith("engine: cannot connect to Milvus") and "retrying" in reasons, reasons
    expect_error(server.client.post("/search", files={"file": ("q.png", make_image(1))}), 503, "not_ready")
    upload = [("files", ("a.png", make_image(1)))]
    expect_error(server.client.post("/gallery", files=upload), 503, "not_ready")
    milvus_server.start()
    wait_until_ready(server.client, 120, server.log_tail)  # the next attempt opens gallery and model
    assert_an_added_image_finds_itself(server.client, make_image)
    assert server.stop() == 0
