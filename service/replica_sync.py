"""`ReplicaSync`: keeps one replica in step with the others on a shared PostgreSQL gallery, and records
its heartbeat (`service.replica_heartbeats`) every `HEARTBEAT_S`.

Every `CGD_SYNC_INTERVAL_S` it asks the gallery to catch up with the store (`Gallery.sync`: the items,
deletions and vectors other replicas wrote go into this replica's own indexes) and reads the store's live
version. When another replica made a new version live (promotion or rollback), this one loads that
model from its record (its checkpoint is on the shared data directory) while the old model serves, then
switches index and model together under the `SwapGate`, as a local swap does: no response mixes two
versions. A local swap in progress flips the store and the model under the same gate, so the version is
read again there before switching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from index import EngineUnavailable
from model.embedder import Embedder
from service.gallery_gateway import GalleryGateway
from service.model_registry import ModelRegistry
from service.model_swap import SwapGate
from service.replica_heartbeats import HEARTBEAT_S
from service.worker import InferenceWorker

LOG = logging.getLogger(__name__)


class ReplicaSync:
    """A background task: catch up every `interval_s`, and follow the live version another replica set.

    `load`: `Embedder.load`'s keyword arguments (device, precision, runtime, ...), as the swapper's;
    `heartbeat`: records that this replica runs, called every `HEARTBEAT_S`.
    """

    def __init__(self, gateway: GalleryGateway, worker: InferenceWorker, registry: ModelRegistry,
                 gate: SwapGate, *, interval_s: float, load: dict, heartbeat: Callable[[], None]) -> None:
        self._gateway = gateway
        self._worker = worker
        self._registry = registry
        self._gate = gate
        self._interval_s = interval_s
        self._load = load
        self._heartbeat = heartbeat
        self._task: asyncio.Task[None] | None = None
        self._failing: str | None = None  # the last error logged, so that a long outage logs once

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cgd-replica-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        beaten = time.monotonic()  # the runtime recorded one as it started
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                if time.monotonic() - beaten >= HEARTBEAT_S:
                    await self._gateway.run(self._heartbeat)
                    beaten = time.monotonic()
                await self.step()
            except EngineUnavailable as exc:
                self._log_once(f"catching up with the other replicas: {exc}")
            except Exception as exc:  # the next round tries again; the error is logged once
                self._log_once(f"catching up with the other replicas failed: {type(exc).__name__}: {exc}")

    async def step(self) -> None:
        """One catch-up, and a follow when the store's live version is not the one serving here."""
        live = await self._gateway.run(self._gateway.gallery.sync)
        if live is not None and live != self._gateway.live_version:  # not mid-way through a local swap
            await self._follow(live)
        if self._failing is not None:
            LOG.info("caught up with the other replicas again")
            self._failing = None

    async def _follow(self, version: str) -> None:
        record = await self._gateway.run(self._registry.get, version)
        started = time.perf_counter()
        embedder = await self._gateway.run(Embedder.load, record.checkpoint, **self._load)
        async with self._gate.exclusive():
            if await self._gateway.run(self._gateway.gallery.stored_live_version) != version:
                return  # switched again meanwhile (here or elsewhere): the next round follows that
            if self._worker.version != version:
                await self._gateway.run(self._gateway.gallery.follow, version)
                self._worker.swap(embedder)
        LOG.info("model %s, made live by another replica, serves here too (%.1f s)", version,
                 time.perf_counter() - started)

    def _log_once(self, message: str) -> None:
        if message != self._failing:
            LOG.error(message)
            self._failing = message
