"""How many training images a time budget can afford to cache, and which ones.

The cached engine runs the frozen trunk over view 0 of every training image and over every
validation image before its first step. On a large gallery that alone could spend the whole budget,
so a budgeted run first times the trunk on one chunk of real images and, when view 0 of all of them
would take more than `VIEW0_BUDGET_SHARE` of the budget, trains on a class-balanced subset that fits:
every class keeps images, each class as many as the others where it has them.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Sequence

import torch

from model.config import Preprocessing
from model.data import LabelledImage, open_rgb
from model.feature_cache import CHUNK, run_trunk, view_transforms

VIEW0_BUDGET_SHARE = 0.4  # of a time budget, at most, for caching view 0 and the validation images
MIN_PER_CLASS = 4  # a subset keeps at least this many images of every class that has them


def trunk_images_per_s(trunk: torch.nn.Module, images: Sequence[LabelledImage], pre: Preprocessing, *,
                       stride: int, device: torch.device, dtype: torch.dtype) -> float:
    """Images per second of decode + view-0 transform + trunk, timed on up to one chunk of `images`
    after a one-image warm-up (the cost per image of `model.feature_cache.build_cache`)."""
    transform = view_transforms(pre, stride, 1, hflip=False)[0]
    sample = list(images[:CHUNK])
    trunk.eval()

    def run(batch: Sequence[LabelledImage]) -> None:
        run_trunk(trunk, [transform(open_rgb(image.path)) for image in batch], device, dtype)

    run(sample[:1])
    began = time.perf_counter()
    run(sample)
    return len(sample) / max(time.perf_counter() - began, 1e-9)


def affordable_images(budget_s: float, images_per_s: float, val_images: int) -> int:
    """How many training images view 0 can be cached for within its share of `budget_s`."""
    return max(0, int(VIEW0_BUDGET_SHARE * budget_s * images_per_s) - val_images)


def class_balanced_subset(images: Sequence[LabelledImage], count: int, seed: int = 0) -> list[LabelledImage]:
    """About `count` of `images` (all of them when `count` covers them), taken round-robin over the
    classes in a seeded random order within each class, so every class keeps
    min(its images, max(MIN_PER_CLASS, a fair share)); the original order is kept."""
    if count >= len(images):
        return list(images)
    rng = random.Random(seed)
    members: dict[str, list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        members[image.label].append(index)
    queues = []
    for label in sorted(members):
        indices = members[label]
        rng.shuffle(indices)
        queues.append(indices)
    chosen: list[int] = []
    for position in range(max(len(queue) for queue in queues)):
        row = [queue[position] for queue in queues if position < len(queue)]
        if position >= MIN_PER_CLASS and len(chosen) + len(row) > count:
            rng.shuffle(row)  # the classes that get one more image than the others: random ones
            chosen += row[:max(0, count - len(chosen))]
            break
        chosen += row
    return [images[index] for index in sorted(chosen)]
