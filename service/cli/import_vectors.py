"""`cgd import VECTORS.npy ITEMS --model-version V`: bulk-load precomputed embeddings into the gallery.

For galleries too large to re-send as images: row i of VECTORS.npy (float, (N, d), L2-normalised) is
the embedding of row i of ITEMS, a CSV with a header (`path` and / or `external_id`, and optionally
`label`, `metadata` as a JSON object; other columns, such as labels.csv's `split`, are ignored) or a
JSONL file of objects with the same keys. `path` is the item's image, relative to ITEMS' folder: the
gallery keeps it (thumbnails, fine-tuning and re-embedding by a new model read it). A row without one
(empty or absent) is an item without an image: it is searchable, but has no thumbnail, is left out of
training, and a new model version (promotion or activation) leaves it out, having nothing to embed it
from; it needs an `external_id`. The external id defaults to `path`, as `cgd ingest` names images: items
the gallery already holds are skipped, so running it again after an interruption imports only the rest,
except that a row with a `path` gives its image to a held item that has none (its vector is kept; the
service embeds the image for the models that lack its vector, at its next start or activation).

The vectors must name the model that made them (`--model-version`, as `cgd embed` prints it), and that
must be the model the service serves on this data directory (CGD_CHECKPOINT, else the model of the
gallery's live version, else the last one promoted, else the embedded default): vectors of another model
would not be comparable with its queries. Both files are checked in full (shape, dimension, NaN and
infinity, L2 norm, image files, labels and metadata) before anything is written; then chunks of
`--batch-size` items are added, each one durable, with a progress bar. Stop the service first: the
gallery is opened directly (its lock is taken).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from index import Gallery, GalleryError, GalleryLocked, NewItem
from index.validation import check_metadata, check_text, check_vectors
from service.model_registry import ModelRegistry
from service.runtime import GALLERY_DIR, _serving_checkpoint
from service.service_db import ServiceDatabase
from service.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    command = subparsers.add_parser("import", help="bulk-load precomputed embeddings (.npy) and their items "
                                                   "into the gallery (service stopped)")
    command.add_argument("vectors", type=Path, metavar="VECTORS.npy", help="float (N, d) L2-normalised rows")
    command.add_argument("items", type=Path, metavar="ITEMS",
                         help="CSV with a header (path and/or external_id[,label][,metadata]) or JSONL, one "
                              "row per vector; image paths relative to its folder (a row without one: an "
                              "item without an image, which needs an external_id)")
    command.add_argument("--model-version", required=True,
                         help="the model version that made the vectors (cgd embed prints it); must be the "
                              "served one")
    command.add_argument("--data-dir", type=Path, default=None, help="the service's data directory "
                                                                     "(CGD_DATA_DIR)")
    command.add_argument("--batch-size", type=int, default=1000, help="items per durable transaction")
    command.set_defaults(handler=run_import)


@dataclass(frozen=True)
class ServedModel:
    """What the service would serve on a data directory: its version and embedding width."""

    version: str
    dim: int


def run_import(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    settings = Settings(data_dir=args.data_dir) if args.data_dir is not None else Settings()
    vectors = load_vectors(args.vectors)
    rows = count_items(args.items)
    if rows != len(vectors):
        raise ValueError(f"{args.items} has {rows} items for {len(vectors)} vectors in {args.vectors}")
    try:
        with Gallery.open(settings.data_dir / GALLERY_DIR, **settings.index_options()) as gallery:
            served = served_model(settings, gallery.live_version)
            check_model(served, args.model_version, vectors.shape[1], gallery.live_version)
            check_files(vectors, args.items, args.batch_size)
            before, imageless = gallery.count(), gallery.count(has_image=False)
            attached = import_rows(gallery, vectors, args.items, served.version, args.batch_size)
            added = gallery.count() - before
            without_image = gallery.count(has_image=False) - imageless + attached
    except GalleryLocked as exc:
        sys.stderr.write(f"cgd import: {exc}: stop the service first\n")
        return 1
    except GalleryError as exc:
        sys.stderr.write(f"cgd import: {exc}\n")
        return 1
    sys.stdout.write(json.dumps({"imported": added, "without_image": without_image,
                                 "images_attached": attached, "already_in_gallery": rows - added - attached,
                                 "model_version": served.version, "dim": served.dim,
                                 "data_dir": str(settings.data_dir)}) + "\n")
    return 0


def load_vectors(path: Path) -> np.memmap:
    """The .npy file memory-mapped (never read whole), if it holds a 2-d float array."""
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path} as a .npy array: {exc}") from exc
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise ValueError(f"{path} must hold a 2-d float array (N, d), not {vectors.dtype} {vectors.shape}")
    return vectors


def read_items(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a CSV (with a header) or JSONL items file, as dicts, streamed."""
    with open(path, newline="", encoding="utf-8") as handle:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}, line {number}: not JSON ({exc})") from exc
                if not isinstance(row, dict):
                    raise ValueError(f"{path}, line {number}: each line must be a JSON object")
                yield row
            return
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"path", "external_id"} & set(reader.fieldnames):
            raise ValueError(f"{path} needs a header with a 'path' and / or an 'external_id' column (and "
                             "optionally label, metadata)")
        yield from reader


def count_items(path: Path) -> int:
    return sum(1 for _ in read_items(path))


def new_item(row: dict[str, Any], root: Path, number: int, *, read_image: bool) -> NewItem:
    """The item of one row (its image, if it names one, read if `read_image`, else only checked to exist);
    ValueError naming the row when a field is invalid."""
    where = f"item {number}"
    relative = row.get("path") or None
    if relative is not None and not isinstance(relative, str):
        raise ValueError(f"{where}: 'path' must be a string (the image, relative to the items file)")
    if relative is None and not row.get("external_id"):
        raise ValueError(f"{where}: an item without an image (no 'path') needs an 'external_id'")
    image = root / relative if relative is not None else None
    if image is not None and not image.is_file():
        raise ValueError(f"{where}: image {image} does not exist")
    metadata = row.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: metadata is not JSON ({exc})") from exc
    try:
        check_metadata(metadata)
        label = check_text(row.get("label") or None, "label")
        external_id = check_text(row.get("external_id") or relative, "external_id")
    except GalleryError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    data = image.read_bytes() if image is not None and read_image else None
    return NewItem(data, external_id, label, metadata)


def chunks(vectors: np.memmap, items: Path, size: int,
           read_images: bool) -> Iterator[tuple[int, np.ndarray, list[NewItem]]]:
    """(first row, vectors (c, d) float32 checked, items (c)) in chunks of `size` rows."""
    rows = read_items(items)
    for start in range(0, len(vectors), size):
        try:
            chunk = check_vectors(vectors[start:start + size], unit=True, first_row=start)
        except GalleryError as exc:
            raise ValueError(f"{vectors.filename}: {exc}") from exc
        batch = [new_item(row, items.parent, start + i, read_image=read_images)
                 for i, row in enumerate(islice(rows, len(chunk)))]
        yield start, chunk, batch


def check_files(vectors: np.memmap, items: Path, size: int) -> None:
    """Every vector and item valid (rows numbered from 0), before anything is written."""
    for _ in tqdm(chunks(vectors, items, size, read_images=False), total=-(-len(vectors) // size),
                  unit="chunk", desc="check"):
        pass


def served_model(settings: Settings, live: str | None) -> ServedModel:
    """The model the service would serve on `settings.data_dir` (the rule of its start-up)."""
    from model.embedder import Embedder

    database = (ServiceDatabase.open(settings.gallery_engines().postgres())
                if settings.database_url is not None else None)
    try:
        checkpoint = _serving_checkpoint(settings, ModelRegistry(settings.data_dir, database), live)
    finally:
        if database is not None:
            database.close()
    embedder = Embedder.load(checkpoint, device="cpu", precision="fp32")
    return ServedModel(embedder.version, embedder.dim)


def check_model(served: ServedModel, version: str, dim: int, live: str | None) -> None:
    """ValueError unless the vectors (of `version`, `dim` wide) are the served model's, and the gallery's
    live version (if any) is that model's."""
    if version != served.version:
        raise ValueError(f"the vectors are of model version {version!r} but the service serves "
                         f"{served.version!r}: embed the images with the served model (cgd embed), or serve "
                         "the model that made them (CGD_CHECKPOINT)")
    if dim != served.dim:
        raise ValueError(f"the vectors have {dim} dimensions but model {served.version!r} makes {served.dim}")
    if live is not None and live != served.version:
        raise ValueError(f"the gallery is indexed for model version {live!r} and the service would switch "
                         f"it to {served.version!r} (re-embedding every image) at its next start: start it "
                         "once, then import")


def import_rows(gallery: Gallery, vectors: np.memmap, items: Path, version: str, size: int) -> int:
    """Add every row in durable chunks, with a progress bar, and give held items without an image the
    image their row names; returns how many got one."""
    attached = 0
    with tqdm(total=len(vectors), unit="item", desc="import") as bar:
        for _, chunk, batch in chunks(vectors, items, size, read_images=True):
            stored = gallery.add(batch, {version: chunk})
            lacking = [(item.id, new.image) for new, item in zip(batch, stored, strict=True)
                       if new.image is not None and not item.has_image]
            if lacking:
                ids, images = zip(*lacking, strict=True)
                attached += len(gallery.attach_images(ids, images))
            bar.update(len(batch))
    return attached
