"""`select_engine`: measure the available runtimes on the actual model and keep the fastest that agrees.

Candidates are (runtime, precision) pairs (`candidates`). A candidate agrees when the minimum cosine
of its vectors to torch fp32 over the sample batch is at least `MIN_COSINE`. Candidates are timed in
alternating rounds, so a load change on a shared machine hits all of them. The choice and its figures
are cached per model version, CPU, thread count and asked precision in the cache directory (beside the
ONNX file), and logged.
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
from model.device import cpu_supports_bf16
from model.onnx_export import ExportError, ensure_onnx
from model.runtimes import (
    RUNTIMES,
    Engine,
    RuntimeUnavailable,
    TorchEngine,
    check_runtime,
    create_engine,
    precisions,
    runtime_installed,
)

LOG = logging.getLogger(__name__)

MIN_COSINE = 0.999
Candidate = tuple[str, str]  # (runtime, precision)
MEASURE_BATCH = 8
ROUNDS = 3
CHOICE_FORMAT = 2


@dataclass(frozen=True)
class Measurement:
    """One candidate's figures: images/s at `MEASURE_BATCH` (best round) and min cosine to torch fp32."""

    runtime: str
    images_per_s: float
    min_cosine: float
    precision: str = "fp32"

    @property
    def name(self) -> str:
        """The runtime, and its precision unless fp32: `torch`, `torch-bf16`, `openvino-bf16`."""
        return self.runtime if self.precision == "fp32" else f"{self.runtime}-{self.precision}"

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


def measure(engines: dict[Candidate, Engine], batch: torch.Tensor, reference: np.ndarray,
            rounds: int = ROUNDS) -> list[Measurement]:
    """Time every engine on `batch` in alternating rounds (after one warm-up run each)."""
    best = {candidate: float("inf") for candidate in engines}
    cosine = {}
    for candidate, engine in engines.items():
        cosine[candidate] = float((engine.run(batch) * reference).sum(axis=1).min())
    for _ in range(rounds):
        for candidate, engine in engines.items():
            started = time.perf_counter()
            engine.run(batch)
            best[candidate] = min(best[candidate], time.perf_counter() - started)
    return [Measurement(runtime, len(batch) / best[(runtime, precision)], cosine[(runtime, precision)],
                        precision) for runtime, precision in engines]


def candidates(device: torch.device, precision: str) -> list[Candidate]:
    """The (runtime, precision) pairs `auto` measures: every installed runtime that runs on `device`, at
    `precision`, or for `auto` at fp32 and at each reduced precision the hardware runs natively (fp16 on
    CUDA, bf16 on a CPU with AVX512-BF16 or AMX). int8 is never a candidate."""
    reduced = ({"fp16", "bf16"} if device.type == "cuda" else {"bf16"} if cpu_supports_bf16() else set())
    wanted = {"fp32"} | reduced if precision == "auto" else {precision}
    pairs = []
    for runtime in RUNTIMES:
        if runtime_installed(runtime):
            pairs += [(runtime, p) for p in precisions(runtime, device) if p in wanted and p != "int8"]
    return pairs


def choose(measurements: list[Measurement]) -> Measurement:
    """The fastest candidate that agrees with torch fp32 (torch itself always does)."""
    agreeing = [m for m in measurements if m.agrees]
    if not agreeing:
        raise RuntimeUnavailable("no runtime agrees with torch fp32")
    return max(agreeing, key=lambda m: m.images_per_s)


def select_engine(model: CGD, version: str, device: torch.device, *, precision: str = "auto",
                  cache_dir: Path, threads: int | None = None,
                  samples: torch.Tensor | None = None) -> tuple[Engine, list[Measurement]]:
    """The fastest agreeing engine among the `candidates` here, and the figures it was chosen on."""
    threads = threads or torch.get_num_threads()
    choice_file = cache_dir / f"{version}.{cpu_key(device, threads)}.{precision}.runtime.json"
    cached = _read_choice(choice_file)
    if cached is not None:
        candidate, measurements = cached
        try:
            return _build(candidate, model, version, device, cache_dir, threads), measurements
        except (RuntimeUnavailable, ExportError, OSError) as exc:
            LOG.warning("cached runtime choice %s cannot be used (%s): measuring again", candidate, exc)
    reference_engine = TorchEngine(model, device, "fp32")
    engines: dict[Candidate, Engine] = {}
    for candidate in candidates(device, precision):
        try:
            engines[candidate] = (reference_engine if candidate == ("torch", "fp32")
                                  else _build(candidate, model, version, device, cache_dir, threads))
        except (RuntimeUnavailable, ExportError) as exc:
            LOG.info("runtime %s at %s is not a candidate: %s", *candidate, exc)
    if not engines:
        raise RuntimeUnavailable(f"no runtime installed here runs precision {precision!r} on {device.type}")
    batch = samples if samples is not None else sample_batch(model.config.image_size)
    measurements = measure(engines, batch, reference_engine.run(batch))
    # A reduced precision asked for by name is served even if it does not reach MIN_COSINE (it is logged).
    chosen = (choose(measurements) if precision in ("auto", "fp32")
              else max(measurements, key=lambda m: m.images_per_s))
    LOG.info("runtime %s chosen for model %s: %s", chosen.name, version, ", ".join(
        f"{m.name} {m.images_per_s:.1f} img/s (min cosine {m.min_cosine:.5f})" for m in measurements))
    _write_choice(choice_file, chosen, measurements)
    return engines[(chosen.runtime, chosen.precision)], measurements


def _build(candidate: Candidate, model: CGD, version: str, device: torch.device, cache_dir: Path,
           threads: int) -> Engine:
    name, precision = candidate
    check_runtime(name, device, precision)
    onnx_file = None if name == "torch" else ensure_onnx(model, version, cache_dir)
    return create_engine(name, model, device, precision=precision, onnx_file=onnx_file, threads=threads)


def _read_choice(path: Path) -> tuple[Candidate, list[Measurement]] | None:
    try:
        data = json.loads(path.read_text())
        if data.get("format") != CHOICE_FORMAT:
            return None
        return (data["runtime"], data["precision"]), [Measurement(**m) for m in data["measurements"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_choice(path: Path, chosen: Measurement, measurements: list[Measurement]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps({"format": CHOICE_FORMAT, "runtime": chosen.runtime,
                                   "precision": chosen.precision,
                                   "measurements": [asdict(m) for m in measurements]}, indent=1))
    os.replace(partial, path)
