"""`Runtime`: the long-lived objects of one running service, opened and closed together.

Opening loads the serving model, opens the gallery (re-embedding it if it has no vectors for
that model), and starts the inference worker and the training queue. With `CGD_DATABASE_URL` set, the
model records and training jobs are in that PostgreSQL database too (`service.service_db`), and the
process is one replica among any number on that database (`Settings.replica`): its own folder under the
gallery, its share of the training queue, its heartbeats, and a `ReplicaSync` that keeps it in step with
the others. A replica that starts on the gallery's live version joins it without writing it
(`ModelSwapper.join`): a promotion under way on another replica is followed, never undone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from index import Gallery, ItemNotFound, NoImage
from model.data import open_rgb
from model.distributed import default_processes
from model.embedder import Embedder
from model.runtime_select import MAX_SAMPLES
from service.activations import Activations
from service.gallery_gateway import GalleryGateway
from service.job_store import JobStore
from service.metrics import ServiceMetrics
from service.model_registry import ModelRegistry
from service.model_swap import ModelSwapper, SwapGate
from service.replica_heartbeats import ReplicaHeartbeats
from service.replica_sync import ReplicaSync
from service.search_batcher import SearchBatcher
from service.service_db import ServiceDatabase
from service.settings import Settings
from service.training_process import ServingEngine
from service.training_queue import TrainingQueue
from service.worker import InferenceWorker

LOG = logging.getLogger(__name__)

GALLERY_DIR = "gallery"  # under the data directory
ENGINE_DIR = "engines"  # ONNX exports and runtime choices, under the data directory


@dataclass
class Runtime:
    """Everything the routes use; built by `open`, released by `close`."""

    settings: Settings
    registry: ModelRegistry
    gateway: GalleryGateway
    worker: InferenceWorker
    searcher: SearchBatcher
    jobs: JobStore
    training: TrainingQueue
    swapper: ModelSwapper
    activations: Activations
    gate: SwapGate
    metrics: ServiceMetrics
    database: ServiceDatabase | None = None  # the jobs' and model records' PostgreSQL, when set
    sync: ReplicaSync | None = None  # with a database: catching up with the other replicas

    @classmethod
    async def open(cls, settings: Settings, metrics: ServiceMetrics) -> Runtime:
        """Open everything; a server that does not answer raises `index.EngineUnavailable` with nothing
        left open (the app retries)."""
        data = settings.data_dir
        (data / GALLERY_DIR).mkdir(parents=True, exist_ok=True)  # /ready probes it, even before it opens
        engines = settings.gallery_engines()
        database = (await asyncio.to_thread(ServiceDatabase.open, engines.postgres())
                    if engines.database_url is not None else None)
        try:
            if database is not None and settings.replica() is not None:  # before its folder is opened
                await asyncio.to_thread(ReplicaHeartbeats(database).beat, settings.replica())
            gateway = await GalleryGateway.open(data / GALLERY_DIR, threads=settings.io_threads,
                                                **settings.index_options())
        except BaseException:
            if database is not None:
                database.close()
            raise
        try:
            return await cls._start(settings, metrics, gateway, database)
        except BaseException:
            await gateway.close()
            if database is not None:
                database.close()
            raise

    @classmethod
    async def _start(cls, settings: Settings, metrics: ServiceMetrics, gateway: GalleryGateway,
                     database: ServiceDatabase | None) -> Runtime:
        """Load the model, switch the gallery to it and start the workers."""
        data = settings.data_dir
        registry = ModelRegistry(data, database)
        checkpoint = await gateway.run(_serving_checkpoint, settings, registry, gateway.live_version)
        engines = {"runtime": settings.runtime, "cache_dir": data / ENGINE_DIR,
                   "threads": settings.inference_threads,
                   "samples": functools.partial(gallery_samples, gateway.gallery)}
        embedder = await gateway.run(Embedder.load, checkpoint, device=settings.device,
                                     precision=settings.precision, **engines)
        if checkpoint is None:
            await gateway.run(registry.add_default, embedder.version, embedder.model.config.to_dict())
        else:
            await gateway.run(registry.add_checkpoint, checkpoint)
        worker = InferenceWorker(embedder, settings, metrics=metrics)
        await worker.start()
        searcher = SearchBatcher(gateway, max_batch=settings.search_batch_size,
                                 max_queue=settings.search_queue_size, on_batch=metrics.observe_search_batch)
        searcher.start()
        gate = SwapGate()
        swapper = ModelSwapper(worker, gateway, registry, gate, device=settings.device,
                               precision=settings.precision, engines=engines,
                               batch_size=settings.max_batch_size,
                               prefetch=settings.io_threads, replicas=settings.replica() is not None)
        jobs = JobStore(database if database is not None else data / "jobs.sqlite3")
        try:
            if settings.replica() is not None and embedder.version == gateway.live_version:
                await swapper.join(embedder)  # never writes the live version: a promotion may be under way
            else:
                await swapper.switch_to(embedder)  # a compare-and-set from the live version read at open
            training = TrainingQueue(jobs, gateway.gallery, registry, swapper, asyncio.get_running_loop(),
                                     workdir=data / "training", threads=settings.train_threads,
                                     default_max_minutes=settings.train_max_minutes,
                                     replica=settings.replica(), export_onnx=settings.runtime != "torch",
                                     processes=settings.train_processes or default_processes(),
                                     serving=functools.partial(serving_engine, worker, data / ENGINE_DIR))
            await gateway.run(training.start)
        except BaseException:
            await worker.stop(drain=False)
            await searcher.stop()
            jobs.close()
            raise
        sync = None
        if settings.replica() is not None and database is not None:
            beat = functools.partial(ReplicaHeartbeats(database).beat, settings.replica())
            sync = ReplicaSync(gateway, worker, registry, gate, interval_s=settings.sync_interval_s,
                               load={"device": settings.device, "precision": settings.precision, **engines},
                               heartbeat=beat)
            sync.start()
        LOG.info("serving model %s over %d gallery items", embedder.version, await gateway.count())
        return cls(settings, registry, gateway, worker, searcher, jobs, training, swapper,
                   Activations(swapper), gate, metrics, database, sync)

    async def close(self) -> None:
        """Graceful stop: no new jobs, finish queued embeddings, persist and close stores."""
        if self.sync is not None:
            await self.sync.stop()
        await self.activations.stop()
        await self.gateway.run(self.training.stop)
        await self.worker.stop(drain=True)
        await self.searcher.stop()
        await self.gateway.run(self.jobs.close)
        await self.gateway.close()
        if self.database is not None:
            self.database.close()


def _serving_checkpoint(settings: Settings, registry: ModelRegistry, live: str | None) -> Path | None:
    """CGD_CHECKPOINT when set; else the model of the gallery's live version (the one the other replicas
    serve) when it has a record; else the model promoted last; else None, the embedded default."""
    if settings.checkpoint is not None:
        return settings.checkpoint
    records = {record.version: record for record in registry.records()}
    chosen = records.get(live) if live is not None else None
    chosen = chosen or registry.active
    return Path(chosen.checkpoint) if chosen is not None and chosen.checkpoint else None


def serving_engine(worker: InferenceWorker, cache_dir: Path) -> ServingEngine:
    """The engine `worker` serves its model on, for a training job's validation of that model."""
    embedder = worker.embedder
    return ServingEngine(embedder.version, embedder.runtime, embedder.precision, str(embedder.device),
                         str(cache_dir))


def gallery_samples(gallery: Gallery, count: int = MAX_SAMPLES) -> list[Image.Image]:
    """The first `count` gallery images as upright RGB: what auto measures the runtimes on (called on
    the executor, only when it measures)."""
    items, _ = gallery.list_items(0, count)
    images = []
    for item in items:
        try:
            images.append(open_rgb(gallery.image_path(item.id)))
        except (ItemNotFound, NoImage, OSError):  # deleted meanwhile, without an image, or its file is gone
            continue
    return images
