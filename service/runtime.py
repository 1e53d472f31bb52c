"""`Runtime`: the long-lived objects of one running service, opened and closed together.

Opening loads the serving model, opens the gallery (re-embedding it if it has no vectors for
that model), and starts the inference worker and the training queue.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from index import Gallery
from model.embedder import Embedder
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


@dataclass
class Runtime:
    """Everything the routes use; built by `open`, released by `close`."""

    settings: Settings
    registry: ModelRegistry
    gallery: Gallery
    worker: InferenceWorker
    searcher: SearchBatcher
    jobs: JobStore
    training: TrainingQueue
    swapper: ModelSwapper
    gate: SwapGate
    metrics: ServiceMetrics

    @classmethod
    async def open(cls, settings: Settings, metrics: ServiceMetrics) -> Runtime:
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        registry = ModelRegistry(data)
        checkpoint = _serving_checkpoint(settings, registry)
        embedder = await asyncio.to_thread(
            Embedder.load, checkpoint, device=settings.device, precision=settings.precision
        )
        if checkpoint is None:
            registry.add_default(embedder.version, embedder.model.config.to_dict())
        else:
            registry.add_checkpoint(checkpoint)
        gallery = await asyncio.to_thread(Gallery.open, data / GALLERY_DIR, index_kind=settings.index_kind)
        worker = InferenceWorker(embedder, settings, metrics=metrics)
        await worker.start()
        searcher = SearchBatcher(gallery, on_batch=metrics.observe_search_batch)
        searcher.start()
        gate = SwapGate()
        swapper = ModelSwapper(worker, gallery, registry, gate, device=settings.device,
                               precision=settings.precision)
        await swapper.switch_to(embedder)
        jobs = JobStore(data / "jobs.sqlite3")
        training = TrainingQueue(jobs, gallery, registry, swapper, asyncio.get_running_loop(),
                                 workdir=data / "training", threads=settings.train_threads,
                                 default_max_minutes=settings.train_max_minutes)
        training.start()
        LOG.info("serving model %s over %d gallery items", embedder.version, gallery.count())
        return cls(settings, registry, gallery, worker, searcher, jobs, training, swapper, gate, metrics)

    async def close(self) -> None:
        """Graceful stop: no new jobs, finish queued embeddings, persist and close stores."""
        await asyncio.to_thread(self.training.stop)
        await self.worker.stop(drain=True)
        await self.searcher.stop()
        self.jobs.close()
        self.gallery.close()


def _serving_checkpoint(settings: Settings, registry: ModelRegistry) -> Path | None:
    """CGD_CHECKPOINT when set; else the model promoted last; else None, the embedded default."""
    if settings.checkpoint is not None:
        return settings.checkpoint
    active = registry.active
    return Path(active.checkpoint) if active is not None and active.checkpoint else None
