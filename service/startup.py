"""`RuntimeStarter`: opens the service's `Runtime`, and keeps trying while a server does not answer.

`cgd serve` starts even when PostgreSQL or Milvus cannot be reached: the first failed attempt is
logged, `/ready` answers 503 with the reason and every request 503 `not_ready` saying which server is
missing, and attempts go on in the background (every `RETRY_S` seconds, doubling up to `MAX_RETRY_S`)
until the runtime opens. Any other start-up error stops the service as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

import index
from service.runtime import Runtime
from service.settings import Settings

LOG = logging.getLogger(__name__)

RETRY_S = 1.0
MAX_RETRY_S = 10.0


class RuntimeStarter:
    """Sets `app.state.runtime` once the runtime opens; `app.state.start_error` says why it has not."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self._app = app
        self._settings = settings
        self._retrying: asyncio.Task[None] | None = None
        app.state.start_error = None

    async def start(self) -> None:
        """Open the runtime, or, if a server does not answer, keep trying in the background."""
        if not await self._attempt():
            self._retrying = asyncio.create_task(self._retry(), name="cgd-runtime-start")

    async def stop(self) -> None:
        """Stop trying and close the runtime if it opened."""
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrying
        runtime: Runtime | None = self._app.state.runtime
        self._app.state.runtime = None
        if runtime is not None:
            await runtime.close()

    async def _attempt(self) -> bool:
        try:
            runtime = await Runtime.open(self._settings, self._app.state.metrics)
        except index.EngineUnavailable as exc:  # its message names the server, never a password
            if self._app.state.start_error is None:
                LOG.error("cannot open the gallery: %s; serving 503 and retrying until it answers", exc)
            self._app.state.start_error = str(exc)
            return False
        self._app.state.start_error = None
        self._app.state.runtime = runtime
        return True

    async def _retry(self) -> None:
        delay = RETRY_S
        while True:
            await asyncio.sleep(delay)
            if await self._attempt():
                LOG.info("the gallery's servers answer again: the service is ready")
                return
            delay = min(2 * delay, MAX_RETRY_S)
