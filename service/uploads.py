"""Multipart uploads -> decoded images, with the limits of the settings (bytes -> image)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from service.errors import InvalidParameter, PayloadTooLarge
from service.images import decode_image
from service.settings import Settings


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name, its bytes and the decoded RGB image."""

    filename: str
    data: bytes
    image: Image.Image


async def read_uploads(files: list[UploadFile], settings: Settings) -> list[Upload]:
    """Read and decode every file, or fail naming the first bad one (nothing is kept then)."""
    if not files:
        raise InvalidParameter("no files were uploaded (multipart field 'files')")
    if len(files) > settings.max_files_per_request:
        raise PayloadTooLarge(
            f"{len(files)} files in one request; the limit is {settings.max_files_per_request}"
        )
    uploads = []
    for position, file in enumerate(files):
        name = file.filename or f"file #{position}"
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise PayloadTooLarge(f"{name}: larger than the limit of {settings.max_upload_bytes} bytes")
        image = await run_in_threadpool(decode_image, data, filename=name,
                                        max_bytes=settings.max_upload_bytes,
                                        max_pixels=settings.max_image_pixels)
        uploads.append(Upload(name, data, image))
    return uploads


def parse_json_object(text: str | None, field: str) -> dict[str, Any] | None:
    """A form field that must hold a JSON object (or be absent)."""
    if text is None or text == "":
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParameter(f"{field} must be a JSON object: {exc.msg} at position {exc.pos}") from exc
    if not isinstance(value, dict):
        raise InvalidParameter(f"{field} must be a JSON object, got {type(value).__name__}")
    return value


def per_file(values: list[str] | None, count: int, field: str, *,
             max_length: int | None = None) -> list[str | None]:
    """A repeated form field given once per file, in order (or not at all); "" means none."""
    if not values:
        return [None] * count
    if len(values) != count:
        raise InvalidParameter(f"{field}: got {len(values)} values for {count} files; give one per file")
    for position, value in enumerate(values):
        if max_length is not None and len(value) > max_length:
            raise InvalidParameter(f"{field}[{position}]: {len(value)} characters, more than {max_length}")
    return [value if value != "" else None for value in values]

