"""`cgd embed` and `cgd info`: embeddings of image files, and what a checkpoint holds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.checkpoint import read_checkpoint


def register(subparsers: argparse._SubParsersAction) -> None:
    embed = subparsers.add_parser("embed", help="print one JSON line with the embedding of each image")
    embed.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    embed.add_argument("--checkpoint", type=Path, default=None,
                       help="trained checkpoint (default: the embedded default model)")
    embed.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    embed.add_argument("--batch-size", type=int, default=32)
    embed.set_defaults(handler=run_embed)

    info = subparsers.add_parser("info", help="print a checkpoint's config, classes, metrics and version")
    info.add_argument("checkpoint", type=Path)
    info.set_defaults(handler=run_info)


def run_embed(args: argparse.Namespace) -> int:
    from model.data import open_rgb
    from model.embedder import Embedder

    embedder = Embedder.load(args.checkpoint, device=args.device)
    images = [open_rgb(path) for path in args.images]  # upright RGB, as the service decodes uploads
    vectors = embedder.embed_images(images, batch_size=args.batch_size)
    for path, vector in zip(args.images, vectors, strict=True):
        record = {"image": str(path), "model_version": embedder.version, "dim": len(vector),
                  "embedding": [round(float(x), 7) for x in vector]}
        sys.stdout.write(json.dumps(record) + "\n")
    return 0


def run_info(args: argparse.Namespace) -> int:
    payload = read_checkpoint(args.checkpoint)
    summary = {key: payload[key] for key in ("version", "config", "classes", "metrics", "extra")}
    summary["parameters"] = int(sum(t.numel() for t in payload["state_dict"].values()))
    sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
    return 0
