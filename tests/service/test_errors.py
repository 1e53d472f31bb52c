"""Every error of a real FastAPI app leaves as `{"detail", "code"}` with the right status."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI, Query
from fastapi.testclient import TestClient

from service.errors import (
    Conflict,
    ErrorTable,
    Forbidden,
    InvalidImage,
    InvalidParameter,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    UnsupportedFormat,
    register_exception_handlers,
)


class ItemMissing(LookupError):
    """Stands for an exception of another package (e.g. `index.errors.ItemNotFound`)."""


class ItemMissingHere(ItemMissing):
    pass


RAISED = {
    "invalid-image": InvalidImage("a.png: not an image"),
    "empty-file": InvalidImage("a.png: the file is empty", code="empty_file"),
    "unsupported": UnsupportedFormat("a.tif: TIFF images are not supported"),
    "too-large": PayloadTooLarge("a.png: too many bytes"),
    "invalid-parameter": InvalidParameter("k must be at least 1"),
    "unauthorized": Unauthorized("an API key is needed"),
    "forbidden": Forbidden("wrong key"),
    "not-found": NotFound("unknown item 7"),
    "conflict": Conflict("job already finished"),
    "overloaded": Overloaded(retry_after=2),
    "not-ready": NotReady("starting"),
}


def build_app() -> tuple[FastAPI, ErrorTable]:
    app = FastAPI()
    table = register_exception_handlers(app)

    @app.get("/raise/{name}")
    def raise_named(name: str) -> None:
        raise RAISED[name]

    @app.get("/items/{item_id}")
    def item(item_id: int, k: int = Query(10, ge=1)) -> dict[str, int]:
        return {"item_id": item_id, "k": k}

    @app.get("/missing")
    def missing() -> None:
        raise ItemMissingHere("item 3 is not in the gallery")

    @app.get("/bug")
    def bug() -> None:
        raise RuntimeError("secret internals")

    return app, table


@pytest.fixture
def client() -> TestClient:
    app, table = build_app()
    table.register(ItemMissing, 404, "not_found")
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("invalid-image", 400, "not_an_image"),
        ("empty-file", 400, "empty_file"),
        ("unsupported", 415, "unsupported_format"),
        ("too-large", 413, "too_large"),
        ("invalid-parameter", 422, "invalid_parameter"),
        ("unauthorized", 401, "unauthorized"),
        ("forbidden", 403, "forbidden"),
        ("not-found", 404, "not_found"),
        ("conflict", 409, "conflict"),
        ("overloaded", 503, "overloaded"),
        ("not-ready", 503, "not_ready"),
    ],
)
def test_service_errors_map_to_status_and_code(client: TestClient, name: str, status: int, code: str) -> None:
    response = client.get(f"/raise/{name}")
    assert response.status_code == status
    assert response.json() == {"detail": RAISED[name].detail, "code": code}


def test_unavailable_errors_say_when_to_retry(client: TestClient) -> None:
    assert client.get("/raise/overloaded").headers["retry-after"] == "2"
    assert client.get("/raise/not-ready").headers["retry-after"] == "5"
    assert client.get("/raise/unauthorized").headers["www-authenticate"] == "APIKey"


def test_validation_errors_name_the_field(client: TestClient) -> None:
    response = client.get("/items/seven", params={"k": 0})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid_parameter"
    assert set(body) == {"detail", "code"}
    assert "path parameter item_id" in body["detail"]
    assert "query parameter k" in body["detail"]


def test_unknown_route_and_wrong_method_have_the_same_shape(client: TestClient) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {"detail": "no such route: GET /nowhere", "code": "not_found"}
    response = client.delete("/items/1")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert response.headers["allow"] == "GET"


def test_registered_foreign_exceptions_and_their_subclasses(client: TestClient) -> None:
    response = client.get("/missing")
    assert response.status_code == 404
    assert response.json() == {"detail": "item 3 is not in the gallery", "code": "not_found"}


def test_unexpected_exception_is_a_logged_500_without_internals(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="service.errors"):
        response = client.get("/bug")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error", "code": "internal"}
    assert "secret" not in response.text
    assert any(record.exc_info and "RuntimeError" in record.getMessage() for record in caplog.records)


def test_table_refuses_non_error_statuses_and_service_errors() -> None:
    _, table = build_app()
    with pytest.raises(ValueError, match="not an error status"):
        table.register(KeyError, 200, "ok")
    with pytest.raises(ValueError, match="ServiceError"):
        table.register(NotFound, 404, "not_found")
    table.register(KeyError, 404, "not_found")
    assert table.mapping(KeyError) == (404, "not_found")
    assert table.mapping(ValueError) is None
    assert issubclass(NotFound, ServiceError)
