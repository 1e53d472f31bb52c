"""`select_engine`: measure the available runtimes on the actual model and keep the fastest that agrees.

Candidates are (runtime, precision) pairs (`candidates`). A candidate agrees when the minimum cosine
of its vectors to torch fp32 over real images (up to `MAX_SAMPLES` gallery images, or the photos shipped
with the package, `model.sample_images`) is at least `MIN_COSINE`. Candidates are timed on a batch of
those images in alternating rounds, so a load change on a shared machine hits all of them. The
`RuntimeChoice` is cached per model version, CPU, thread count and asked precision in the cache
directory (beside the ONNX file), and logged; `read_choice` reads it back (`cgd info`).

A new version of an architecture already measured here (same backbone, descriptors, dimension, input
size and scales: `architecture_key`) reuses the last choice measured for it, since the runtimes' speeds
depend on the graph, not on the weights: only agreement is checked again, on this model and the real
images, fastest candidate first. That keeps the timing rounds and the candidates' engines out of a
promotion, which loads the new model while the old one serves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from model.cgd import CGD
from model.config import CGDConfig
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
MAX_SAMPLES = 32  # real images of the agreement check
ROUNDS = 3
CHOICE_FORMAT = 3
SHIPPED = "shipped sample"  # the source of the photos shipped with the package (`model.sample_images`)
# -> (normalised (N, 3, S, S) real images, where they come from): called only when measuring
Samples = Callable[[], tuple[torch.Tensor, str]]


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


@dataclass(frozen=True)
class RuntimeChoice:
    """What auto serves (`runtime`, `precision`), every candidate's figures, and what it measured on:
    `images` real images from `source` (`gallery` or `SHIPPED`). A choice made on the shipped photos is
    measured again on gallery images once there are some. `reused_from`: the version of the same
    architecture whose measured speeds this choice reuses (None: measured for this model); the
    candidates checked on this model then carry this model's min cosine."""

    runtime: str
    precision: str
    measurements: tuple[Measurement, ...]
    images: int
    source: str
    reused_from: str | None = None

    @property
    def name(self) -> str:
        """The runtime chosen, and its precision unless fp32 (as `Measurement.name`)."""
        return self.runtime if self.precision == "fp32" else f"{self.runtime}-{self.precision}"

    def why(self) -> str:
        """One sentence: why this candidate and not the others."""
        chosen = next(m for m in self.measurements
                      if (m.runtime, m.precision) == (self.runtime, self.precision))
        others = []
        for m in self.measurements:
            if m is chosen:
                continue
            verdict = "slower" if m.agrees else f"disagrees with torch fp32 (min cosine < {MIN_COSINE})"
            others.append(f"{m.name} {m.images_per_s:.1f} img/s, {verdict}")
        verb = "the fastest candidate that agrees" if chosen.agrees else "the fastest at the precision asked"
        speeds = f" for model {self.reused_from} of the same architecture" if self.reused_from else ""
        return (f"{chosen.name}: {verb} ({chosen.images_per_s:.1f} img/s at batch {MEASURE_BATCH} measured"
                f"{speeds}, min cosine {chosen.min_cosine:.5f} over {self.images} {self.source} images)"
                + (f"; {'; '.join(others)}" if others else ""))

    def to_dict(self) -> dict:
        """JSON-ready: the choice, `why`, and each candidate's figures."""
        return {"runtime": self.runtime, "precision": self.precision, "images": self.images,
                "source": self.source, "reused_from": self.reused_from, "why": self.why(),
                "measurements": [{**asdict(m), "agrees": m.agrees} for m in self.measurements]}


def timing_batch(samples: torch.Tensor, size: int = MEASURE_BATCH) -> torch.Tensor:
    """`size` images of `samples`, repeated in turn when there are fewer."""
    return samples[torch.arange(size) % len(samples)]


def cpu_fields() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (`model name`, `flags`, ...); empty where absent."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def architecture_key(config: CGDConfig) -> str:
    """A short hash of what sets a model's inference cost: backbone, descriptors, dimension, input size
    and scales; not the weights, the classes, the search defaults or a learned whitening (one d x d
    product, small beside the backbone), which fine-tuning changes."""
    text = "|".join(str(part) for part in (config.backbone, config.descriptors, config.embedding_dim,
                                           config.image_size, config.scales))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cpu_key(device: torch.device, threads: int) -> str:
    """A short hash naming this processor (model and flags), device and thread count."""
    fields = cpu_fields()
    text = f"{fields.get('model name', platform.processor())}|{fields.get('flags', '')}|{device}|{threads}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def measure(engines: dict[Candidate, Engine], images: torch.Tensor, reference: np.ndarray,
            rounds: int = ROUNDS) -> list[Measurement]:
    """Each engine's min cosine to `reference` (torch fp32's vectors of `images`), then its speed on a
    `timing_batch` of them, timed in alternating rounds (the agreement run warms it up)."""
    batch = timing_batch(images)
    best = {candidate: float("inf") for candidate in engines}
    cosine = {}
    for candidate, engine in engines.items():
        cosine[candidate] = float((engine.run(images) * reference).sum(axis=1).min())
        engine.run(batch)  # warm-up at the timed batch size
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
                  cache_dir: Path, threads: int | None, samples: Samples) -> tuple[Engine, RuntimeChoice]:
    """The fastest agreeing engine among the `candidates` here, and the choice with its figures: the one
    cached for `version`, else the architecture's last measured choice checked on this model, else
    measured (and then kept as the architecture's choice)."""
    threads = threads or torch.get_num_threads()
    target = _Target(model, version, device, precision, cache_dir, threads)
    choice_file = choice_path(cache_dir, version, device, threads, precision)
    cached = _read_choice(choice_file)
    sampled = None
    if cached is not None and cached.source == SHIPPED:  # the gallery may have images now: measure on those
        sampled = samples()
        if sampled[1] != SHIPPED:
            cached = None
    if cached is not None:
        try:
            return target.build((cached.runtime, cached.precision)), cached
        except (RuntimeUnavailable, ExportError, OSError) as exc:
            LOG.warning("cached runtime choice %s cannot be used (%s): measuring again", cached.runtime, exc)
    reference_engine = TorchEngine(model, device, "fp32")
    images, source = sampled or samples()
    images = images[:MAX_SAMPLES]
    reference = reference_engine.run(images)
    found = _reuse(target, reference_engine, images, reference, source)
    if found is None:
        found = _measure_candidates(target, reference_engine, images, reference, source)
        _write_json(architecture_path(cache_dir, model.config, device, threads, precision),
                    {"format": CHOICE_FORMAT, "version": version})
    engine, choice = found
    LOG.info("runtime %s chosen for model %s: %s", choice.name, version, choice.why())
    _write_choice(choice_file, choice)
    return engine, choice


def choice_path(cache_dir: Path, version: str, device: torch.device, threads: int | None,
                precision: str) -> Path:
    """Where the choice for this model version, machine, thread count and asked precision is cached."""
    threads = threads or torch.get_num_threads()
    return cache_dir / f"{version}.{cpu_key(device, threads)}.{precision}.runtime.json"


def architecture_path(cache_dir: Path, config: CGDConfig, device: torch.device, threads: int,
                      precision: str) -> Path:
    """Where the version whose measured choice serves this architecture, machine, thread count and asked
    precision is named."""
    return cache_dir / f"architecture-{architecture_key(config)}.{cpu_key(device, threads)}.{precision}.json"


def read_choice(cache_dir: Path, version: str, device: torch.device, threads: int | None,
                precision: str) -> RuntimeChoice | None:
    """The cached choice of `select_engine` for these arguments on this machine, or None."""
    return _read_choice(choice_path(cache_dir, version, device, threads, precision))


@dataclass(frozen=True)
class _Target:
    """The model to serve, and where: what building its engines takes."""

    model: CGD
    version: str
    device: torch.device
    precision: str  # as asked: auto, fp32, or a reduced precision by name
    cache_dir: Path
    threads: int

    @property
    def strict(self) -> bool:
        """Only a candidate that agrees with torch fp32 may serve (a reduced precision asked for by name
        is served even if it does not reach MIN_COSINE; it is logged)."""
        return self.precision in ("auto", "fp32")

    def build(self, candidate: Candidate) -> Engine:
        name, precision = candidate
        check_runtime(name, self.device, precision)
        onnx_file = None if name == "torch" else ensure_onnx(self.model, self.version, self.cache_dir)
        return create_engine(name, self.model, self.device, precision=precision, onnx_file=onnx_file,
                             threads=self.threads)


def _reuse(target: _Target, reference_engine: TorchEngine, images: torch.Tensor, reference: np.ndarray,
           source: str) -> tuple[Engine, RuntimeChoice] | None:
    """The choice last measured here for the target's architecture (another version), checked on this
    model: its candidates that agreed there, fastest first, until one agrees here; None without one."""
    pointer = _read_json(architecture_path(target.cache_dir, target.model.config, target.device,
                                           target.threads, target.precision))
    measured_version = pointer.get("version") if pointer is not None else None
    if not isinstance(measured_version, str) or measured_version == target.version:
        return None
    measured = read_choice(target.cache_dir, measured_version, target.device, target.threads,
                           target.precision)
    if measured is None:
        return None
    available = set(candidates(target.device, target.precision))
    ranked = sorted((m for m in measured.measurements
                     if (m.runtime, m.precision) in available and (m.agrees or not target.strict)),
                    key=lambda m: m.images_per_s, reverse=True)
    cosines: dict[Candidate, float] = {}
    for figures in ranked:
        candidate = (figures.runtime, figures.precision)
        try:
            engine = reference_engine if candidate == ("torch", "fp32") else target.build(candidate)
        except (RuntimeUnavailable, ExportError) as exc:
            LOG.info("runtime %s of model %s's choice cannot be built: %s", figures.name, measured_version,
                     exc)
            continue
        cosines[candidate] = float((engine.run(images) * reference).sum(axis=1).min())
        if cosines[candidate] >= MIN_COSINE or not target.strict:
            checked = tuple(replace(m, min_cosine=cosines.get((m.runtime, m.precision), m.min_cosine))
                            for m in measured.measurements)
            return engine, RuntimeChoice(*candidate, checked, len(images), source, measured_version)
        LOG.info("runtime %s disagrees with torch fp32 on model %s (min cosine %.5f)", figures.name,
                 target.version, cosines[candidate])
    return None


def _measure_candidates(target: _Target, reference_engine: TorchEngine, images: torch.Tensor,
                        reference: np.ndarray, source: str) -> tuple[Engine, RuntimeChoice]:
    """Every candidate built and `measure`d; the fastest that agrees (or the fastest, not `strict`)."""
    engines: dict[Candidate, Engine] = {}
    for candidate in candidates(target.device, target.precision):
        try:
            engines[candidate] = (reference_engine if candidate == ("torch", "fp32")
                                  else target.build(candidate))
        except (RuntimeUnavailable, ExportError) as exc:
            LOG.info("runtime %s at %s is not a candidate: %s", *candidate, exc)
    if not engines:
        raise RuntimeUnavailable(f"no runtime installed here runs precision {target.precision!r} on "
                                 f"{target.device.type}")
    measurements = measure(engines, images, reference)
    chosen = choose(measurements) if target.strict else max(measurements, key=lambda m: m.images_per_s)
    choice = RuntimeChoice(chosen.runtime, chosen.precision, tuple(measurements), len(images), source)
    return engines[(chosen.runtime, chosen.precision)], choice


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == CHOICE_FORMAT else None


def _read_choice(path: Path) -> RuntimeChoice | None:
    data = _read_json(path)
    try:
        return None if data is None else RuntimeChoice(
            data["runtime"], data["precision"], tuple(Measurement(**m) for m in data["measurements"]),
            data["images"], data["source"], data.get("reused_from"))
    except (KeyError, TypeError):
        return None


def _write_choice(path: Path, choice: RuntimeChoice) -> None:
    _write_json(path, {"format": CHOICE_FORMAT, "runtime": choice.runtime, "precision": choice.precision,
                       "images": choice.images, "source": choice.source, "reused_from": choice.reused_from,
                       "measurements": [asdict(m) for m in choice.measurements]})


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, path)
