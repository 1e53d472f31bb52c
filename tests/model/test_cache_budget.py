"""model.cache_budget: the class-balanced subset a budgeted cached run trains on, and the trunk's speed."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.cache_budget import (
    MIN_PER_CLASS,
    VIEW0_BUDGET_SHARE,
    affordable_images,
    class_balanced_subset,
    trunk_images_per_s,
)
from model.data import LabelledImage
from model.default import default_model
from model.stages import split_backbone


def labelled(counts: dict[str, int]) -> list[LabelledImage]:
    return [LabelledImage(Path(f"{label}/{i}.jpg"), label) for label, n in counts.items() for i in range(n)]


def test_a_count_that_covers_the_images_keeps_them_all_in_order() -> None:
    images = labelled({"a": 3, "b": 5})
    assert class_balanced_subset(images, 8) == images
    assert class_balanced_subset(images, 100) == images


def test_the_subset_keeps_every_class_evenly_and_the_original_order() -> None:
    images = labelled({"big": 500, "mid": 60, "small": 5, "tiny": 2})
    subset = class_balanced_subset(images, 100, seed=3)
    per_class = Counter(image.label for image in subset)
    assert len(subset) == 100
    assert per_class["tiny"] == 2 and per_class["small"] == 5  # all they have
    assert abs(per_class["big"] - per_class["mid"]) <= 1  # the rest shared evenly
    positions = [images.index(image) for image in subset]
    assert positions == sorted(positions)
    assert len(set(subset)) == len(subset)


def test_every_class_keeps_its_minimum_even_past_the_count() -> None:
    images = labelled({f"c{i}": 10 for i in range(30)})
    subset = class_balanced_subset(images, 40, seed=0)
    per_class = Counter(image.label for image in subset)
    assert set(per_class) == {f"c{i}" for i in range(30)}
    assert min(per_class.values()) == MIN_PER_CLASS


def test_the_subset_depends_on_the_seed_only() -> None:
    images = labelled({"a": 50, "b": 50})
    assert class_balanced_subset(images, 20, seed=1) == class_balanced_subset(images, 20, seed=1)
    assert class_balanced_subset(images, 20, seed=1) != class_balanced_subset(images, 20, seed=2)


def test_affordable_images_is_the_view0_share_of_the_budget_less_validation() -> None:
    assert affordable_images(100.0, 50.0, val_images=300) == math.floor(VIEW0_BUDGET_SHARE * 100 * 50) - 300
    assert affordable_images(1.0, 1.0, val_images=10) == 0


def test_the_trunk_speed_is_measured_on_real_decoded_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
        images.append(LabelledImage(path, str(i % 2)))
    model = default_model()
    split = split_backbone(model.backbone, 3)
    assert split is not None
    rate = trunk_images_per_s(split.trunk, images, model.config.preprocessing, stride=split.stride,
                              device=torch.device("cpu"), dtype=torch.float32)
    assert math.isfinite(rate) and rate > 0
    with pytest.raises(FileNotFoundError):
        trunk_images_per_s(split.trunk, [LabelledImage(tmp_path / "missing.png", "x")],
                           model.config.preprocessing, stride=split.stride, device=torch.device("cpu"),
                           dtype=torch.float32)
