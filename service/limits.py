"""`BodyLimits`: an ASGI middleware that bounds each request body's size and the time it takes to arrive.

Counted while the body streams: as soon as more than `max_bytes` have arrived (or the declared
`Content-Length` says they will), the middleware answers 413 itself; when the whole body has not
arrived `timeout_s` after the request started, 408. Either way the response is the service's error
body with `Connection: close`, sent before the rest of the body is read; the app then sees the client
as disconnected and whatever it answers is dropped. Requests without a body pass untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOG = logging.getLogger(__name__)

_DISCONNECT: Message = {"type": "http.disconnect"}


class BodyLimits:
    """Pure ASGI middleware: `app.add_middleware(BodyLimits, max_bytes=..., timeout_s=...)`."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _LimitedRequest(self, scope, receive, send).run()


class _LimitedRequest:
    """The state of one request under `BodyLimits`."""

    def __init__(self, limits: BodyLimits, scope: Scope, receive: Receive, send: Send) -> None:
        self._limits = limits
        self._scope = scope
        self._receive = receive
        self._send = send
        self._received = 0
        self._body_done = False
        self._cut = False  # the app sees the client as gone
        self._answered = False  # we answered; the app's own response is dropped
        self._app_started = False
        self._deadline = asyncio.get_running_loop().time() + limits.timeout_s

    async def run(self) -> None:
        declared = _content_length(self._scope)
        if declared is not None and declared > self._limits.max_bytes:
            await self._refuse(413, "too_large", f"the request body declares {declared} bytes; "
                                                 f"the limit is {self._limits.max_bytes}")
            return
        await self._limits.app(self._scope, self._receive_limited, self._send_unless_refused)

    async def _receive_limited(self) -> Message:
        if self._cut:
            return _DISCONNECT
        if self._body_done:
            return await self._receive()  # after the body: only a disconnect can come
        remaining = self._deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                message = await self._receive()
        except TimeoutError:
            await self._refuse(408, "request_timeout", f"the request body did not arrive within "
                                                       f"{self._limits.timeout_s:g} s")
            return _DISCONNECT
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            self._body_done = not message.get("more_body", False)
            if self._received > self._limits.max_bytes:
                await self._refuse(413, "too_large", f"the request body is larger than the limit of "
                                                     f"{self._limits.max_bytes} bytes")
                return _DISCONNECT
        return message

    async def _send_unless_refused(self, message: Message) -> None:
        if self._answered:
            return
        if message["type"] == "http.response.start":
            self._app_started = True
        await self._send(message)

    async def _refuse(self, status: int, code: str, detail: str) -> None:
        """Send the error response now, unless the app already started one."""
        self._cut = True
        LOG.info("%s %s -> %d %s: %s", self._scope.get("method"), self._scope.get("path"), status, code,
                 detail)
        if self._app_started:
            return
        self._answered = True
        body = json.dumps({"detail": detail, "code": code}).encode()
        await self._send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
