"""`ContentPolicy`: an ASGI middleware that sends the browser's safety headers with every response.

The Content-Security-Policy allows scripts, styles, fonts and connections from the service's own
origin only: no inline script, no eval, no third-party origin. Images may also be `blob:` (the
console fetches thumbnails with the API key and shows them as blob URLs) and `data:` (Swagger UI's
icons); ReDoc's search runs in a `blob:` worker and ReDoc and Swagger UI set inline styles, so
`style-src` admits inline styles (never scripts). The console is not framed anywhere.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' blob: data:",
    "font-src 'self'",
    "connect-src 'self'",
    "worker-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))
SAFETY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ContentPolicy:
    """Pure ASGI middleware: `app.add_middleware(ContentPolicy)`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SAFETY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
