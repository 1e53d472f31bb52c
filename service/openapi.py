"""The OpenAPI schema as the service really answers: every error status and body, keys where required.

FastAPI documents only the success response and a 422 with its own validation body. `install_openapi`
replaces `app.openapi` with a builder that, for each operation, adds the error statuses its
dependencies, parameters and body can lead to, all with the one error body (`Error`:
`{"detail": str, "code": str}`), and declares the `X-API-Key` scheme only on the operations that need
a key under the app's settings (reads only when `read_api_key` is set).
"""

from __future__ import annotations

from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts

from service.deps import get_runtime
from service.schemas import ErrorBody
from service.security import require_read_key, require_write_key
from service.settings import Settings
from service.uploads import upload_reader

ERROR_SCHEMA = "Error"
KEY_SCHEME = "APIKey"
_ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_WHY = {
    400: "the body or an uploaded image cannot be read",
    401: "an API key is required (X-API-Key)",
    403: "the API key does not grant this operation",
    404: "no such item, job, model version or vector, or the item has no image",
    408: "the request body did not arrive in time",
    409: "the request conflicts with the current state",
    413: "too many bytes, files or pixels",
    415: "an image format the service does not accept",
    422: "a parameter is missing, malformed or out of range",
    503: "not ready, overloaded or the store is unavailable; see Retry-After",
    507: "the store is full; nothing was kept",
}


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` return the complete schema (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_schema(app, app.state.settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_schema(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of `app` with the error responses and key requirements of `settings`."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas[ERROR_SCHEMA] = ErrorBody.model_json_schema()
    keyed = False
    for context in iter_route_contexts(app.routes):
        if not isinstance(context.original_route, APIRoute) or not context.include_in_schema:
            continue
        route: Any = context  # the route as included: its prefix and the routers' dependencies
        calls = set(_calls(route.dependant))
        for method in route.methods:
            operation = schema["paths"][route.path_format][method.lower()]
            _add_errors(operation["responses"], error_statuses(route, method, calls, settings))
            if needs_key(calls, settings):
                operation["security"] = [{KEY_SCHEME: []}]
                keyed = True
            else:
                operation.pop("security", None)
    if not keyed:
        components.get("securitySchemes", {}).pop(KEY_SCHEME, None)
        if not components.get("securitySchemes"):
            components.pop("securitySchemes", None)
    return schema


def needs_key(calls: set[object], settings: Settings) -> bool:
    """Whether an operation with these dependencies requires an API key under `settings`."""
    return ((require_write_key in calls and settings.api_key is not None)
            or (require_read_key in calls and settings.read_api_key is not None))


def error_statuses(route: Any, method: str, calls: set[object], settings: Settings) -> set[int]:
    """The error statuses one operation can answer."""
    dependant = route.dependant
    statuses: set[int] = set()
    if get_runtime in calls:
        statuses |= {404, 503}
    if dependant.path_params or dependant.query_params or dependant.header_params or route.body_field:
        statuses.add(422)
    if dependant.path_params:
        statuses.add(404)
    if route.body_field is not None:
        statuses |= {400, 408, 413, 422}
    if upload_reader in calls:
        statuses |= {400, 413, 415, 503}
    if method in _WRITE_METHODS and require_write_key in calls:
        statuses |= {409, 503, 507}
    if needs_key(calls, settings):
        statuses |= {401, 403}
    return statuses


def _add_errors(responses: dict[str, Any], statuses: set[int]) -> None:
    """Document each status with the error body (a status documented with its own model keeps it)."""
    for status in sorted(statuses | ({422} if "422" in responses else set())):
        entry = responses.get(str(status))
        if entry is not None and str(status) != "422" and "content" in entry:
            continue
        responses[str(status)] = {
            "description": f"{HTTPStatus(status).phrase}: {_WHY[status]}",
            "content": {"application/json": {"schema": _ERROR_REF}},
        }


def _calls(dependant: Dependant) -> Iterator[object]:
    """Every dependency callable of an operation, nested ones included."""
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)
