"""Validation hold-outs: class-disjoint by default, stratified per image for few classes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from model.data import LabelledImage
from model.splits import SplitError, split_validation


def _images(n_classes: int, per_class: int, first: int = 0) -> list[LabelledImage]:
    return [LabelledImage(Path(f"{c}/{i}.jpg"), f"class{c:02d}")
            for c in range(first, first + n_classes) for i in range(per_class)]


def test_class_holdout_is_disjoint_and_a_fifth_of_the_classes() -> None:
    images = _images(21, 5)
    train, val, mode = split_validation(images, 0.2, "auto", seed=3)
    assert mode == "classes"
    assert len({i.label for i in val}) == 4
    assert not {i.label for i in train} & {i.label for i in val}
    assert sorted(train + val) == sorted(images)
    assert split_validation(images, 0.2, "auto", seed=3)[1] == val
    assert split_validation(images, 0.2, "auto", seed=4)[1] != val


def test_class_holdout_keeps_at_least_two_classes() -> None:
    _, val, _ = split_validation(_images(10, 3), 0.05, "classes")
    assert len({i.label for i in val}) == 2


def test_few_classes_fall_back_to_stratified_images() -> None:
    images = _images(4, 10) + _images(1, 2, first=4)
    train, val, mode = split_validation(images, 0.2, "auto", seed=0)
    assert mode == "images"
    per_class = Counter(i.label for i in val)
    assert per_class == {"class00": 2, "class01": 2, "class02": 2, "class03": 2}
    assert all(n >= 2 for n in Counter(i.label for i in train).values())
    assert not set(train) & set(val)


def test_impossible_splits_raise() -> None:
    with pytest.raises(SplitError):
        split_validation(_images(3, 4), 0.2, "classes")
    with pytest.raises(SplitError):
        split_validation(_images(3, 2), 0.2, "images")
    with pytest.raises(SplitError):
        split_validation(_images(12, 4), 1.5)
