"""`cgd ingest`: upload a labelled folder (or a labels.csv) to a running service, with a progress bar.

Each image's path relative to the folder is its external id: images whose id the gallery already
holds are neither sent nor counted, so running it again uploads only what is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
from tqdm import tqdm

from model.data import LabelledImage, load_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    ingest = subparsers.add_parser("ingest", help="upload a labelled image folder to a running service")
    ingest.add_argument("source", type=Path, metavar="DIR_OR_LABELS_CSV",
                        help="a folder with labels.csv (path,label,split), a labels.csv, "
                             "or a folder with one sub-folder per label")
    ingest.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    ingest.add_argument("--split", default=None, help="only rows of this split (labels.csv)")
    ingest.add_argument("--batch-size", type=int, default=16, help="images per request")
    ingest.add_argument("--api-key", default=None, help="X-API-Key for a service that requires one")
    ingest.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ingest.set_defaults(handler=run_ingest)


def run_ingest(args: argparse.Namespace) -> int:
    root = args.source.parent if args.source.name == "labels.csv" else args.source
    images = load_dataset(root, split=args.split)
    if not images:
        raise ValueError(f"no images found in {args.source}")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would break the bar
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    added = known = 0
    with httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout) as client, \
            tqdm(total=len(images), unit="img", desc="ingest") as bar:
        for start in range(0, len(images), args.batch_size):
            batch = images[start:start + args.batch_size]
            missing = [image for image in batch if not _stored(client, _external_id(image, root))]
            known += len(batch) - len(missing)
            if missing:
                response = client.post("/gallery", files=_files(missing), data=_fields(missing, root))
                if response.status_code != 201:
                    sys.stderr.write(f"cgd ingest: the service refused a batch: {response.status_code} "
                                     f"{response.text}\n")
                    return 1
                added += len(missing)
            bar.update(len(batch))
    sys.stdout.write(json.dumps({"uploaded": added, "already_in_gallery": known, "url": args.url}) + "\n")
    return 0


def _external_id(image: LabelledImage, root: Path) -> str:
    return image.path.relative_to(root).as_posix()


def _stored(client: httpx.Client, external_id: str) -> bool:
    """Whether the gallery holds an item of this external id (GET /gallery/external/{id})."""
    response = client.get(f"/gallery/external/{quote(external_id, safe='/')}")
    if response.status_code not in (200, 404):
        raise ValueError(f"the service refused to look up {external_id!r}: "
                         f"{response.status_code} {response.text}")
    return response.status_code == 200


def _files(batch: list[LabelledImage]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (image.path.name, image.path.read_bytes())) for image in batch]


def _fields(batch: list[LabelledImage], root: Path) -> dict[str, list[str]]:
    return {
        "labels": [image.label for image in batch],
        "external_ids": [_external_id(image, root) for image in batch],
    }
