"""API-key dependencies on a real FastAPI app, for each combination of configured keys."""

from __future__ import annotations

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from service.errors import register_exception_handlers
from service.security import API_KEY_HEADER, require_read_key, require_write_key
from service.settings import Settings

WRITE, READ = "write-key-0123", "read-key-4567"


def client_for(**keys: str) -> TestClient:
    app = FastAPI()
    app.state.settings = Settings(**keys)
    register_exception_handlers(app)

    @app.get("/things", dependencies=[Depends(require_read_key)])
    def list_things() -> list[str]:
        return ["a"]

    @app.post("/things", dependencies=[Depends(require_write_key)])
    def add_thing() -> dict[str, bool]:
        return {"added": True}

    return TestClient(app)


def status(client: TestClient, method: str, key: str | None) -> int:
    headers = {API_KEY_HEADER: key} if key is not None else {}
    return client.request(method, "/things", headers=headers).status_code


def test_no_keys_configured_everything_is_open() -> None:
    client = client_for()
    assert status(client, "GET", None) == 200
    assert status(client, "POST", None) == 200
    assert status(client, "POST", "anything") == 200


def test_write_key_guards_only_state_changes() -> None:
    client = client_for(api_key=WRITE)
    assert status(client, "GET", None) == 200
    assert status(client, "POST", WRITE) == 200
    response = client.post("/things")
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized" and API_KEY_HEADER in response.json()["detail"]
    response = client.post("/things", headers={API_KEY_HEADER: "wrong"})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert status(client, "POST", "") == 401


def test_read_key_guards_reads_and_the_write_key_also_reads() -> None:
    client = client_for(api_key=WRITE, read_api_key=READ)
    assert status(client, "GET", READ) == 200
    assert status(client, "GET", WRITE) == 200
    assert status(client, "GET", None) == 401
    assert status(client, "GET", "wrong") == 403
    assert status(client, "POST", READ) == 403  # the read key does not grant writes


def test_read_key_alone_leaves_writes_open() -> None:
    client = client_for(read_api_key=READ)
    assert status(client, "GET", None) == 401
    assert status(client, "GET", READ) == 200
    assert status(client, "POST", None) == 200


@pytest.mark.parametrize("sent", ["write-key-0123 ", "WRITE-KEY-0123", "write-key-012"])
def test_near_misses_are_refused(sent: str) -> None:
    assert status(client_for(api_key=WRITE), "POST", sent) == 403


def test_non_ascii_keys_are_compared_without_errors() -> None:
    client = client_for(api_key="clé-secrète")
    assert client.post("/things", headers={API_KEY_HEADER: "clé-secrète".encode()}).status_code == 200
    assert client.post("/things", headers={API_KEY_HEADER: "clé-secrete".encode()}).status_code == 403
    ascii_key = client_for(api_key=WRITE)
    assert ascii_key.post("/things", headers={API_KEY_HEADER: "wrîte".encode()}).status_code == 403


def test_key_header_is_documented_in_openapi() -> None:
    schema = client_for(api_key=WRITE).get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKey"] == {
        "type": "apiKey", "in": "header", "name": API_KEY_HEADER,
        "description": "the write key, or the read key for reads",
    }
