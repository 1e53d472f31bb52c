"""Validation hold-outs carved from the TRAIN images (never from the test split).

`classes`: whole classes held out (class-disjoint), so that model selection measures retrieval
of unseen classes, as the zero-shot test does. `images`: a stratified per-image hold-out, for
when there are too few classes to spare any.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

from model.data import LabelledImage

ValMode = Literal["auto", "classes", "images"]
MIN_CLASSES_FOR_CLASS_HOLDOUT = 10
MIN_VAL_CLASSES = 2


class SplitError(ValueError):
    """A hold-out that cannot be made from the given images."""


def resolve_val_mode(images: Sequence[LabelledImage], mode: ValMode) -> Literal["classes", "images"]:
    """`auto`: hold out whole classes when there are at least 10 classes, else images."""
    if mode == "auto":
        n_classes = len({image.label for image in images})
        return "classes" if n_classes >= MIN_CLASSES_FOR_CLASS_HOLDOUT else "images"
    if mode not in ("classes", "images"):
        raise SplitError(f"unknown validation mode {mode!r}; use auto, classes or images")
    return mode


def _by_class(images: Sequence[LabelledImage]) -> dict[str, list[LabelledImage]]:
    groups: dict[str, list[LabelledImage]] = defaultdict(list)
    for image in images:
        groups[image.label].append(image)
    return dict(sorted(groups.items()))


def hold_out_classes(
    images: Sequence[LabelledImage], fraction: float, seed: int
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(train, val) with round(fraction x classes) whole classes (at least 2) in val."""
    groups = _by_class(images)
    n_val = max(MIN_VAL_CLASSES, round(fraction * len(groups)))
    if len(groups) - n_val < 2:
        raise SplitError(f"{len(groups)} classes are too few to hold out {n_val} whole classes")
    val_classes = set(random.Random(seed).sample(sorted(groups), n_val))
    train = [image for image in images if image.label not in val_classes]
    val = [image for image in images if image.label in val_classes]
    return train, val


def hold_out_images(
    images: Sequence[LabelledImage], fraction: float, seed: int
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(train, val) with about `fraction` of each class's images in val (at least 1 per class
    with 3 or more images, so that every class keeps at least 2 training images)."""
    rng = random.Random(seed)
    members_of: dict[str, list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        members_of[image.label].append(index)
    val_ids: set[int] = set()
    for _, members in sorted(members_of.items()):
        if len(members) < 3:
            continue
        n_val = min(len(members) - 2, max(1, math.floor(fraction * len(members) + 0.5)))
        val_ids.update(rng.sample(members, n_val))
    if not val_ids:
        raise SplitError("no class has the 3 images needed to hold any out for validation")
    train = [image for index, image in enumerate(images) if index not in val_ids]
    val = [image for index, image in enumerate(images) if index in val_ids]
    return train, val


def split_validation(
    images: Sequence[LabelledImage], fraction: float = 0.2, mode: ValMode = "auto", seed: int = 0
) -> tuple[list[LabelledImage], list[LabelledImage], Literal["classes", "images"]]:
    """(train, val, mode used), deterministic for a given `seed`."""
    if not 0.0 < fraction < 1.0:
        raise SplitError(f"val_fraction must be in (0, 1), got {fraction}")
    used = resolve_val_mode(images, mode)
    if used == "classes":
        return (*hold_out_classes(images, fraction, seed), used)
    return (*hold_out_images(images, fraction, seed), used)
