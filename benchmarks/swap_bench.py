"""Latency while the gallery is re-embedded (promotion and activation), and re-embedding speed against raw.

Starts `cgd serve` (the embedded default model) on 127.0.0.1 with a temporary data directory in which
two variants of the default model (weights perturbed by 1e-3, so other versions with other vectors)
are registered, ingests `--images` real images (cycling over `--image-root`'s class folders when it
has fewer), then measures, in this order:

1. idle: `/search` at concurrency 4 and `/health` probes (one at a time, every `--probe-ms`);
2. activation under traffic (unless `--no-activation-load`): `POST /models/{variant A}/activate`, with
   the same search and health load until its job (`GET /models/activations/{id}`) ends;
3. activation without traffic: `POST /models/{variant B}/activate` alone: re-embedding images/s;
4. promotion (unless `--no-train`): `POST /train` with `promote=always` and a tiny budget, from variant
   B, whose projection heads are moved (`--start-head-noise`) so that the job beats it and writes a new
   version; the search and health load runs while the job's phase is `re-embedding`.

Each loaded window is split into stages (loading the model, re-embedding, index build and switch) at the
job's first and last re-embedded image.

"raw" is the in-process decode + preprocess + batched model of `service_bench.RawPipeline` on all
cores (`--raw-runtime`: the runtime the server chose for variant B), measured before and after the HTTP
phases. Pass: /health p99 < 50 ms over >= 1,000 probes and /search p99 < 3x idle in phases 2 and 4, each
having re-embedded the whole gallery; re-embedding >= 0.8x raw on the same runtime in phase 3.

    nice -n 10 .venv/bin/python benchmarks/swap_bench.py --images 10000 --out /tmp/swap_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service_bench import (
    DEFAULT_IMAGES,
    HOST,
    ImageBytes,
    RawPipeline,
    cpu_model,
    encode,
    free_port,
    ingest,
    load_average,
    read_images,
    start_server,
    wait_ready,
)

from model.checkpoint import save_checkpoint
from model.config import CGDConfig
from model.default import DEFAULT_CONFIG, default_model
from service.model_registry import ModelRegistry
from service.settings import Settings

SEARCH_CONCURRENCY = 4
SWAP_LOG = ("loaded on", "is live (", "chosen for model", "built index")  # server log lines kept
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags() -> list[str]:
    with open("/proc/cpuinfo") as handle:
        line = next((line for line in handle if line.startswith("flags")), "flags:")
    present = set(line.split(":", 1)[1].split())
    return [flag for flag in CPU_FLAGS if flag in present]


def model_config(image_size: int) -> CGDConfig:
    """The default model's configuration at input size `image_size`."""
    return DEFAULT_CONFIG.with_changes(preprocessing=replace(DEFAULT_CONFIG.preprocessing,
                                                             image_size=image_size))


def base_checkpoint(path: Path, image_size: int) -> Path:
    """The embedded default model at input size `image_size`: what the server starts with."""
    save_checkpoint(path, default_model(model_config(image_size)), metrics={"base": image_size})
    return path


def variant_checkpoint(path: Path, seed: int, image_size: int, head_noise: float = 0.0) -> Path:
    """The default model with every weight moved by N(0, 1e-3): another version, sensible vectors; with
    `head_noise`, its projection heads also moved by N(0, head_noise x their std) (worse vectors, the same
    work per image)."""
    model = default_model(model_config(image_size))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 1e-3)
        for parameter in model.projections.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * head_noise * parameter.std())
    save_checkpoint(path, model, metrics={"variant": seed})
    return path


def gallery_images(root: Path, count: int, queries: int) -> tuple[list[ImageBytes], list[ImageBytes]]:
    """`count` gallery images (files re-used in turn when the folder has fewer) and `queries` others."""
    available = sum(1 for folder in root.iterdir() if folder.is_dir() for _ in folder.iterdir())
    distinct = read_images(root, min(available, count + queries))
    query_images, pool = distinct[:queries], distinct[queries:]
    return [pool[i % len(pool)] for i in range(count)], query_images


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else float("nan")


class Marks:
    """When a swap's stages began (perf_counter), as its job's status showed them: the first vector
    re-embedded, the last one."""

    def __init__(self) -> None:
        self.reembedding: float | None = None
        self.reembedded: float | None = None

    def see(self, done: int | None, total: int | None) -> None:
        now = time.perf_counter()
        if done and self.reembedding is None:
            self.reembedding = now
        if done and total and done >= total and self.reembedded is None:
            self.reembedded = now


class Load:
    """Search clients at concurrency 4 and a sequential /health prober, until `stop` is set."""

    def __init__(self, client: httpx.AsyncClient, queries: list[ImageBytes], probe_ms: float) -> None:
        self.client, self.probe_s = client, probe_ms / 1000
        self.bodies = [encode("/search", image) for image in queries]
        self.search_ms: list[float] = []
        self.search_sent: list[float] = []  # perf_counter when each of search_ms was sent
        self.health_ms: list[float] = []
        self.errors: Counter[str] = Counter()
        self.stop = asyncio.Event()
        self.marks = Marks()

    async def _timed(self, kind: str, call: Callable[[], Awaitable[httpx.Response]],
                     into: list[float], sent: list[float] | None = None) -> None:
        began = time.perf_counter()
        try:
            response = await call()
            failure = None if response.status_code == 200 else str(response.status_code)
        except httpx.HTTPError as exc:
            failure = type(exc).__name__
        if failure is None:
            into.append(1000 * (time.perf_counter() - began))
            if sent is not None:
                sent.append(began)
        else:
            self.errors[f"{kind} {failure}"] += 1

    def stages(self, started: float) -> dict:
        """/search p50 / p99 in the window's stages, split by the swap's `marks`: loading the model
        (until the first vector is re-embedded), re-embedding, and indexing plus the switch."""
        bounds = [("load", started, self.marks.reembedding), ("reembed", self.marks.reembedding,
                  self.marks.reembedded), ("index_switch", self.marks.reembedded, None)]
        stages = {}
        for name, begin, end in bounds:
            if begin is None:
                continue
            picked = [ms for ms, at in zip(self.search_ms, self.search_sent, strict=True)
                      if at >= begin and (end is None or at < end)]
            stages[name] = {"seconds": round((end or time.perf_counter()) - begin, 1),
                            "searches": len(picked), "search_p50_ms": percentile(picked, 50),
                            "search_p99_ms": percentile(picked, 99),
                            "search_max_ms": round(max(picked, default=float("nan")), 1)}
        return stages

    async def _search(self, worker: int) -> None:
        sent = worker
        while not self.stop.is_set():
            body, headers = self.bodies[sent % len(self.bodies)]
            sent += SEARCH_CONCURRENCY
            def post(b: bytes = body, h: dict = headers) -> Awaitable[httpx.Response]:
                return self.client.post("/search", content=b, headers=h)

            await self._timed("search", post, self.search_ms, self.search_sent)

    async def _health(self) -> None:
        while not self.stop.is_set():
            await self._timed("health", lambda: self.client.get("/health"), self.health_ms)
            await asyncio.sleep(self.probe_s)

    async def run(self, until: Awaitable[dict | None], search: bool = True) -> dict:
        """Run the load until `until` completes; its result and the latency figures."""
        tasks = [asyncio.create_task(self._health())]
        if search:
            tasks += [asyncio.create_task(self._search(w)) for w in range(SEARCH_CONCURRENCY)]
        started = time.perf_counter()
        try:
            result = await until or {}
        finally:
            self.stop.set()
            await asyncio.gather(*tasks)
        stages = self.stages(started) if self.marks.reembedding is not None and search else {}
        return {**result, "seconds": round(time.perf_counter() - started, 1), "load1": load_average(),
                "health_probes": len(self.health_ms), "health_p50_ms": percentile(self.health_ms, 50),
                "health_p99_ms": percentile(self.health_ms, 99),
                "health_max_ms": round(max(self.health_ms, default=float("nan")), 1),
                "searches": len(self.search_ms), "search_p50_ms": percentile(self.search_ms, 50),
                "search_p99_ms": percentile(self.search_ms, 99), "errors": dict(self.errors),
                **({"stages": stages} if stages else {})}


async def wait_for(client: httpx.AsyncClient, url: str, done: Callable[[dict], bool],
                   poll_s: float = 0.5) -> dict:
    while True:
        body = (await client.get(url)).json()
        if done(body):
            return body
        await asyncio.sleep(poll_s)


def followed(marks: Marks, done: Callable[[dict], bool],
             progress: Callable[[dict], dict]) -> Callable[[dict], bool]:
    """`done`, noting in `marks` the re-embedding progress (`reembedded`, `to_reembed`) of each status."""
    def check(job: dict) -> bool:
        seen = progress(job)
        marks.see(seen.get("reembedded"), seen.get("to_reembed"))
        return done(job)

    return check


async def activation(client: httpx.AsyncClient, version: str, marks: Marks) -> dict:
    """Activate `version` and wait for its job: its final state and re-embedding images/s."""
    accepted = await client.post(f"/models/{version}/activate")
    if accepted.status_code != 202:
        raise SystemExit(f"activate {version}: {accepted.status_code} {accepted.text}")
    job_id = accepted.json()["job_id"]
    job = await wait_for(client, f"/models/activations/{job_id}",
                         followed(marks, lambda j: j["status"] != "running", lambda j: j))
    if job["status"] != "succeeded":
        raise SystemExit(f"activation of {version} ended {job['status']}: {job['error']}")
    return {"version": version, "reembedded": job["reembedded"], "swap_seconds": job["seconds"],
            "reembed_images_per_s": round(job["reembedded"] / job["seconds"], 1) if job["seconds"] else None}


async def promotion(client: httpx.AsyncClient, max_minutes: float,
                    image_size: int) -> tuple[str, Callable[[Marks], Awaitable[dict]]]:
    """Start a promote=always job; wait until it re-embeds; (job id, a coroutine function awaiting its end
    that notes its progress in the `Marks` given)."""
    body = {"promote": "always", "max_minutes": max_minutes, "epochs": 1, "image_size": image_size}
    started = await client.post("/train", json=body)
    if started.status_code != 202:
        raise SystemExit(f"POST /train: {started.status_code} {started.text}")
    job_id = started.json()["job_id"]
    ended = ("succeeded", "failed", "cancelled")
    await wait_for(client, f"/train/{job_id}", lambda j: j["status"] in ended
                   or (j["progress"] or {}).get("phase") == "re-embedding")

    async def finished(marks: Marks) -> dict:
        job = await wait_for(client, f"/train/{job_id}", followed(marks, lambda j: j["status"] in ended,
                                                                  lambda j: j["progress"] or {}))
        progress = job["progress"] or {}
        return {"status": job["status"], "reembedded": progress.get("reembedded"),
                "reembedding_seconds": job["reembedding_seconds"], "error": job["error"],
                "search_defaults": (job.get("recipe") or {}).get("search_defaults")}

    return job_id, finished


async def idle(client: httpx.AsyncClient, queries: list[ImageBytes], args: argparse.Namespace) -> dict:
    load = Load(client, queries, args.probe_ms)
    return await load.run(asyncio.sleep(args.idle_seconds))


async def run_http(url: str, gallery: list[ImageBytes], queries: list[ImageBytes], variants: list[str],
                   args: argparse.Namespace) -> dict:
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as client:
        results: dict = {"ingest": await ingest(client, gallery)}
        await Load(client, queries, args.probe_ms).run(asyncio.sleep(3))  # warm-up
        results["idle"] = await idle(client, queries, args)
        print(f"idle: {results['idle']}", file=sys.stderr, flush=True)
        if not args.no_activation_load:
            load = Load(client, queries, args.probe_ms)
            results["activate_under_load"] = await load.run(activation(client, variants[0], load.marks))
            print(f"activation under load: {results['activate_under_load']}", file=sys.stderr, flush=True)
        load = Load(client, queries, args.probe_ms)
        results["activate_alone"] = await load.run(activation(client, variants[1], load.marks), search=False)
        print(f"activation alone: {results['activate_alone']}", file=sys.stderr, flush=True)
        if not args.no_train:
            _, finished = await promotion(client, args.train_minutes, args.image_size)
            load = Load(client, queries, args.probe_ms)
            results["promotion_under_load"] = await load.run(finished(load.marks))
            print(f"promotion under load: {results['promotion_under_load']}", file=sys.stderr, flush=True)
    return results


def served_runtimes(log_lines: list[str]) -> dict[str, str]:
    """The runtime the server chose for each model version, from its log."""
    found = (re.search(r"runtime (\S+) chosen for model (\S+):", line) for line in log_lines)
    return {match.group(2): match.group(1) for match in found if match}


def verdict(results: dict, raw: dict, images: int) -> dict:
    idle_p99 = results["idle"]["search_p99_ms"]
    checks = {}
    for phase in ("activate_under_load", "promotion_under_load"):
        if phase in results:
            figures = results[phase]
            if figures["reembedded"] != images:  # e.g. a training job that wrote its start model again
                checks[f"{phase}: re-embedded {figures['reembedded']} of {images} images"] = False
                continue
            checks[f"{phase}: health p99 < 50 ms over >= 1000 probes"] = (
                figures["health_p99_ms"] < 50 and figures["health_probes"] >= 1000)
            checks[f"{phase}: search p99 < 3x idle ({idle_p99} ms)"] = figures["search_p99_ms"] < 3 * idle_p99
    alone = results["activate_alone"]
    runtime = results["runtimes"].get(alone["version"])
    checks[f"re-embedding {alone['reembed_images_per_s']} images/s on {runtime} >= 0.8x raw "
           f"{raw['images_per_s']} on {raw['runtime']}"] = (
        runtime == raw["runtime"] and alone["reembed_images_per_s"] >= 0.8 * raw["images_per_s"])
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="gallery images (files re-used if fewer)")
    parser.add_argument("--queries", type=int, default=64, help="other images used as search requests")
    parser.add_argument("--image-root", type=Path, default=DEFAULT_IMAGES, help="class folders of images")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="length of the idle measurement")
    parser.add_argument("--probe-ms", type=float, default=10.0, help="pause between two /health probes")
    parser.add_argument("--raw-seconds", type=float, default=20.0, help="length of each raw measurement")
    parser.add_argument("--train-minutes", type=float, default=0.5, help="budget of the promotion's training")
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="seconds for the server to start")
    parser.add_argument("--image-size", type=int, default=DEFAULT_CONFIG.image_size,
                        help="input size in px of the served model, both variants and the promotion's job")
    parser.add_argument("--no-train", action="store_true", help="skip the promotion phase")
    parser.add_argument("--no-activation-load", action="store_true", help="skip the activation under load")
    parser.add_argument("--raw-runtime", default=None,
                        help="runtime of the raw pipeline (default: CGD_RUNTIME's); to compare with, the one "
                        "the server chose for the re-embedding model")
    parser.add_argument("--start-head-noise", type=float, default=0.5,
                        help="the promotion's start model (the second variant) has its projection heads "
                        "moved by N(0, this x their std), so that its short training beats it and writes a "
                        "new version (a job whose epochs do not beat the start writes the start's weights)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    gallery, queries = gallery_images(args.image_root, args.images, args.queries)
    with tempfile.TemporaryDirectory(prefix="cgd-swap-bench-") as tmp:
        base = base_checkpoint(Path(tmp) / "base.pt", args.image_size)
        os.environ["CGD_CHECKPOINT"] = str(base)  # the server's first model (CGD_* reach the server)
        settings = Settings()
        machine = {"cpu": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count(),
                   "load1_start": load_average(), "image_size": args.image_size,
                   "settings": {k: v for k, v in sorted(os.environ.items())
                                if k.startswith("CGD_") and k != "CGD_CHECKPOINT"}}
        print(f"machine {machine}", file=sys.stderr, flush=True)
        raw = RawPipeline(queries, settings, checkpoint=base, engine_dir=Path(tmp) / "raw-engines",
                          runtime=args.raw_runtime)
        raws = [raw.measure(args.raw_seconds)]
        data = Path(tmp) / "data"
        data.mkdir()
        registry = ModelRegistry(data)
        variants = [registry.add_checkpoint(variant_checkpoint(Path(tmp) / f"v{seed}.pt", seed,
                                                               args.image_size, head_noise)).version
                    for seed, head_noise in ((1, 0.0), (2, args.start_head_noise))]
        port = free_port()
        url = f"http://{HOST}:{port}"
        log = Path(tmp) / "server.log"
        server = start_server(data, port, log)
        try:
            wait_ready(url, server, log, timeout_s=args.ready_timeout)
            results = asyncio.run(run_http(url, gallery, queries, variants, args))
        finally:
            server.terminate()
            server.wait(timeout=120)
        results["server_log"] = [line for line in log.read_text(errors="replace").splitlines()
                                 if any(part in line for part in SWAP_LOG)]
        results["runtimes"] = served_runtimes(results["server_log"])
        raws.append(raw.measure(args.raw_seconds))
    machine["load1_end"] = load_average()
    raw_images_per_s = round(statistics.mean(r["images_per_s"] for r in raws), 1)
    raw_figures = {"images_per_s": raw_images_per_s, "runtime": raw.embedder.runtime}
    checks = verdict(results, raw_figures, args.images)
    report = {"machine": machine, "command": " ".join(sys.argv), "raw": raws,
              "raw_runtime": raw_figures["runtime"], "raw_images_per_s": raw_images_per_s, **results,
              "checks": checks}
    print(json.dumps(report, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
