"""Uploaded bytes -> an upright RGB `PIL.Image`, or a typed error naming the file.

Accepted formats: JPEG (MPO camera files too, first picture), PNG, WebP, BMP and GIF (first
frame). The pixel limit is checked from the header, before any pixel data is decoded, and
Pillow's global `Image.MAX_IMAGE_PIXELS` is left alone (its own, larger, decompression-bomb limit
still applies as a hard cap).
"""

from __future__ import annotations

import io
import logging

from PIL import Image, ImageFile, UnidentifiedImageError

from model.images import upright_rgb
from service.errors import InvalidImage, PayloadTooLarge, UnsupportedFormat

LOG = logging.getLogger(__name__)

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
# Longest side / shortest side. Models resize the shortest side up to their input size, so a thin
# image (2 x 8000 px: a few hundred bytes) would become hundreds of millions of pixels.
MAX_ASPECT_RATIO = 50
# Formats Pillow reports for files of an accepted kind: MPO is a multi-picture JPEG.
_DECODED_FORMATS = {*ACCEPTED_FORMATS, "MPO"}
_ACCEPTED_TEXT = "JPEG, PNG, WebP, BMP or GIF"
# Common image files that Pillow cannot open: (offset, magic bytes, name).
_FOREIGN_MAGIC = (
    (4, b"ftypheic", "HEIC"), (4, b"ftypheix", "HEIC"), (4, b"ftypmif1", "HEIF"),
    (4, b"ftypmsf1", "HEIF"), (0, b"%PDF-", "PDF"), (0, b"<svg", "SVG"),
)


def image_pixels(data: bytes, *, filename: str, max_bytes: int, max_pixels: int) -> int:
    """Width x height of an uploaded image, read from its header only (nothing is decoded).

    Raises what `decode_image` raises for the same bytes, except damage in the pixel data.
    """
    image = _open_checked(data, filename, max_bytes, max_pixels)
    try:
        width, height = image.size
        return width * height
    finally:
        image.close()


def decode_image(data: bytes, *, filename: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode one uploaded image to RGB, EXIF orientation applied, alpha composited on white.

    Raises `InvalidImage` (400; codes `empty_file`, `not_an_image`, `truncated_image`,
    `corrupt_image`, `extreme_aspect_ratio` beyond `MAX_ASPECT_RATIO`), `UnsupportedFormat` (415)
    or `PayloadTooLarge` (413; `too_large` for bytes, `image_too_large` when width x height
    exceeds `max_pixels`).
    """
    image = _open_checked(data, filename, max_bytes, max_pixels)
    try:
        _load(image, filename)
        return upright_rgb(image, filename)
    finally:
        image.close()


def _open_checked(data: bytes, filename: str, max_bytes: int, max_pixels: int) -> ImageFile.ImageFile:
    """The opened header of an image within the byte, pixel and aspect-ratio limits."""
    if not data:
        raise InvalidImage(f"{filename}: the file is empty", code="empty_file")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{filename}: {len(data)} bytes, more than the limit of {max_bytes}")
    image = _open(data, filename)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise PayloadTooLarge(f"{filename}: {width}x{height} = {width * height} pixels, "
                              f"more than the limit of {max_pixels}", code="image_too_large")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        image.close()
        raise InvalidImage(f"{filename}: {width}x{height} is more than {MAX_ASPECT_RATIO} times longer "
                           f"than wide; crop it first", code="extreme_aspect_ratio")
    return image


def _open(data: bytes, filename: str) -> ImageFile.ImageFile:
    """Read the header with the accepted formats' decoders only."""
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        foreign = _identify(data)
        if foreign is None:
            raise InvalidImage(f"{filename}: not an image ({_ACCEPTED_TEXT} expected)") from None
        raise UnsupportedFormat(_unsupported(filename, foreign)) from None
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{filename}: too many pixels to decode safely ({exc})",
                              code="image_too_large") from exc
    except Exception as exc:  # Pillow raises many types on a malformed header
        raise InvalidImage(f"{filename}: not a readable image, its header is damaged ({exc})") from exc
    if image.format not in _DECODED_FORMATS:  # a decoder of the accepted list reporting another name
        image.close()
        raise UnsupportedFormat(_unsupported(filename, image.format))
    return image


def _unsupported(filename: str, image_format: str | None) -> str:
    return f"{filename}: {image_format} images are not supported; send {_ACCEPTED_TEXT}"


def _identify(data: bytes) -> str | None:
    """The format of a file the accepted decoders refused, if it is an image at all."""
    for offset, magic, name in _FOREIGN_MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return name
    try:
        with Image.open(io.BytesIO(data)) as image:  # every Pillow plugin, header only
            return image.format
    except Exception:  # not an image Pillow knows either
        return None


def _load(image: Image.Image, filename: str) -> None:
    """Decode the pixel data (the first frame of an animation)."""
    try:
        image.load()
    except Exception as exc:  # Pillow raises many types on damaged pixel data
        message = str(exc)
        if isinstance(exc, EOFError) or "truncat" in message.lower():
            raise InvalidImage(f"{filename}: the image data is truncated ({message})",
                               code="truncated_image") from exc
        raise InvalidImage(f"{filename}: the image data is corrupt ({message})",
                           code="corrupt_image") from exc
