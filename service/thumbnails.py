"""`Thumbnails`: small JPEGs of gallery images (longest side `THUMBNAIL_SIDE`), cached on disk.

A thumbnail is made from the stored original on first request and kept under the data directory
(`thumbnails/<id // 1000>/<id>-<sha256[:16]>.jpg`: with the image's hash in the name, a file left by
a crash can never be shown for another picture). `remove` deletes it with the item. Every method
blocks (decoding, disk): call them on the gallery gateway's executor.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from PIL import Image

from index import Item
from model.images import upright_rgb

THUMBNAIL_SIDE = 256
JPEG_QUALITY = 85
THUMBNAIL_DIR = "thumbnails"  # under the data directory
_SHARD = 1000


class Thumbnails:
    """The thumbnail cache in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, item: Item) -> Path:
        """Where the thumbnail of an item that has an image is cached."""
        return self.root / str(item.id // _SHARD) / f"{item.id}-{item.sha256[:16]}.jpg"

    def get(self, item: Item, image_path: Path) -> bytes:
        """The item's thumbnail, made from its original at `image_path` when not cached yet."""
        cached = self.path(item)
        try:
            return cached.read_bytes()
        except FileNotFoundError:
            pass
        data = make_thumbnail(image_path)
        cached.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=cached.parent, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, cached)  # a concurrent request for the same item writes the same bytes
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return data

    def remove(self, item: Item) -> None:
        """Forget the item's thumbnail (none cached, or an item without an image, is fine)."""
        if item.has_image:
            self.path(item).unlink(missing_ok=True)


def make_thumbnail(image_path: Path, side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG of the image at `image_path`, upright, its longest side at most `side` px."""
    with Image.open(image_path) as image:
        image.draft("RGB", (side, side))  # JPEG: decode at a reduced scale, not the full 40 MP
        upright = upright_rgb(image, image_path.name)
        upright.thumbnail((side, side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        upright.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()
