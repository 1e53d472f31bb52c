"""`readiness(app)`: the one status body of `/ready` (model, runtime, index, store, queue, training).

The store and index name their engines (sqlite or postgresql; faiss, pgvector or milvus); a database or
vector server that does not answer makes it not ready, the reason saying which (without a password).

Not ready while the runtime is starting or stopping, and while the data directory cannot be written
(`StorageHealth.probe`, run at each call: a full or read-only disk is reported before a write fails).
Everything that touches the disk or SQLite runs in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

import index
from model.embedder import Embedder
from service.runtime import Runtime
from service.schemas import IndexStatus, Readiness, RuntimeChoice, StoreStatus
from service.storage_health import StorageFault, StorageHealth, storage_error

PRECISION_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # as in the settings


async def readiness(app: FastAPI) -> Readiness:
    """The service's status now; `ready` is False with the reasons when it cannot serve everything."""
    storage: StorageHealth = app.state.storage
    runtime: Runtime | None = app.state.runtime
    if runtime is not None:
        fault = await runtime.gateway.run(storage.probe)
    else:  # starting or stopping: the gateway's executor may not exist
        fault = await asyncio.to_thread(storage.probe)
    reasons = [f"storage: {fault.detail}"] if fault is not None else []
    store_engine = app.state.settings.gallery_engines().store_name
    if runtime is None:
        unreachable = getattr(app.state, "start_error", None)  # a server did not answer: retrying
        reasons.insert(0, f"engine: {unreachable} (retrying)" if unreachable else
                       "starting or stopping: the model and the gallery are not loaded")
        return Readiness(ready=False, reasons=reasons, model_version=None, device=None, precision=None,
                         runtime=None, index=None, store=_store(store_engine, None, fault), queue_depth=0,
                         training=None)
    try:
        items, index_status, training = await runtime.gateway.run(_gallery_facts, runtime)
    except Exception as exc:  # the store or the vector engine cannot be read: not ready, and say why
        if isinstance(exc, index.EngineUnavailable):  # its message names the server, never a password
            reasons.append(f"engine: {exc}")
        else:
            error = storage_error(exc)
            if error is None:
                raise
            reasons.append(f"storage: {error.detail}")
        items, index_status, training = None, None, None
    embedder = runtime.worker.embedder
    choice = embedder.choice if isinstance(embedder, Embedder) else None  # None unless CGD_RUNTIME=auto
    return Readiness(
        ready=not reasons, reasons=reasons, model_version=embedder.version, device=str(embedder.device),
        precision=_precision(embedder.dtype), runtime=embedder.runtime,
        runtime_choice=RuntimeChoice(**choice.to_dict()) if choice is not None else None, index=index_status,
        store=_store(store_engine, items, fault), queue_depth=runtime.worker.queue_depth, training=training,
    )


def _precision(dtype: object) -> str:
    name = str(dtype).removeprefix("torch.")
    return PRECISION_NAMES.get(name, name)


def _store(engine: str, items: int | None, fault: StorageFault | None) -> StoreStatus:
    return StoreStatus(backend=engine, items=items, writable=fault is None,
                       error=fault.detail if fault is not None else None)


def _gallery_facts(runtime: Runtime) -> tuple[int, IndexStatus, str | None]:
    """(items, the live index, the running job) read from the gallery and the job store (blocking)."""
    gallery = runtime.gateway.gallery  # on the gateway's executor
    _, vector_engine = gallery.engines
    options = runtime.settings.index_options()
    configured = {"nprobe": options["nprobe"], "ef_search": options["ef_search"],
                  "refine_factor": options["k_factor"], "use_gpu": options["use_gpu"],
                  "blas_threshold": options["blas_threshold"]}
    gallery.check_vector_engine()  # a Milvus server that went away: not ready, its reason given
    try:
        stats = gallery.index_stats()
        dim = gallery.version_info(stats.version).dim
        status = IndexStatus(backend=vector_engine, kind=stats.kind, dim=dim, size=stats.vectors,
                             serving=stats.factory, coarse_dim=stats.coarse_dim, tombstones=stats.tombstones,
                             **configured)
    except index.UnknownVersion:  # no vector stored yet
        status = IndexStatus(backend=vector_engine, kind=runtime.settings.index_kind, dim=runtime.worker.dim,
                             size=0, **configured)
    return gallery.count(), status, runtime.jobs.running_id()
