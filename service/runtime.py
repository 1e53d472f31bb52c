"""`Runtime`: the long-lived objects of one running service, opened and closed together.

Opening loads the serving model, opens the gallery (re-embedding it if it has no vectors for
that model), and starts the inference worker and the training queue.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from model.embedder import Embedder
from service.activations import Activations
from service.gallery_gateway import GalleryGateway
from service.job_store import JobStore
from service.metrics import ServiceMetrics
from service.model_registry import ModelRegistry
from service.model_swap import ModelSwapper, SwapGate
from service.search_batcher import SearchBatcher
from service.settings import Settings
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

    @classmethod
    async def open(cls, settings: Settings, metrics: ServiceMetrics) -> Runtime:
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        registry = ModelRegistry(data)
        checkpoint = _serving_checkpoint(settings, registry)
        gateway = await GalleryGateway.open(data / GALLERY_DIR, threads=settings.io_threads,
                                            **settings.index_options())
        engines = {"runtime": settings.runtime, "cache_dir": data / ENGINE_DIR,
                   "threads": settings.inference_threads}
        embedder = await gateway.run(Embedder.load, checkpoint, device=settings.device,
                                     precision=settings.precision, **engines)
        if checkpoint is None:
            registry.add_default(embedder.version, embedder.model.config.to_dict())
        else:
            registry.add_checkpoint(checkpoint)
        worker = InferenceWorker(embedder, settings, metrics=metrics, executor=gateway.executor)
        await worker.start()
        searcher = SearchBatcher(gateway, max_batch=settings.search_batch_size,
                                 max_queue=settings.search_queue_size, on_batch=metrics.observe_search_batch)
        searcher.start()
        gate = SwapGate()
        swapper = ModelSwapper(worker, gateway, registry, gate, device=settings.device,
                               precision=settings.precision, engines=engines,
                               batch_size=settings.max_batch_size,
                               prefetch=settings.io_threads)
        await swapper.switch_to(embedder)
        jobs = JobStore(data / "jobs.sqlite3")
        training = TrainingQueue(jobs, gateway.gallery, registry, swapper, asyncio.get_running_loop(),
                                 workdir=data / "training", threads=settings.train_threads,
                                 default_max_minutes=settings.train_max_minutes)
        training.start()
        LOG.info("serving model %s over %d gallery items", embedder.version, await gateway.count())
        return cls(settings, registry, gateway, worker, searcher, jobs, training, swapper,
                   Activations(swapper), gate, metrics)

    async def close(self) -> None:
        """Graceful stop: no new jobs, finish queued embeddings, persist and close stores."""
        await self.activations.stop()
        await self.gateway.run(self.training.stop)
        await self.worker.stop(drain=True)
        await self.searcher.stop()
        await self.gateway.run(self.jobs.close)
        await self.gateway.close()


def _serving_checkpoint(settings: Settings, registry: ModelRegistry) -> Path | None:
    """CGD_CHECKPOINT when set; else the model promoted last; else None, the embedded default."""
    if settings.checkpoint is not None:
        return settings.checkpoint
    active = registry.active
    return Path(active.checkpoint) if active is not None and active.checkpoint else None
