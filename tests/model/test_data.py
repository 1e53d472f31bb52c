"""Labelled image readers and the Dataset, on the real gtsrb32 files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from model.config import Preprocessing
from model.data import (
    DataError,
    LabelledImageDataset,
    class_index,
    load_dataset,
    read_class_folders,
    read_labels_csv,
    short_side_median,
)
from model.transforms import inference_transform, train_transform


def test_labels_csv_splits_are_disjoint_and_complete(gtsrb_dir: Path) -> None:
    train = read_labels_csv(gtsrb_dir, "train")
    test = read_labels_csv(gtsrb_dir, "test")
    assert len(train) == 1680 and len(test) == 1760
    assert len(read_labels_csv(gtsrb_dir)) == 3440
    assert not {i.label for i in train} & {i.label for i in test}
    assert all(image.path.is_file() for image in train[::97])
    assert load_dataset(gtsrb_dir, "train") == train


def test_unknown_split_and_missing_folder_raise(gtsrb_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images"):
        read_labels_csv(gtsrb_dir, "validation")
    with pytest.raises(DataError):
        load_dataset(tmp_path, "train")
    with pytest.raises(DataError):
        read_class_folders(tmp_path / "absent")


def test_class_folder_tree(gtsrb_dir: Path, tmp_path: Path) -> None:
    source = read_labels_csv(gtsrb_dir, "train")[:3] + read_labels_csv(gtsrb_dir, "test")[:2]
    for image in source:
        target = tmp_path / image.label / "nested" / image.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image.path, target)
    (tmp_path / source[0].label / "notes.txt").write_text("not an image")
    images = load_dataset(tmp_path)
    assert sorted((i.label, i.path.name) for i in images) == sorted((i.label, i.path.name) for i in source)
    assert short_side_median(images) == 32


def test_dataset_yields_transformed_tensors_and_cached_images(gtsrb_dir: Path) -> None:
    images = read_labels_csv(gtsrb_dir, "train")[::200]
    classes, labels = class_index(images)
    assert classes == sorted({i.label for i in images}) and labels.dtype == torch.int64
    pre = Preprocessing(image_size=48)
    plain = LabelledImageDataset(images, labels, inference_transform(pre))
    cached = LabelledImageDataset(images, labels, inference_transform(pre), cache=True)
    x, y = cached[3]
    assert x.shape == (3, 48, 48) and y == int(labels[3])
    assert torch.equal(x, plain[3][0]) and torch.equal(cached[3][0], x)
    augmented = LabelledImageDataset(images, labels, train_transform(pre))
    assert augmented[0][0].shape == (3, 48, 48)
    with pytest.raises(ValueError):
        LabelledImageDataset(images, labels[:-1], inference_transform(pre))
