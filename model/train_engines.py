"""How a training run turns sampled batches into model outputs: the whole network, or the tail
of the backbone over a trunk feature cache (`model.feature_cache`).

`FullEngine` decodes and augments images every step and runs the whole CGD forward and backward.
`CachedEngine` runs the frozen trunk once per image view up front, then trains only the tail, the
heads and the loss from the cache: several times the steps per CPU-minute, the same embeddings.
Both give validation embeddings of the model being trained and centre-view embeddings of the
training images (for fitting whitening).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from model.cgd import CGD, CGDOutput
from model.data import LabelledImage, LabelledImageDataset
from model.device import autocast, training_autocast
from model.distributed import SINGLE, Ranks
from model.embedder import Embedder
from model.evaluation import embed_dataset, inference_dataset
from model.feature_cache import FeatureCache, build_cache, cache_bytes, planned_images
from model.finetune import set_backbone_trainable
from model.sampler import ClassBalancedBatchSampler
from model.stages import StageSplit, split_backbone
from model.train_config import TrainConfig
from model.transforms import train_transform

LOG = logging.getLogger(__name__)
CACHE_BUDGET_SHARE = 0.2  # extra views are cached only within this share of a time budget
MAX_CACHE_VIEWS = 4
DEFAULT_CACHE_VIEWS = 2  # without a time budget


class TrainEngine(Protocol):
    """What the training loop needs from an engine."""

    name: str
    dtype: torch.dtype  # autocast precision of the trained part's steps and embeddings

    def batches(self, sampler: ClassBalancedBatchSampler) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def forward(self, inputs: torch.Tensor) -> CGDOutput: ...

    def set_trainable(self, backbone: bool) -> None: ...

    def val_embeddings(self) -> np.ndarray: ...

    def train_embeddings(self) -> np.ndarray: ...

    def val_embeddings_of(self, model: CGD) -> np.ndarray | None: ...


class FullEngine:
    """Every step decodes, augments and runs the whole network (any backbone)."""

    name = "full"

    def __init__(self, model: CGD, train_images: Sequence[LabelledImage], labels: torch.Tensor,
                 val_images: Sequence[LabelledImage], *, device: torch.device, dtype: torch.dtype,
                 hflip: bool, freeze_bn: bool, num_workers: int, eval_batch_size: int) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.freeze_bn, self.num_workers, self.eval_batch_size = freeze_bn, num_workers, eval_batch_size
        self.dataset = LabelledImageDataset(train_images, labels, train_transform(
            model.config.preprocessing, hflip=hflip), cache=True)
        self.train_images = list(train_images)
        embedder = Embedder(model, "training", device=device)
        self.val = inference_dataset(embedder, val_images, cache=True)

    def batches(self, sampler: ClassBalancedBatchSampler) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers)
        yield from loader

    def forward(self, inputs: torch.Tensor) -> CGDOutput:
        inputs = inputs.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with training_autocast(self.device, self.dtype, self.model):
            return self.model.forward_train(inputs)

    def set_trainable(self, backbone: bool) -> None:
        set_backbone_trainable(self.model, backbone, freeze_bn=self.freeze_bn)

    def _embed(self, dataset: LabelledImageDataset) -> np.ndarray:
        embedder = Embedder(self.model, "training", device=self.device)
        embeddings, _ = embed_dataset(embedder, dataset, self.eval_batch_size)
        return embeddings

    def val_embeddings(self) -> np.ndarray:
        return self._embed(self.val)

    def train_embeddings(self) -> np.ndarray:
        embedder = Embedder(self.model, "training", device=self.device)
        return self._embed(inference_dataset(embedder, self.train_images))

    def val_embeddings_of(self, model: CGD) -> np.ndarray | None:
        return None


class CachedEngine:
    """Trains the backbone's tail, the heads and the loss from a trunk feature cache."""

    name = "cached"

    @property
    def views(self) -> int:
        return self.cache.views

    def __init__(self, model: CGD, split: StageSplit, cache: FeatureCache, labels: torch.Tensor, *,
                 device: torch.device, dtype: torch.dtype, freeze_bn: bool, seed: int,
                 eval_batch_size: int, tail_stages: int) -> None:
        self.model, self.split, self.cache, self.labels = model, split, cache, labels
        self.tail_stages = tail_stages
        self.device, self.dtype, self.freeze_bn = device, dtype, freeze_bn
        self.eval_batch_size = eval_batch_size
        self.rng = np.random.default_rng(seed)
        for parameter in split.trunk.parameters():
            parameter.requires_grad_(False)

    def batches(self, sampler: ClassBalancedBatchSampler) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for indices in sampler:
            yield self.cache.batch(indices, self.rng), self.labels[indices]

    def forward(self, inputs: torch.Tensor) -> CGDOutput:
        inputs = inputs.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        self.split.trunk.eval()  # the cache was made in eval mode; the trunk never trains
        with training_autocast(self.device, self.dtype, self.split.tail):
            return self.model.forward_head(self.split.tail(inputs))

    def set_trainable(self, backbone: bool) -> None:
        set_backbone_trainable(self.model, backbone, freeze_bn=self.freeze_bn, part=self.split.tail)

    def _embed(self, model: CGD, tail: torch.nn.Module, source: np.ndarray | None, rows: int) -> np.ndarray:
        """Embeddings (whitened when `model` has whitening) of cached maps: `source` rows, or the
        centre view of the training images when `source` is None."""
        was_training = model.training
        model.eval()
        chunks = []
        try:
            with torch.inference_mode(), autocast(self.device, self.dtype):
                for start in range(0, rows, self.eval_batch_size):
                    window = slice(start, start + self.eval_batch_size)
                    features = self.cache.centre(window) if source is None else torch.from_numpy(
                        np.asarray(source[window], dtype=np.float32))
                    maps = tail(features.to(self.device).contiguous(memory_format=torch.channels_last))
                    chunks.append(model.embed_features(maps).float().cpu().numpy())
        finally:
            model.train(was_training)
        return np.concatenate(chunks) if chunks else np.zeros((0, model.embedding_dim), np.float32)

    def val_embeddings(self) -> np.ndarray:
        return self._embed(self.model, self.split.tail, self.cache.val, len(self.cache.val))

    def train_embeddings(self) -> np.ndarray:
        return self._embed(self.model, self.split.tail, None, len(self.cache.train))

    def val_embeddings_of(self, model: CGD) -> np.ndarray | None:
        """Validation embeddings of another model with the same trunk and image size (the start
        model), from the same cache; None when it cannot use it."""
        split = split_backbone(model.backbone, self.tail_stages)
        if split is None or model.config.image_size != self.model.config.image_size:
            return None
        return self._embed(model, split.tail.to(self.device), self.cache.val, len(self.cache.val))


def cache_views(model: CGD, config: TrainConfig, split: StageSplit, images: Sequence[LabelledImage],
                budget_s: float | None) -> int:
    """The most views per image to cache: as asked, else 4 with a time budget (the budget then cuts
    them, `build_cache`'s deadline) or 2 without; cut to the disk bound; 0 when not even one fits."""
    cells = model.config.image_size // split.stride + 2
    per_view = cache_bytes(len(images), 1, split.channels, cells)
    fits = int(config.cache_max_gib * 2**30 // max(per_view, 1))
    if config.cache_views is not None:
        wanted = config.cache_views
    else:
        wanted = DEFAULT_CACHE_VIEWS if budget_s is None else MAX_CACHE_VIEWS
    return min(wanted, fits)


def build_engine(model: CGD, config: TrainConfig, train_images: Sequence[LabelledImage], labels: torch.Tensor,
                 val_images: Sequence[LabelledImage], *, device: torch.device, dtype: torch.dtype,
                 split: StageSplit | None, budget_s: float | None, cache_dir: Path,
                 report: Callable[[int, int, float, int], None],
                 cancelled: Callable[[], bool], ranks: Ranks = SINGLE) -> TrainEngine | None:
    """The cached engine when `split` is given and the cache fits, else the full one; None when
    cancelled while caching. `report(done, planned, images_per_s, views)` follows the caching (`planned`:
    the images the trunk will run over, the extra views the budget leaves room for included). The
    processes of a data-parallel run share one cache per machine and draw their own random views."""
    views = cache_views(model, config, split, train_images, budget_s) if split else 0
    if split is None or views == 0:
        return FullEngine(model, train_images, labels, val_images, device=device, dtype=dtype,
                          hflip=config.hflip, freeze_bn=config.freeze_bn, num_workers=config.num_workers,
                          eval_batch_size=config.eval_batch_size)
    began = time.perf_counter()
    deadline = None if budget_s is None or config.cache_views else began + CACHE_BUDGET_SHARE * budget_s

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        rate = done / max(now - began, 1e-9)
        planned = planned_images(done, train=len(train_images), val=len(val_images), views=views,
                                 images_per_s=rate, now=now, extra_views_until=deadline)
        report(done, planned, rate, views)

    if ranks.nodes > 1:
        cache_dir = cache_dir / f"node-{ranks.node}"
    cache = build_cache(cache_dir, train_images, val_images, split.trunk, model.config.preprocessing,
                        stride=split.stride, channels=split.channels, views=views, device=device, dtype=dtype,
                        hflip=config.hflip, seed=config.seed, extra_views_until=deadline,
                        on_progress=progress, cancelled=cancelled, ranks=ranks)
    if cache is None:
        return None
    return CachedEngine(model, split, cache, labels, device=device, dtype=dtype, freeze_bn=config.freeze_bn,
                        seed=config.seed + ranks.rank, eval_batch_size=config.eval_batch_size,
                        tail_stages=config.tail_stages)
