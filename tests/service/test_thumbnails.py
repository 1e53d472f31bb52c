"""`Thumbnails` and `make_thumbnail` on real JPEG files: size, orientation, the disk cache, removal."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from index import Item
from service.thumbnails import THUMBNAIL_SIDE, Thumbnails, make_thumbnail

EXIF_ORIENTATION = 0x0112
ROTATED_90_CW = 6  # the stored pixels must turn 90 degrees clockwise to stand upright


def photo(path: Path, width: int, height: int, orientation: int | None = None) -> Path:
    rng = np.random.default_rng(width * height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    exif = Image.Exif()
    if orientation is not None:
        exif[EXIF_ORIENTATION] = orientation
    image.save(path, format="JPEG", exif=exif.tobytes())
    return path


def item(item_id: int, sha256: str) -> Item:
    return Item(id=item_id, external_id=None, label=None, metadata={}, sha256=sha256, created_at=time.time())


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        return image.size


def test_the_longest_side_becomes_256_px_and_the_shape_is_kept(tmp_path):
    wide = make_thumbnail(photo(tmp_path / "wide.jpg", 2400, 1200))
    assert size_of(wide) == (THUMBNAIL_SIDE, THUMBNAIL_SIDE // 2)
    assert size_of(make_thumbnail(photo(tmp_path / "tall.jpg", 300, 1200))) == (64, THUMBNAIL_SIDE)


def test_a_small_image_is_not_enlarged(tmp_path):
    assert size_of(make_thumbnail(photo(tmp_path / "small.jpg", 120, 80))) == (120, 80)


def test_the_exif_orientation_is_applied(tmp_path):
    stored = photo(tmp_path / "rotated.jpg", 1000, 500, orientation=ROTATED_90_CW)
    assert size_of(make_thumbnail(stored)) == (128, THUMBNAIL_SIDE)


def test_a_thumbnail_is_made_once_then_read_from_the_cache_and_removed(tmp_path):
    thumbnails = Thumbnails(tmp_path / "thumbnails")
    original = photo(tmp_path / "original.jpg", 800, 600)
    first = item(1234, "ab" * 32)
    made = thumbnails.get(first, original)
    cached = thumbnails.path(first)
    assert cached.read_bytes() == made and cached.is_relative_to(tmp_path / "thumbnails")
    original.unlink()  # from now on only the cache can answer
    assert thumbnails.get(first, original) == made
    assert [p.name for p in cached.parent.iterdir()] == [cached.name], "no temporary file left"
    thumbnails.remove(first)
    assert not cached.exists()
    thumbnails.remove(first)  # nothing cached: fine


def test_the_cache_is_keyed_by_the_image_as_well_as_the_id(tmp_path):
    thumbnails = Thumbnails(tmp_path / "thumbnails")
    old = thumbnails.get(item(7, "aa" * 32), photo(tmp_path / "old.jpg", 640, 480))
    new = thumbnails.get(item(7, "bb" * 32), photo(tmp_path / "new.jpg", 480, 640))
    assert size_of(old) == (256, 192) and size_of(new) == (192, 256)
