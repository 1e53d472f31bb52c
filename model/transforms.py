"""Image -> tensor transforms that match a model's `Preprocessing`."""

from __future__ import annotations

import torch
from torchvision import transforms as T

from model.config import Preprocessing

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def _normalize(pre: Preprocessing) -> list:
    return [T.ToTensor(), T.Normalize(mean=pre.mean, std=pre.std)]


def _resize_crop(pre: Preprocessing) -> list:
    resize = round(pre.image_size / pre.crop_pct)
    return [T.Resize(resize, interpolation=_INTERPOLATION[pre.interpolation]), T.CenterCrop(pre.image_size)]


def inference_transform(pre: Preprocessing) -> T.Compose:
    """Resize(S / crop_pct) + CenterCrop(S): PIL RGB image -> (3, S, S) float tensor."""
    return T.Compose([*_resize_crop(pre), *_normalize(pre)])


def inference_pixels(pre: Preprocessing) -> T.Compose:
    """`inference_transform`'s resize and crop, on the uint8 image: PIL RGB -> (3, S, S) uint8 tensor
    (4x less memory than floats while it waits for a batch); `Normalizer` finishes it per batch."""
    return T.Compose([*_resize_crop(pre), T.PILToTensor()])


class Normalizer:
    """uint8 pixel batches -> the model's normalised float32 input, in one pass per batch:
    `x * (1 / (255 std)) - mean / std`, the same values as `ToTensor` + `Normalize` to float rounding."""

    def __init__(self, pre: Preprocessing) -> None:
        mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * std), -mean / std

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> float32; a float batch (already normalised) is returned as it is."""
        if batch.dtype != torch.uint8:
            return batch
        return torch.addcmul(self._shift, batch.float(), self._scale)


def train_transform(pre: Preprocessing, *, hflip: bool = False) -> T.Compose:
    """CGD's recipe: Resize(1.125 S) + RandomCrop(S) (+ horizontal flip only when asked).

    Flip is off by default: mirror images are different classes in many galleries
    (signs turning left or right, text, characters).
    """
    steps: list = [
        T.Resize(round(pre.image_size * 1.125), interpolation=_INTERPOLATION[pre.interpolation]),
        T.RandomCrop(pre.image_size),
    ]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, *_normalize(pre)])
