"""A decoded `PIL.Image` -> the upright RGB image every model input starts from.

One definition for ingestion (`service.images`), re-embedding and training (`model.data`), so a
stored image gives the same pixels, and so the same vector, on every path.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image, ImageOps

LOG = logging.getLogger(__name__)

_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def upright_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Turned as its EXIF Orientation tag says (a damaged EXIF block is ignored), then RGB."""
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception as exc:  # broken EXIF metadata, the pixels themselves are fine
        LOG.warning("%s: ignoring unreadable EXIF orientation (%s)", name, exc)
        upright = image
    return to_rgb(upright)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha and transparency composited on white, 16-bit scaled to 8."""
    if image.mode in _SIXTEEN_BIT_MODES:
        levels = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257.0
        image = Image.fromarray(np.round(levels).astype(np.uint8), mode="L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
