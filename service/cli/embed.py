"""`cgd embed` and `cgd info`: embeddings of image files; what a model holds and what runs it here.

`cgd info` prints the checkpoint's (or the embedded default model's) config, classes, metrics and version,
and under `runtime` the inference runtime the service would use for it on this machine: the settings
(`CGD_RUNTIME`, `CGD_PRECISION`), the processor and its relevant flags, and, with `CGD_RUNTIME=auto`,
the choice `cgd serve` measured and cached in the data directory (each candidate's images/s and
agreement with torch fp32, and why the chosen one), or that it has not been measured yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from model.checkpoint import read_checkpoint

if TYPE_CHECKING:
    from service.settings import Settings

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")  # what the runtimes' speed hangs on


def register(subparsers: argparse._SubParsersAction) -> None:
    embed = subparsers.add_parser("embed", help="print one JSON line with the embedding of each image")
    embed.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    embed.add_argument("--checkpoint", type=Path, default=None,
                       help="trained checkpoint (default: the embedded default model)")
    embed.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    embed.add_argument("--batch-size", type=int, default=32)
    embed.set_defaults(handler=run_embed)

    info = subparsers.add_parser("info", help="print a model's config, classes, metrics and version, and the "
                                 "inference runtime chosen for it on this machine")
    info.add_argument("checkpoint", type=Path, nargs="?", default=None,
                      help="trained checkpoint (default: the embedded default model)")
    info.add_argument("--data-dir", type=Path, default=None,
                      help="the service's data directory, where the runtime choice is cached (CGD_DATA_DIR)")
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
    from model.default import default_model
    from model.embedder import version_of
    from service.settings import Settings

    settings = Settings(data_dir=args.data_dir) if args.data_dir is not None else Settings()
    if args.checkpoint is None:
        model = default_model()
        summary = {"version": version_of(model, default=True), "config": model.config.to_dict(),
                   "classes": [], "metrics": {}, "extra": {},
                   "parameters": sum(t.numel() for t in model.state_dict().values())}
    else:
        payload = read_checkpoint(args.checkpoint)
        summary = {key: payload[key] for key in ("version", "config", "classes", "metrics", "extra")}
        summary["parameters"] = int(sum(t.numel() for t in payload["state_dict"].values()))
    summary["runtime"] = runtime_info(settings, summary["version"])
    sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
    return 0


def runtime_info(settings: Settings, version: str) -> dict:
    """What runs model `version` in `cgd serve` with `settings` on this machine, and why."""
    from model.device import resolve_device
    from model.runtime_select import cpu_fields, read_choice
    from service.runtime import ENGINE_DIR

    fields = cpu_fields()
    flags = set(fields.get("flags", "").split())
    info = {"setting": settings.runtime, "precision": settings.precision, "cpu": fields.get("model name"),
            "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS}, "choice": None}
    if settings.runtime != "auto" or settings.precision == "int8":
        info["note"] = "the runtime is named in the settings: nothing is measured"
        return info
    device = resolve_device(settings.device)
    cache_dir = settings.data_dir / ENGINE_DIR
    choice = read_choice(cache_dir, version, device, settings.inference_threads, settings.precision)
    if choice is None:
        info["note"] = (f"not measured yet for this model on this machine ({device}): cgd serve measures "
                        f"the candidates at start-up and caches its choice in {cache_dir}")
    else:
        info["choice"] = choice.to_dict()
    return info
