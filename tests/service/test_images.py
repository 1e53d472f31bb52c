"""decode_image on real images made in memory: every format, orientation, modes, and bad uploads."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from model.data import open_rgb
from service.errors import InvalidImage, PayloadTooLarge, UnsupportedFormat
from service.images import decode_image

LIMITS = {"max_bytes": 5_000_000, "max_pixels": 1_000_000}


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def decode(data: bytes, filename: str = "upload.bin", **limits) -> Image.Image:
    return decode_image(data, filename=filename, **(LIMITS | limits))


def halves(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(array)


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk claiming `width` x `height` RGB pixels, and no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def psd(width: int = 4, height: int = 3) -> bytes:
    """A minimal valid Photoshop file: RGB, 8 bits, no resources, raw zero pixels."""
    header = b"8BPS" + struct.pack(">H", 1) + b"\0" * 6 + struct.pack(">HIIHH", 3, height, width, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(width * height * 3)


@pytest.mark.parametrize(
    ("image_format", "options", "tolerance"),
    [("JPEG", {"quality": 95}, 40), ("PNG", {}, 0), ("WEBP", {"lossless": True}, 0), ("BMP", {}, 0),
     ("GIF", {}, 0)],
)
def test_accepted_formats_decode_to_rgb(image_format: str, options: dict, tolerance: int) -> None:
    source = halves()
    image = decode(encode(source, image_format, **options), filename=f"a.{image_format.lower()}")
    assert image.mode == "RGB" and image.size == (40, 20)
    difference = np.abs(np.asarray(image, dtype=int) - np.asarray(source, dtype=int))
    assert difference[:, 2:18].max() <= tolerance and difference[:, 22:38].max() <= tolerance


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image must be turned 90 degrees clockwise
    image = decode(encode(halves(), "JPEG", quality=95, exif=exif), filename="phone.jpg")
    assert image.size == (20, 40)
    top, bottom = np.asarray(image)[5, 10], np.asarray(image)[35, 10]
    assert top[0] > 200 and top[2] < 60  # the red left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_alpha_is_composited_on_white() -> None:
    array = np.zeros((2, 2, 4), dtype=np.uint8)
    array[0, 0] = (255, 0, 0, 0)  # fully transparent red
    array[0, 1] = (0, 0, 0, 128)  # half transparent black
    array[1, :] = (0, 255, 0, 255)  # opaque green
    pixels = np.asarray(decode(encode(Image.fromarray(array, "RGBA"), "PNG")), dtype=int)
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert np.all(np.abs(pixels[0, 1] - 127) <= 1)
    assert pixels[1, 0].tolist() == [0, 255, 0]


def test_grayscale_with_alpha_and_palette_transparency() -> None:
    gray_alpha = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), "LA")
    assert np.asarray(decode(encode(gray_alpha, "PNG"))).tolist() == [[[255, 255, 255], [0, 0, 0]]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    gif = encode(palette, "GIF", transparency=0)
    assert np.asarray(decode(gif)).tolist() == [[[255, 255, 255], [0, 0, 255]]]


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    levels = np.array([[0, 32896, 65535]], dtype=np.uint16)
    image = decode(encode(Image.fromarray(levels), "PNG"), filename="scan.png")
    assert np.asarray(image)[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_and_grayscale_jpegs() -> None:
    cmyk = decode(encode(halves().convert("CMYK"), "JPEG", quality=95))
    assert cmyk.mode == "RGB"
    assert np.asarray(cmyk)[10, 5, 0] > 200 and np.asarray(cmyk)[10, 35, 2] > 200
    gray = np.asarray(decode(encode(Image.new("L", (8, 8), 90), "JPEG")))
    assert gray.shape == (8, 8, 3) and np.all(np.abs(gray.astype(int) - 90) <= 2)


def test_animated_gif_gives_its_first_frame() -> None:
    red, blue = Image.new("RGB", (6, 6), (255, 0, 0)), Image.new("RGB", (6, 6), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=100)
    assert np.asarray(decode(data))[3, 3].tolist() == [255, 0, 0]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_file"),
        (b"hello, this is plain text and not a picture", "not_an_image"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "not_an_image"),
    ],
)
def test_not_images(data: bytes, code: str) -> None:
    with pytest.raises(InvalidImage) as error:
        decode(data, filename="holiday.png")
    assert error.value.code == code and error.value.status_code == 400
    assert "holiday.png" in error.value.detail


def test_truncated_jpeg() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG")
    with pytest.raises(InvalidImage) as error:
        decode(data[: len(data) // 2], filename="cut.jpg")
    assert error.value.code == "truncated_image" and "cut.jpg" in error.value.detail


def test_corrupt_pixel_data() -> None:
    data = bytearray(encode(Image.new("RGB", (64, 64), (10, 200, 30)), "PNG"))
    start = data.find(b"IDAT") + 10
    data[start:start + 10] = b"\xff" * 10
    with pytest.raises(InvalidImage) as error:
        decode(bytes(data), filename="bad.png")
    assert error.value.status_code == 400 and "bad.png" in error.value.detail


@pytest.mark.parametrize(("data", "name"), [(encode(halves(), "TIFF"), "TIFF"), (psd(), "PSD")])
def test_other_image_formats_are_unsupported(data: bytes, name: str) -> None:
    with pytest.raises(UnsupportedFormat) as error:
        decode(data, filename="scan.file")
    assert error.value.status_code == 415
    assert name in error.value.detail and "scan.file" in error.value.detail


def test_too_many_bytes() -> None:
    with pytest.raises(PayloadTooLarge) as error:
        data = encode(halves(), "PNG")
        decode(data, filename="big.png", max_bytes=len(data) - 1)
    assert error.value.code == "too_large" and error.value.status_code == 413
    assert "big.png" in error.value.detail
    assert decode(data, max_bytes=len(data)).size == (40, 20)


@pytest.mark.parametrize("side", [2_000, 100_000])  # below and above Pillow's own bomb limit
def test_too_many_pixels_is_refused_from_the_header_without_decoding(side: int) -> None:
    max_pixels_before = Image.MAX_IMAGE_PIXELS
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as error:
            decode(png_header(side, side), filename="bomb.png")  # no pixel data: decoding would fail
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.value.code == "image_too_large" and "bomb.png" in error.value.detail
    assert peak < 5_000_000
    assert max_pixels_before == Image.MAX_IMAGE_PIXELS  # Pillow's global is left alone


def test_pixel_limit_is_inclusive() -> None:
    image = decode(encode(Image.new("RGB", (100, 50)), "PNG"), max_pixels=5_000)
    assert image.size == (100, 50)
    with pytest.raises(PayloadTooLarge):
        decode(encode(Image.new("RGB", (100, 50)), "PNG"), max_pixels=4_999)


@pytest.mark.parametrize("kind", ["exif_rotated_jpeg", "transparent_png"])
def test_stored_files_decode_as_uploads_do(tmp_path, kind: str) -> None:
    """Training and re-embedding read stored files with `open_rgb`; ingestion decodes the same bytes
    with `service.images.decode_image`. Both must give the same pixels (so the same vectors)."""
    pixels = np.zeros((40, 60, 4), dtype=np.uint8)
    pixels[:, :30] = (200, 30, 30, 255)  # left half red and opaque, right half transparent
    buffer = io.BytesIO()
    if kind == "exif_rotated_jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise
        Image.fromarray(pixels[..., :3]).save(buffer, format="JPEG", quality=95, exif=exif)
    else:
        Image.fromarray(pixels, mode="RGBA").save(buffer, format="PNG")
    path = tmp_path / "stored.bin"
    path.write_bytes(buffer.getvalue())
    uploaded = decode_image(buffer.getvalue(), filename="upload", **LIMITS)
    stored = open_rgb(path)
    assert stored.mode == "RGB"
    assert stored.size == uploaded.size == ((40, 60) if kind == "exif_rotated_jpeg" else (60, 40))
    assert np.array_equal(np.asarray(stored), np.asarray(uploaded))
    if kind == "transparent_png":
        assert tuple(np.asarray(stored)[0, -1]) == (255, 255, 255)  # alpha on white, not black
