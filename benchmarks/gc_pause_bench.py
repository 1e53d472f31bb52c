"""Full garbage-collection pauses of the service process, before and after `freeze_startup_objects`.

A full (generation 2) collection holds the GIL for its whole pass, so the event loop and every
thread wait for it. In a fresh process this imports the service (torch, timm, FAISS, FastAPI: what
`cgd serve` imports), times `gc.collect()` (`--repeats`, median and max) and counts the tracked
objects; then freezes the startup objects as the app's start does and times it again; then serves
the real app (embedded default model, torch runtime, a temporary data directory, `--images`
pattern images ingested) and times it while the app is up, as a swap would see it.

    nice -n 19 .venv/bin/python benchmarks/gc_pause_bench.py --out /tmp/gc_pause.json
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from service_bench import cpu_model, load_average
from swap_bench import cpu_flags

from service.app import create_app
from service.gc_freeze import freeze_startup_objects
from service.settings import Settings


def full_passes(repeats: int) -> dict[str, float | int]:
    """Median and max milliseconds of `repeats` full collections, and the objects they walk."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1),
            "tracked_objects": len(gc.get_objects())}


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((96, 96), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="full collections timed per state")
    parser.add_argument("--images", type=int, default=32, help="pattern images ingested when serving")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    if any(name.startswith("CGD_") for name in os.environ):
        sys.exit("unset the CGD_* variables first: this benchmark sets its own")
    results: dict = {"machine": {"cpu": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count(),
                                 "load1_start": load_average()}}
    results["imported"] = full_passes(args.repeats)
    results["frozen"] = {"objects_frozen": freeze_startup_objects(), **full_passes(args.repeats)}
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(data_dir=Path(data), device="cpu", runtime="torch")
        with TestClient(create_app(settings)) as client:
            files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(args.images)]
            assert client.post("/gallery", files=files).status_code == 201
            results["serving"] = full_passes(args.repeats)
    results["machine"]["load1_end"] = load_average()
    print(json.dumps(results, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
