"""Real photos shipped with the package (`model/samples`, their licences in its LICENSE.txt).

`CGD_RUNTIME=auto` checks its candidates' agreement with torch fp32 on real images, and int8 calibrates
on them: gallery images when there are some, else these. Each photo gives three views (the whole photo
and its left and right squares), so the measurement's batch holds different real content.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

SAMPLE_DIR = Path(__file__).with_name("samples")


def sample_images() -> list[Image.Image]:
    """Every shipped photo as upright RGB, then its left and right square crops."""
    photos = []
    for path in sorted(SAMPLE_DIR.glob("*.jpg")):
        with Image.open(path) as image:
            photos.append(image.convert("RGB"))
    crops = []
    for photo in photos:
        width, height = photo.size
        side = min(width, height)
        crops += [photo.crop((0, 0, side, side)), photo.crop((width - side, height - side, width, height))]
    return photos + crops
