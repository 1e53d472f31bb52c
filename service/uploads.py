"""Multipart uploads -> decoded images, and JSON form fields, within the settings' limits (bytes -> image)."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, UploadFile
from PIL import Image

from index import InvalidItem
from index.validation import check_metadata
from service.deps import get_runtime
from service.errors import InvalidParameter, NotReady, PayloadTooLarge
from service.images import decode_image, image_pixels
from service.pixel_budget import PixelBudget
from service.settings import Settings


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name, its bytes and the decoded RGB image."""

    filename: str
    data: bytes
    image: Image.Image


class UploadReader:
    """Reads and decodes the files of one request within the settings' limits.

    Before decoding anything it adds up the pixels of every image from the headers: beyond
    `max_request_pixels`, 413 (`too_many_pixels`); then it takes them from the service's
    `PixelBudget` (503 when the service already decodes too much) until the request ends. `run` runs
    the blocking part (header reads and decoding, one job a request) off the event loop: in the service,
    the inference worker's decoding threads (`InferenceWorker.run_decoding`).
    """

    def __init__(self, settings: Settings, budget: PixelBudget,
                 run: Callable[..., Awaitable[list[Upload]]]) -> None:
        self._settings = settings
        self._budget = budget
        self._run = run
        self._held = 0
        self._released = False  # the request ended: a decode still running takes nothing
        self._lock = threading.Lock()  # `_held` and `_released`, between the executor and the event loop

    async def read(self, files: list[UploadFile]) -> list[Upload]:
        """Every file decoded, in order, or an error naming the first bad one (nothing is kept then)."""
        settings = self._settings
        if not files:
            raise InvalidParameter("no files were uploaded (multipart field 'files')")
        if len(files) > settings.max_files_per_request:
            raise PayloadTooLarge(
                f"{len(files)} files in one request; the limit is {settings.max_files_per_request}"
            )
        named = []
        for position, file in enumerate(files):
            name = file.filename or f"file #{position}"
            data = await file.read(settings.max_upload_bytes + 1)
            if len(data) > settings.max_upload_bytes:
                raise PayloadTooLarge(f"{name}: larger than the limit of {settings.max_upload_bytes} bytes")
            named.append((name, data))
        return await self._run(self._decode, named)

    def _decode(self, named: list[tuple[str, bytes]]) -> list[Upload]:
        """Off the event loop, in one job (one thread hop a request): the pixels of every header, the
        request's limit and the service's budget checked, then every image decoded."""
        settings = self._settings
        limits = {"max_bytes": settings.max_upload_bytes, "max_pixels": settings.max_image_pixels}
        pixels = sum(image_pixels(data, filename=name, **limits) for name, data in named)
        if pixels > settings.max_request_pixels:
            raise PayloadTooLarge(f"the images of this request have {pixels} pixels in all; the limit is "
                                  f"{settings.max_request_pixels}", code="too_many_pixels")
        with self._lock:
            if self._released:  # the client left while this job waited: nothing to keep
                raise NotReady("the request ended before its images were decoded")
            self._budget.take(pixels)
            self._held += pixels
        return [Upload(name, data, decode_image(data, filename=name, **limits)) for name, data in named]

    def release(self) -> None:
        """Give the request's pixels back to the budget (its images are no longer used)."""
        with self._lock:
            self._released = True
            self._budget.give_back(self._held)
            self._held = 0


async def upload_reader(request: Request) -> AsyncIterator[UploadReader]:
    """Dependency: an `UploadReader` whose pixels are given back when the request is done."""
    reader = UploadReader(request.app.state.settings, request.app.state.pixel_budget,
                          (await get_runtime(request)).worker.run_decoding)
    try:
        yield reader
    finally:
        reader.release()


UploadsDep = Annotated[UploadReader, Depends(upload_reader)]


def parse_json_object(text: str | None, field: str) -> dict[str, Any] | None:
    """A form field that must hold a JSON object (or be absent); NaN, Infinity and nesting too deep
    for the parser are refused."""
    if text is None or text == "":
        return None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidParameter(f"{field} must be a JSON object: {exc.msg} at position {exc.pos}") from exc
    except RecursionError as exc:
        raise InvalidParameter(f"{field} is nested too deeply") from exc
    if not isinstance(value, dict):
        raise InvalidParameter(f"{field} must be a JSON object, got {type(value).__name__}")
    return value


def parse_metadata(text: str | None, field: str) -> dict[str, Any]:
    """Item metadata from a form field: a JSON object within the gallery's depth, size and number limits."""
    metadata = parse_json_object(text, field) or {}
    try:
        check_metadata(metadata)
    except InvalidItem as exc:
        raise InvalidParameter(f"{field}: {exc}") from exc
    return metadata


def _refuse_constant(name: str) -> Any:
    raise InvalidParameter(f"{name} is not a JSON number")


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

