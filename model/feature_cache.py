"""A disk-backed cache of trunk feature maps, so that training runs only the backbone's tail.

Each training image is decoded once and cut into `views` augmented views of (S + 2 * stride) px
(view 0: the whole image resized; the others: random resized crops); the frozen trunk maps each to
a (c, S/stride + 2, S/stride + 2) map, stored as float16 in a memory-mapped file of the job's work
directory. A training batch takes one random view per image and a random (S/stride)^2 window of it:
a random crop of S px, in feature space. Validation images get one centre view at S px, as
inference sees them.

In a data-parallel run the processes of one machine share the cache: each runs the trunk over its
own share of the images and writes its rows of the same files.

Size: images x views x c x (S/stride + 2)^2 x 2 bytes; for EfficientNet-Lite0 at 224 px
(c = 112, 16 x 16) that is 57 KiB per view, 0.56 GiB per 10,000 images and view.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision import transforms as T

from model.config import Preprocessing
from model.data import LabelledImage, open_rgb
from model.device import autocast
from model.distributed import SINGLE, Ranks
from model.transforms import inference_transform

LOG = logging.getLogger(__name__)
CHUNK = 32


def view_transforms(pre: Preprocessing, stride: int, views: int, *, hflip: bool) -> list[T.Compose]:
    """The image -> tensor transform of each cached view, all (3, S + 2*stride, S + 2*stride)."""
    size = pre.image_size + 2 * stride
    normalise = [T.ToTensor(), T.Normalize(mean=pre.mean, std=pre.std)]
    resize = T.InterpolationMode.BICUBIC if pre.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
    whole = T.Compose([T.Resize(size, interpolation=resize), T.CenterCrop(size), *normalise])
    flip = [T.RandomHorizontalFlip()] if hflip else []
    jittered = T.Compose([T.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=resize), *flip,
                          *normalise])
    return [whole] + [jittered] * (views - 1)


def cache_bytes(images: int, views: int, channels: int, cells: int) -> int:
    """Disk bytes of a cache of `images` x `views` maps of `channels` x `cells`^2 float16 values."""
    return images * views * channels * cells * cells * 2


class FeatureCache:
    """Trunk maps of the training views (memory-mapped float16) and of the validation images."""

    def __init__(self, directory: Path, train: np.ndarray, val: np.ndarray, cells: int) -> None:
        self.directory = directory
        self.train = train  # (N, V, c, cells + 2, cells + 2)
        self.val = val  # (M, c, cells, cells)
        self.cells = cells

    @property
    def views(self) -> int:
        return int(self.train.shape[1])

    def batch(self, indices: Sequence[int], rng: np.random.Generator) -> torch.Tensor:
        """(B, c, cells, cells) float32: a random view and a random window of each indexed image."""
        indices = np.asarray(indices)
        chosen = rng.integers(0, self.views, size=len(indices))
        maps = np.asarray(self.train[indices, chosen])  # (B, c, cells + 2, cells + 2)
        offsets = rng.integers(0, 3, size=(len(indices), 2))
        windows = np.stack([m[:, y:y + self.cells, x:x + self.cells] for m, (y, x) in zip(maps, offsets,
                                                                                           strict=True)])
        return torch.from_numpy(windows.astype(np.float32))

    def centre(self, rows: slice) -> torch.Tensor:
        """(B, c, cells, cells) float32: the centre window of view 0 (the whole image) of those rows."""
        maps = np.asarray(self.train[rows, 0, :, 1:1 + self.cells, 1:1 + self.cells])
        return torch.from_numpy(maps.astype(np.float32))


@torch.inference_mode()
def run_trunk(trunk: torch.nn.Module, tensors: list[torch.Tensor], device: torch.device,
              dtype: torch.dtype = torch.float32) -> np.ndarray:
    """The trunk's float16 maps (B, c, h, w) of a list of (3, H, W) image tensors."""
    batch = torch.stack(tensors).to(device).contiguous(memory_format=torch.channels_last)
    with autocast(device, dtype):
        return trunk(batch).float().cpu().numpy().astype(np.float16)


def planned_images(done: int, *, train: int, val: int, views: int, images_per_s: float, now: float,
                   extra_views_until: float | None) -> int:
    """How many images `build_cache` will run through the trunk in all, seen from `done` of them at
    `now` at `images_per_s`: view 0 of the training images and the validation images, then each extra
    view that starts before `extra_views_until` (a view once started is finished)."""
    base = train + val
    if extra_views_until is None:
        return base + train * (views - 1)
    planned = base
    ends = now + max(0, base - done) / max(images_per_s, 1e-9)
    for view in range(1, views):
        start = base + (view - 1) * train
        if done > start:  # started: it will be finished
            ends = now + max(0, start + train - done) / max(images_per_s, 1e-9)
        elif ends >= extra_views_until:
            break
        else:
            ends += train / max(images_per_s, 1e-9)
        planned += train
    return planned


def build_cache(
    directory: Path,
    train_images: Sequence[LabelledImage],
    val_images: Sequence[LabelledImage],
    trunk: torch.nn.Module,
    pre: Preprocessing,
    *,
    stride: int,
    channels: int,
    views: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    hflip: bool = False,
    seed: int = 0,
    extra_views_until: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    ranks: Ranks = SINGLE,
) -> FeatureCache | None:
    """Run the trunk (eval mode) over the views and write the cache; None when cancelled.

    View 0 of every training image and the validation images are always cached; views 1.. follow,
    one whole view at a time, only while `time.perf_counter()` is before `extra_views_until` (a
    busy machine thus caches fewer views instead of overrunning the budget). With several `ranks` on
    this machine, each fills every `local_world_size`-th chunk of rows and rank 0 makes the decisions
    (another view, cancel) for all; `on_progress` then counts this rank's images times their number."""
    cells = pre.image_size // stride
    train = _shared_array(directory / "train_views.npy", (len(train_images), views, channels, cells + 2,
                                                          cells + 2), ranks)
    val = _shared_array(directory / "val.npy", (len(val_images), channels, cells, cells), ranks)
    transforms = view_transforms(pre, stride, views, hflip=hflip)
    torch.manual_seed(seed + ranks.local_rank)
    trunk.eval()
    total, done = len(train_images) * views + len(val_images), 0
    shard, shards = ranks.local_rank, ranks.local_world_size

    def fill(target: np.ndarray, images: Sequence[LabelledImage], transform: Callable) -> bool:
        nonlocal done
        for start in range(shard * CHUNK, len(images), shards * CHUNK):
            decoded = [open_rgb(image.path) for image in images[start:start + CHUNK]]
            target[start:start + len(decoded)] = run_trunk(trunk, [transform(image) for image in decoded],
                                                            device, dtype)
            done += len(decoded)
            if on_progress is not None:
                on_progress(min(total, done * shards), total)
            if cancelled():
                break
        return ranks.decide(not cancelled())  # also: every rank's rows are written

    if not fill(train[:, 0], train_images, transforms[0]):
        return None
    if not fill(val, val_images, inference_transform(pre)):
        return None
    completed = 1
    for view in range(1, views):
        if extra_views_until is not None and ranks.decide(time.perf_counter() >= extra_views_until):
            break
        if not fill(train[:, view], train_images, transforms[view]):
            return None
        completed += 1
    train.flush()
    LOG.info("feature cache: %d images x %d views + %d validation images, %.1f MiB in %s",
             len(train_images), completed, len(val_images), train.nbytes * completed / views / 2**20,
             directory)
    return FeatureCache(directory, train[:, :completed], val, cells)


def _shared_array(path: Path, shape: tuple[int, ...], ranks: Ranks) -> np.ndarray:
    """A float16 array in a memory-mapped file, made by local rank 0 and opened by the others."""
    if ranks.local_rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    ranks.barrier()
    return array if ranks.local_rank == 0 else np.lib.format.open_memmap(path, mode="r+")
