"""Image -> tensor transforms that match a model's `Preprocessing`."""

from __future__ import annotations

from torchvision import transforms as T

from model.config import Preprocessing

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def _normalize(pre: Preprocessing) -> list:
    return [T.ToTensor(), T.Normalize(mean=pre.mean, std=pre.std)]


def inference_transform(pre: Preprocessing) -> T.Compose:
    """Resize(S / crop_pct) + CenterCrop(S): PIL RGB image -> (3, S, S) float tensor."""
    resize = round(pre.image_size / pre.crop_pct)
    return T.Compose(
        [
            T.Resize(resize, interpolation=_INTERPOLATION[pre.interpolation]),
            T.CenterCrop(pre.image_size),
            *_normalize(pre),
        ]
    )


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
