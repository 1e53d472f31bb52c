"""Class-balanced batches for pair- and triplet-based losses: P distinct classes x K images each."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

LOG = logging.getLogger(__name__)


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Yields batches of dataset indices: `classes_per_batch` (P) distinct classes, then
    `images_per_class` (K) indices of each, class by class (P * K indices).

    - A class needs at least 2 images to be usable (one image cannot form a positive pair); smaller
      classes are skipped and never sampled.
    - A class with at least K images gives K distinct images; a smaller one gives each of its images
      once, then draws the rest with replacement from the same class.
    - When fewer than P classes are usable (but at least 2), P becomes their number, logged once:
      every batch then holds every usable class. `classes_per_batch` reports the effective P.
    - The batches depend only on `seed` and the epoch set by `set_epoch`.
    - `batches_per_epoch` defaults to (images of usable classes) // (P * K), at least 1.
    - Sharded for data-parallel training (`world_size` > 1): every rank draws the same P classes and
      keeps those at positions `rank`, `rank + world_size`, ...; the ranks' batches of one step are
      together the one-process batch, and no class is on two ranks. Each rank needs 2 classes.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray | torch.Tensor, classes_per_batch: int,
                 images_per_class: int, *, seed: int, batches_per_epoch: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if classes_per_batch < 2:
            raise ValueError(f"classes_per_batch must be >= 2, got {classes_per_batch}")
        if images_per_class < 2:
            raise ValueError(f"images_per_class must be >= 2 (a positive pair), got {images_per_class}")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        label_array = np.asarray(labels).reshape(-1)
        classes, counts = np.unique(label_array, return_counts=True)
        usable = classes[counts >= 2]
        if len(usable) < 2:
            raise ValueError(f"need at least 2 classes with 2 or more images each, got {len(usable)} "
                             f"(of {len(classes)} classes, {len(label_array)} images)")
        if len(usable) < len(classes):
            LOG.info("skipping %d classes with a single image", len(classes) - len(usable))
        if len(usable) < classes_per_batch:
            LOG.warning("only %d usable classes: batches hold %d classes instead of %d",
                        len(usable), len(usable), classes_per_batch)
        self.classes_per_batch = min(classes_per_batch, len(usable))
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if self.classes_per_batch < 2 * world_size:
            raise ValueError(f"a batch of {self.classes_per_batch} classes cannot give each of {world_size} "
                             f"ranks 2 classes; use a larger batch or fewer processes")
        self.rank, self.world_size = rank, world_size
        self.images_per_class = images_per_class
        self.seed = seed
        self.epoch = 0
        self.members = [np.flatnonzero(label_array == label) for label in usable]
        images = sum(len(m) for m in self.members)
        self.batches_per_epoch = batches_per_epoch or max(1, images // self.batch_size)

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.images_per_class

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches `__iter__` yields next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.batches_per_epoch):
            batch: list[int] = []
            for position, class_id in enumerate(rng.choice(len(self.members), self.classes_per_batch,
                                                           replace=False)):
                drawn = self._draw(self.members[class_id], rng)  # every rank draws, to share the stream
                if position % self.world_size == self.rank:
                    batch.extend(drawn.tolist())
            yield batch

    def _draw(self, members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """K indices of one class: distinct when it has K or more, else all of them plus repeats."""
        k = self.images_per_class
        if len(members) >= k:
            return rng.choice(members, k, replace=False)
        return np.concatenate([rng.permutation(members), rng.choice(members, k - len(members))])
