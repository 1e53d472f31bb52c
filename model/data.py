"""Labelled image lists: readers for `labels.csv` folders and class-per-folder trees, and a Dataset.

A list of `LabelledImage` (a file path and a class name) is the universal training input: the
service builds one from gallery blobs, the CLI from a folder.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch.utils.data import Dataset

from model.images import upright_rgb

LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".gif", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A data folder or labels file that cannot be read as a labelled image set."""


class LabelledImage(NamedTuple):
    """One image file and the name of its class."""

    path: Path
    label: str


def read_labels_csv(root: str | Path, split: str | None = None) -> list[LabelledImage]:
    """Rows of `root/labels.csv` (`path,label[,split]`, paths relative to `root`).

    With `split`, only the rows of that split (the file must then have a `split` column).
    """
    root = Path(root)
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path} does not exist")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if not {"path", "label"} <= columns:
            raise DataError(f"{csv_path} must have the columns path,label[,split]; found {sorted(columns)}")
        if split is not None and "split" not in columns:
            raise DataError(f"{csv_path} has no 'split' column, so split={split!r} cannot be selected")
        images = [
            LabelledImage(root / row["path"], row["label"])
            for row in reader
            if split is None or row["split"] == split
        ]
    if not images:
        raise DataError(f"{csv_path} has no images" + (f" in split {split!r}" if split else ""))
    return images


def read_class_folders(root: str | Path) -> list[LabelledImage]:
    """Every image file under `root/<class>/` (recursively), labelled by its top folder's name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    images = [
        LabelledImage(path, class_dir.name)
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(class_dir.rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not images:
        raise DataError(f"{root} holds no images in class folders (<root>/<class>/<image>)")
    return images


def load_dataset(root: str | Path, split: str | None = None) -> list[LabelledImage]:
    """`labels.csv` when `root` has one (filtered by `split`), else the class-folder tree.

    A class-folder tree has no splits: `split` must then be None, or the tree must have a
    `root/<split>/` subfolder, which is read instead.
    """
    root = Path(root)
    if (root / "labels.csv").is_file():
        return read_labels_csv(root, split)
    if split is None:
        return read_class_folders(root)
    if (root / split).is_dir():
        return read_class_folders(root / split)
    raise DataError(f"{root} has no labels.csv and no {split!r} subfolder")


def class_index(images: Sequence[LabelledImage]) -> tuple[list[str], torch.Tensor]:
    """Sorted class names and the (N,) int64 class index of each image."""
    classes = sorted({image.label for image in images})
    lookup = {name: i for i, name in enumerate(classes)}
    return classes, torch.tensor([lookup[image.label] for image in images], dtype=torch.int64)


def open_rgb(path: Path) -> Image.Image:
    """The image at `path`, decoded into memory as upright RGB (as the service decodes uploads)."""
    with Image.open(path) as image:
        return upright_rgb(image, str(path))


def short_side_median(images: Sequence[LabelledImage], sample: int = 200) -> int:
    """Median shorter side in pixels over up to `sample` evenly spaced images (header reads only)."""
    if not images:
        raise DataError("no images to measure")
    step = max(1, len(images) // sample)
    sides = []
    for image in images[::step]:
        with Image.open(image.path) as handle:
            sides.append(min(handle.size))
    return sorted(sides)[len(sides) // 2]


class LabelledImageDataset(Dataset):
    """`images` with integer labels, through `transform`: item i -> ((3, S, S) tensor, label).

    With `cache=True` the decoded RGB images are kept in memory after their first read (small
    data sets: decoding is then paid once, not every epoch).
    """

    def __init__(
        self,
        images: Sequence[LabelledImage],
        labels: torch.Tensor,
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        cache: bool = False,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = list(images)
        self.labels = labels
        self.transform = transform
        self._cache: dict[int, Image.Image] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.images)

    def _decoded(self, index: int) -> Image.Image:
        if self._cache is None:
            return open_rgb(self.images[index].path)
        if index not in self._cache:
            self._cache[index] = open_rgb(self.images[index].path)
        return self._cache[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self._decoded(index)), int(self.labels[index])
