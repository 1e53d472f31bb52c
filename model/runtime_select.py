"""`select_engine`: measure the available runtimes on the actual model and keep the fastest that agrees.

A candidate agrees when the minimum cosine of its vectors to torch fp32 over the sample batch is at
least `MIN_COSINE`. Candidates are timed in alternating rounds, so a load change on a shared machine
hits all of them. The choice and its figures are cached per model version, CPU and thread count in
the cache directory (beside the ONNX file), and logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.cgd import CGD
from model.onnx_export import ExportError, ensure_onnx
from model.runtimes import RUNTIMES, Engine, RuntimeUnavailable, TorchEngine, check_runtime, create_engine

LOG = logging.getLogger(__name__)

MIN_COSINE = 0.999
MEASURE_BATCH = 8
ROUNDS = 3
CHOICE_FORMAT = 1


@dataclass(frozen=True)
class Measurement:
    """One candidate's figures: images/s at `MEASURE_BATCH` (best round) and min cosine to torch fp32."""

    runtime: str
    images_per_s: float
    min_cosine: float

    @property
    def agrees(self) -> bool:
        return self.min_cosine >= MIN_COSINE


def sample_batch(image_size: int, count: int = MEASURE_BATCH, seed: int = 0) -> torch.Tensor:
    """(count, 3, S, S) deterministic smooth colour images, normalised to [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 7, 7, generator=generator)
    images = F.interpolate(coarse, size=(image_size, image_size), mode="bicubic", align_corners=False)
    return (images.clamp(0, 1) - 0.5) / 0.5


def cpu_key(device: torch.device, threads: int) -> str:
    """A short hash naming this processor (model and flags), device and thread count."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    text = f"{fields.get('model name', platform.processor())}|{fields.get('flags', '')}|{device}|{threads}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def measure(engines: dict[str, Engine], batch: torch.Tensor, reference: np.ndarray,
            rounds: int = ROUNDS) -> list[Measurement]:
    """Time every engine on `batch` in alternating rounds (after one warm-up run each)."""
    best = {name: float("inf") for name in engines}
    cosine = {}
    for name, engine in engines.items():
        cosine[name] = float((engine.run(batch) * reference).sum(axis=1).min())
    for _ in range(rounds):
        for name, engine in engines.items():
            started = time.perf_counter()
            engine.run(batch)
            best[name] = min(best[name], time.perf_counter() - started)
    return [Measurement(name, len(batch) / best[name], cosine[name]) for name in engines]


def choose(measurements: list[Measurement]) -> Measurement:
    """The fastest candidate that agrees with torch fp32 (torch itself always does)."""
    agreeing = [m for m in measurements if m.agrees]
    if not agreeing:
        raise RuntimeUnavailable("no runtime agrees with torch fp32")
    return max(agreeing, key=lambda m: m.images_per_s)


def select_engine(model: CGD, version: str, device: torch.device, *, precision: str = "auto",
                  cache_dir: Path, threads: int | None = None,
                  samples: torch.Tensor | None = None) -> tuple[Engine, list[Measurement]]:
    """The fastest agreeing engine among the runtimes installed here, and the figures it was chosen on."""
    threads = threads or torch.get_num_threads()
    choice_file = cache_dir / f"{version}.{cpu_key(device, threads)}.runtime.json"
    cached = _read_choice(choice_file)
    if cached is not None:
        name, measurements = cached
        try:
            return _build(name, model, version, device, precision, cache_dir, threads), measurements
        except (RuntimeUnavailable, ExportError, OSError) as exc:
            LOG.warning("cached runtime choice %s cannot be used (%s): measuring again", name, exc)
    torch_engine = TorchEngine(model, device, precision)
    engines: dict[str, Engine] = {"torch": torch_engine}
    for name in RUNTIMES[1:]:
        try:
            engines[name] = _build(name, model, version, device, precision, cache_dir, threads)
        except (RuntimeUnavailable, ExportError) as exc:
            LOG.info("runtime %s is not a candidate: %s", name, exc)
    batch = samples if samples is not None else sample_batch(model.config.image_size)
    fp32 = torch_engine if torch_engine.dtype == torch.float32 else TorchEngine(model, device, "fp32")
    reference = fp32.run(batch)
    measurements = measure(engines, batch, reference)
    chosen = choose(measurements)
    LOG.info("runtime %s chosen for model %s: %s", chosen.runtime, version, ", ".join(
        f"{m.runtime} {m.images_per_s:.1f} img/s (min cosine {m.min_cosine:.5f})" for m in measurements))
    _write_choice(choice_file, chosen.runtime, measurements)
    return engines[chosen.runtime], measurements


def _build(name: str, model: CGD, version: str, device: torch.device, precision: str, cache_dir: Path,
           threads: int) -> Engine:
    check_runtime(name, device, precision)
    onnx_file = None if name == "torch" else ensure_onnx(model, version, cache_dir)
    return create_engine(name, model, device, precision=precision, onnx_file=onnx_file, threads=threads)


def _read_choice(path: Path) -> tuple[str, list[Measurement]] | None:
    try:
        data = json.loads(path.read_text())
        if data.get("format") != CHOICE_FORMAT:
            return None
        return data["runtime"], [Measurement(**m) for m in data["measurements"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_choice(path: Path, runtime: str, measurements: list[Measurement]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps({"format": CHOICE_FORMAT, "runtime": runtime,
                                   "measurements": [asdict(m) for m in measurements]}, indent=1))
    os.replace(partial, path)
