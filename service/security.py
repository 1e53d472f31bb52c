"""API-key dependencies: the `X-API-Key` header, checked against `app.state.settings`.

- `require_write_key` guards state-changing endpoints when `settings.api_key` is set.
- `require_read_key` guards reads and searches when `settings.read_api_key` is set; the write
  key is accepted there too.

A missing key is `Unauthorized` (401), a wrong one `Forbidden` (403). Use them as
`APIRouter(dependencies=[Depends(require_read_key)])` or per route.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from service.errors import Forbidden, Unauthorized
from service.settings import Settings

API_KEY_HEADER = "X-API-Key"

# Declares the header in the OpenAPI schema ("Authorize" in /docs); the checks are ours.
_api_key_header = APIKeyHeader(name=API_KEY_HEADER, scheme_name="APIKey", auto_error=False,
                               description="the write key, or the read key for reads")
ApiKeyHeader = Annotated[str | None, Depends(_api_key_header)]


async def require_write_key(request: Request, api_key: ApiKeyHeader) -> None:
    """Passes when no write key is configured, or when the request carries it."""
    settings: Settings = request.app.state.settings
    if settings.api_key is None:
        return
    if not _matches(_present(api_key), settings.api_key):
        raise Forbidden(f"the {API_KEY_HEADER} sent does not grant this operation")


async def require_read_key(request: Request, api_key: ApiKeyHeader) -> None:
    """Passes when no read key is configured, or when the request carries the read or write key."""
    settings: Settings = request.app.state.settings
    if settings.read_api_key is None:
        return
    key = _present(api_key)
    if not any(_matches(key, allowed) for allowed in (settings.read_api_key, settings.api_key) if allowed):
        raise Forbidden(f"the {API_KEY_HEADER} sent does not grant this operation")


def _present(api_key: str | None) -> str:
    if not api_key:
        raise Unauthorized(f"this operation needs an API key in the {API_KEY_HEADER} header")
    return api_key


def _matches(given: str, expected: SecretStr) -> bool:
    """Constant-time comparison of the raw header bytes with the configured key's UTF-8 bytes."""
    # Starlette decodes header bytes as latin-1; encoding back recovers them exactly.
    try:
        raw = given.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return secrets.compare_digest(raw, expected.get_secret_value().encode("utf-8"))
