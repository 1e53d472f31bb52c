"""The service's exceptions, and the one place that maps exceptions to HTTP responses.

Every error response has the body `{"detail": str, "code": str}`: `detail` is for people,
`code` a short snake_case string for programs. Code below the route layer raises the typed
exceptions defined here (never `HTTPException`); `register_exception_handlers(app)` turns them,
FastAPI's validation errors, Starlette's `HTTPException` (unknown route, wrong method) and any
exception type added with `ErrorTable.register` into that body. Anything else is a 500 with
`{"detail": "internal error", "code": "internal"}`, and is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

LOG = logging.getLogger(__name__)

# Codes for Starlette's own HTTPExceptions (routing, body parsing), by status.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_format",
    422: "invalid_parameter",
    507: "insufficient_storage",
    503: "unavailable",
}


class ServiceError(Exception):
    """Base of the service's errors: an HTTP status, a machine-readable code and headers.

    Subclasses set `status_code` and `code`; an instance may override `code` (for example
    `InvalidImage(..., code="empty_file")`).
    """

    status_code: ClassVar[int] = 500
    code: str = "internal"

    def __init__(self, detail: str, *, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})


class InvalidImage(ServiceError):
    """400: the upload is not a usable image (codes `not_an_image`, `empty_file`, `truncated_image`, ...)."""

    status_code = 400
    code = "not_an_image"


class UnsupportedFormat(ServiceError):
    """415: an image, but in a format the service does not accept."""

    status_code = 415
    code = "unsupported_format"


class PayloadTooLarge(ServiceError):
    """413: too many bytes or files (`too_large`), or too many pixels (`image_too_large`)."""

    status_code = 413
    code = "too_large"


class InvalidParameter(ServiceError):
    """422: a request parameter is out of range or malformed."""

    status_code = 422
    code = "invalid_parameter"


class Unauthorized(ServiceError):
    """401: an API key is required and none was sent."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "APIKey"})


class Forbidden(ServiceError):
    """403: the API key sent does not grant this operation."""

    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    """404: no such item, job or model version."""

    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    """409: the request conflicts with the current state (e.g. a job that already finished)."""

    status_code = 409
    code = "conflict"


class _Unavailable(ServiceError):
    """503 with a `Retry-After` header (whole seconds)."""

    status_code = 503

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class Overloaded(_Unavailable):
    """503: the inference queue is full; the client should retry after `retry_after` seconds."""

    code = "overloaded"

    def __init__(self, detail: str = "the inference queue is full; retry shortly", *,
                 retry_after: int = 1) -> None:
        super().__init__(detail, retry_after=retry_after)


class NotReady(_Unavailable):
    """503: the service is starting or stopping (model or gallery not available)."""

    code = "not_ready"

    def __init__(self, detail: str, *, retry_after: int = 5) -> None:
        super().__init__(detail, retry_after=retry_after)


class InsufficientStorage(ServiceError):
    """507: the disk of the store is full; nothing of the request was kept."""

    status_code = 507
    code = "insufficient_storage"


class StorageUnavailable(_Unavailable):
    """503: the store cannot be written or reached (read-only, permissions, I/O error)."""

    code = "storage_unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5) -> None:
        super().__init__(detail, retry_after=retry_after)


def error_response(status_code: int, detail: str, code: str,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one error body: `{"detail": detail, "code": code}`."""
    return JSONResponse({"detail": detail, "code": code}, status_code=status_code,
                        headers=dict(headers) if headers else None)


class ErrorTable:
    """Maps further exception types (e.g. from `index/`) onto the error body, one line each.

    >>> errors = register_exception_handlers(app)
    >>> errors.register(ItemNotFound, 404, "not_found")

    The response's `detail` is `str(exc)`, so those exceptions' messages must be fit for clients.
    """

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._codes: dict[type[Exception], tuple[int, str]] = {}

    def register(self, exc_type: type[Exception], status_code: int, code: str) -> None:
        """Answer `exc_type` (and its subclasses) with `status_code` and `code`."""
        if not 400 <= status_code <= 599:
            raise ValueError(f"{exc_type.__name__}: status {status_code} is not an error status")
        if issubclass(exc_type, ServiceError):
            raise ValueError(f"{exc_type.__name__} is a ServiceError: it carries its own status and code")
        self._codes[exc_type] = (status_code, code)
        self._app.add_exception_handler(exc_type, self._handle)

    def mapping(self, exc_type: type[Exception]) -> tuple[int, str] | None:
        """The (status, code) registered for `exc_type` or its nearest base class."""
        for base in exc_type.__mro__:
            if base in self._codes:
                return self._codes[base]
        return None

    async def _handle(self, request: Request, exc: Exception) -> JSONResponse:
        status_code, code = self.mapping(type(exc)) or (500, "internal")
        _log_client_error(request, status_code, code, str(exc))
        return error_response(status_code, str(exc), code)


def register_exception_handlers(app: FastAPI) -> ErrorTable:
    """Install the error handlers on `app`; returns the table for further exception types."""
    app.add_exception_handler(ServiceError, _handle_service_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(Exception, _handle_unexpected)
    return ErrorTable(app)


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """FastAPI/pydantic validation errors -> one readable line naming each field.

    `[{"loc": ("query", "k"), "msg": "Input should be ..."}]` -> `"query parameter k: Input should be ..."`.
    """
    parts = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        where = {"query": "query parameter", "path": "path parameter", "header": "header",
                 "cookie": "cookie", "body": "field"}.get(loc[0], "") if loc else ""
        name = ".".join(loc[1:] if where else loc)
        label = f"{where} {name}".strip() or "request"
        parts.append(f"{label}: {error.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request"


async def _handle_service_error(request: Request, exc: ServiceError) -> JSONResponse:
    _log_client_error(request, exc.status_code, exc.code, exc.detail)
    return error_response(exc.status_code, exc.detail, exc.code, exc.headers)


async def _handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = validation_message(exc.errors())
    _log_client_error(request, 422, "invalid_parameter", detail)
    return error_response(422, detail, "invalid_parameter")


async def _handle_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status_code = exc.status_code
    code = _HTTP_CODES.get(status_code, "internal" if status_code >= 500 else f"http_{status_code}")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if status_code == 404 and detail == HTTPStatus.NOT_FOUND.phrase:
        detail = f"no such route: {request.method} {request.url.path}"
    elif status_code == 405 and detail == HTTPStatus.METHOD_NOT_ALLOWED.phrase:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    headers = exc.headers
    if status_code == 405:  # Starlette names the methods of the first route matching the path only
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    _log_client_error(request, status_code, code, detail)
    return error_response(status_code, detail, code, headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on the request's path."""
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.routes):
        path, allowed = getattr(context, "path", None), getattr(context, "methods", None)
        if path and allowed and compile_path(path)[0].fullmatch(request.url.path):
            methods |= allowed
    return sorted(methods)


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    LOG.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path,
              exc_info=(type(exc), exc, exc.__traceback__))
    return error_response(500, "internal error", "internal")


def _log_client_error(request: Request, status_code: int, code: str, detail: str) -> None:
    level = logging.WARNING if status_code >= 500 else logging.DEBUG
    LOG.log(level, "%s %s -> %d %s: %s", request.method, request.url.path, status_code, code, detail)
