"""Fine-tuning through the service, as a user does it: `cgd serve`, `cgd ingest` of a labelled
folder's train split, `POST /train` with its defaults, then the served model on the test split.

Reports the job (validation metrics of the old and the new model, promotion, training and
re-embedding times), the re-embedding speed against the raw pipeline (decode + preprocess + batched
model in one process, same runtime, on the same images, measured after the server stopped), and
`cgd eval` on the test split (classes never seen in training) of the embedded default and of the
model the job promoted, all in the same run.

Search while a job trains: `/search` at concurrency 4 (test-split images) and `/health` probes for
`--probe-seconds` before the job (idle) and again once the job is in its training phase (the same
load as `swap_bench.Load`); the job's figures include that window. Pass: p99 during training < 3x idle.

    nice -n 10 .venv/bin/python benchmarks/service_train_bench.py --data ../shared/data/gtsrb32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from local_service import free_port, wait_ready
from service_bench import ImageBytes, RawPipeline
from swap_bench import Load

from model.data import load_dataset
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
LOG = logging.getLogger("service_train_bench")
FINISHED = {"succeeded", "failed", "cancelled"}
RAW_SECONDS = 30.0


def cgd(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", *args]


def follow_job(client: httpx.Client, job_id: str, timeout_s: float) -> dict:
    """Poll `GET /train/{job_id}` until it ends; logs the progress once a minute."""
    deadline = time.monotonic() + timeout_s
    last_log = 0.0
    while time.monotonic() < deadline:
        job = client.get(f"/train/{job_id}").json()
        if job["status"] in FINISHED:
            return job
        if time.monotonic() - last_log > 60:
            LOG.info("job %s: %s %s", job_id, job["status"], job["progress"])
            last_log = time.monotonic()
        time.sleep(2.0)
    raise TimeoutError(f"job {job_id} did not finish in {timeout_s:.0f} s")


def search_latency(url: str, queries: list[ImageBytes], seconds: float) -> dict:
    """`/search` at concurrency 4 and `/health` probes for `seconds`: swap_bench's load and figures."""
    async def measure() -> dict:
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0, trust_env=False) as client:
            await Load(client, queries, probe_ms=20.0).run(asyncio.sleep(2.0))  # warm-up
            return await Load(client, queries, probe_ms=20.0).run(asyncio.sleep(seconds))
    return asyncio.run(measure())


def wait_for_training(client: httpx.Client, job_id: str, min_step: int, timeout_s: float) -> dict:
    """Poll the job until its training phase has run `min_step` steps (or it ended)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/train/{job_id}").json()
        progress = job["progress"] or {}
        if job["status"] in FINISHED or (progress.get("phase") == "training"
                                         and progress.get("step", 0) >= min_step):
            return job
        time.sleep(1.0)
    raise TimeoutError(f"job {job_id} did not reach its training phase in {timeout_s:.0f} s")


def evaluate(data: Path, split: str, checkpoint: Path | None) -> tuple[dict, float]:
    """`cgd eval --json` on a split; returns the metrics and the wall time."""
    began = time.perf_counter()
    done = subprocess.run(cgd("eval", "--data", str(data), "--split", split, "--json",
                              *(("--checkpoint", str(checkpoint)) if checkpoint else ())),
                          cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), round(time.perf_counter() - began, 1)


def reembedding_against_raw(job: dict, data: Path, checkpoint: Path, engine_dir: Path) -> dict:
    """The job's re-embedding images/s against the raw pipeline (decode + preprocess + batched model,
    same runtime and settings as the service, no HTTP) on the gallery's own images, measured now."""
    progress = job["progress"] or {}
    done, seconds = progress.get("to_reembed"), job["reembedding_seconds"]
    service = round(done / seconds, 1) if done and seconds else None
    images = [ImageBytes(item.path.name, item.label, item.path.read_bytes())
              for item in load_dataset(data, "train")]
    raw = RawPipeline(images, Settings(), checkpoint, engine_dir=engine_dir)
    measured = raw.measure(RAW_SECONDS)
    return {"images": done, "seconds": seconds, "service_images_per_s": service,
            "raw": {**raw.describe(), **measured},
            "ratio_to_raw": round(service / measured["images_per_s"], 2) if service else None}


def run(args: argparse.Namespace, data_dir: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CGD_TRAIN_THREADS": str(args.train_threads)}
    log = (data_dir / "service.log").open("wb")
    server = subprocess.Popen(cgd("serve", "--port", str(port), "--data-dir", str(data_dir / "data")),
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    record: dict = {"data": args.data.name, "train_threads": args.train_threads,
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_start": os.getloadavg()}
    try:
        with httpx.Client(base_url=url, timeout=120.0, trust_env=False) as client:
            wait_ready(client, server)
            began = time.perf_counter()
            subprocess.run(cgd("ingest", str(args.data), "--split", "train", "--url", url),
                           cwd=REPO, check=True)
            record["ingest_s"] = round(time.perf_counter() - began, 1)
            record["gallery_items"] = client.get("/ready").json()["store"]["items"]
            queries = [ImageBytes(item.path.name, item.label, item.path.read_bytes())
                       for item in load_dataset(args.data, "test")[:64]] if args.probe_seconds else []
            if queries:
                record["search_idle"] = search_latency(url, queries, args.probe_seconds)
            began = time.perf_counter()
            accepted = client.post("/train", json=args.request)
            accepted.raise_for_status()
            job_id = accepted.json()["job_id"]
            if queries:
                wait_for_training(client, job_id, min_step=5, timeout_s=args.timeout_minutes * 60)
                record["search_during_training"] = search_latency(url, queries, args.probe_seconds)
            job = follow_job(client, job_id, args.timeout_minutes * 60)
            record["job_wall_s"] = round(time.perf_counter() - began, 1)
            record["job"] = {key: job[key] for key in (
                "status", "params", "baseline_metrics", "new_metrics", "promoted", "model_version",
                "message", "error", "training_seconds", "reembedding_seconds", "recipe", "progress")}
            record["serving"] = client.get("/ready").json()["model_version"]
    finally:
        server.terminate()
        server.wait(timeout=120)
        log.close()
    if job["status"] != "succeeded":
        raise RuntimeError(f"the training job ended {job['status']}: {job['error']}")
    checkpoint = data_dir / "data" / "models" / f"{job['model_version']}.pt"
    record["reembedding"] = reembedding_against_raw(job, args.data, checkpoint, data_dir / "data" / "engines")
    record["test_default"], record["eval_default_s"] = evaluate(args.data, "test", checkpoint=None)
    record["test_trained"], record["eval_trained_s"] = evaluate(args.data, "test", checkpoint)
    record["load_end"] = os.getloadavg()
    return record


def markdown(record: dict) -> str:
    job = record["job"]

    def pct(metrics: dict | None, key: str) -> str:
        return "-" if not metrics else f"{100 * metrics[key]:.1f}"

    rows = [
        "| model | val R@1 | val MAP@R | test R@1 | test MAP@R |",
        "| --- | --- | --- | --- | --- |",
        f"| embedded default | {pct(job['baseline_metrics'], 'recall@1')} | "
        f"{pct(job['baseline_metrics'], 'map@r')} | {pct(record['test_default'], 'recall@1')} | "
        f"{pct(record['test_default'], 'map@r')} |",
        f"| after `POST /train` ({'promoted' if job['promoted'] else 'not promoted'}) | "
        f"{pct(job['new_metrics'], 'recall@1')} | {pct(job['new_metrics'], 'map@r')} | "
        f"{pct(record['test_trained'], 'recall@1')} | {pct(record['test_trained'], 'map@r')} |",
    ]
    reembedding = record["reembedding"]
    rows.append(f"\nre-embedding: {reembedding['images']} images in {reembedding['seconds']} s, "
                f"{reembedding['service_images_per_s']} images/s = {reembedding['ratio_to_raw']}x the raw "
                f"pipeline's {reembedding['raw']['images_per_s']} ({reembedding['raw']['runtime']})")
    if "search_during_training" in record:
        idle, busy = record["search_idle"], record["search_during_training"]
        ratio = busy["search_p99_ms"] / idle["search_p99_ms"]
        rows.append(f"/search at concurrency 4: p50 / p99 {idle['search_p50_ms']} / {idle['search_p99_ms']} "
                    f"ms idle, {busy['search_p50_ms']} / {busy['search_p99_ms']} ms while training "
                    f"({ratio:.2f}x idle p99; errors {busy['errors'] or 'none'}); /health p99 "
                    f"{idle['health_p99_ms']} / {busy['health_p99_ms']} ms")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "gtsrb32",
                        help="a folder with labels.csv (train and test splits)")
    parser.add_argument("--request", type=json.loads, default={},
                        help='the POST /train body as JSON (default {}: every default)')
    parser.add_argument("--train-threads", type=int, default=0, help="CGD_TRAIN_THREADS of the service")
    parser.add_argument("--probe-seconds", type=float, default=60.0,
                        help="search-latency window idle and during training (0: none)")
    parser.add_argument("--timeout-minutes", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=None, help="write the record as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="cgd-train-bench-") as tmp:
        record = run(args, Path(tmp))
    text = json.dumps(record, indent=1)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text + "\n\n" + markdown(record) + "\n")


if __name__ == "__main__":
    main()
