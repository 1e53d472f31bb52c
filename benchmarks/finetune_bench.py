"""Fine-tuning benchmark: the embedded default, `cgd train` with its defaults (the same recipe as
`POST /train`) and the throughput of the previous default recipe (the full engine), on each
development set, all in one run on one machine.

For each set: `cgd eval` of the embedded default on the test split; `cgd train` on the train split
with the default 15-minute budget; `cgd eval` of the result; then `cgd train --engine full` (the
previous recipe: every step decodes and back-propagates through the whole network, at the previous
automatic image size) for a short budget, to compare optimiser steps and training images per
second. Prints one JSON record per set (CPU model and flags, load averages, wall times).

With `--previous-checkout DIR` the baseline is instead an older commit's own `cgd train` with its own
defaults (`git worktree add --detach DIR <commit>`), run once per `--previous-threads` count for
`--previous-budget` minutes; its steps come from the curves file it writes.

    nice -n -10 .venv/bin/python benchmarks/finetune_bench.py --sets gtsrb32,caltech101
    nice -n -10 .venv/bin/python benchmarks/finetune_bench.py --sets caltech101 \
        --previous-checkout /tmp/cgd-d1dfc2f --previous-threads 1,2 --previous-budget 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu() -> dict:
    """The CPU model and the flags that decide bf16 and kernel speed."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    model = names[0] if names else "unknown"
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags]}


def cgd(*args: str, checkout: Path = REPO, threads: int | None = None) -> tuple[str, float]:
    """Run the CLI of `checkout` (on `threads` intra-op threads when given); its last stdout line and
    the wall time."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=checkout, env=env,
                          check=True, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1], time.perf_counter() - began


def evaluate(data: Path, checkpoint: Path | None = None) -> dict:
    args = ["eval", "--data", str(data), "--split", "test", "--json"]
    line, _ = cgd(*args, *(["--checkpoint", str(checkpoint)] if checkpoint else []))
    return {k: round(100 * v, 1) for k, v in json.loads(line).items()}


def train(data: Path, out: Path, *extra: str) -> dict:
    line, wall = cgd("train", "--data", str(data), "--out", str(out), "--no-progress", *extra)
    summary = json.loads(line)
    recipe = summary["recipe"]
    steps = recipe["steps"]
    return {"wall_s": round(wall, 1), "recipe": recipe, "kept_start_model": summary["kept_start_model"],
            "steps_per_min": round(60 * steps / wall, 1),
            "train_images_per_s": round(64 * steps / wall, 1),
            "validation": {"start": summary["validation_start_model"],
                           "trained": summary["validation_best_trained"]}}


def older_commit(data: Path, checkout: Path, out: Path, minutes: float, threads: int) -> dict:
    """An older commit's `cgd train` with its own defaults: steps (from its curves file) and speed."""
    _, wall = cgd("train", "--data", str(data), "--out", str(out), "--no-progress",
                  "--max-minutes", f"{minutes:g}", checkout=checkout, threads=threads)
    history = json.loads(out.with_suffix(".curves.json").read_text())["history"]
    steps = history[-1]["step"] if history else 0
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    return {"commit": head, "threads": threads, "wall_s": round(wall, 1), "steps": steps,
            "epochs": len(history), "steps_per_min": round(60 * steps / wall, 1),
            "train_images_per_s": round(64 * steps / wall, 1),
            "epoch_images_per_s": [row["images_per_s"] for row in history]}


def previous_image_size(data: Path) -> int:
    """The previous default: 3x the median shorter side, in [64, 224] (model.trainer.auto_image_size)."""
    from model.data import load_dataset
    from model.trainer import auto_image_size

    return auto_image_size(load_dataset(data, "train"), 224)


def bench(name: str, work: Path, budget: float, previous_budget: float, seed: int,
          checkout: Path | None = None, threads: tuple[int, ...] = ()) -> dict:
    data = DATA / name
    record: dict = {"set": name, "seed": seed, "cpu": cpu(),
                    "load_start": [round(x, 2) for x in os.getloadavg()],
                    "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    record["default_model_test"] = evaluate(data)
    out = work / f"{name}.pt"
    record["default_recipe"] = train(data, out, "--max-minutes", f"{budget:g}", "--seed", str(seed))
    record["default_recipe_test"] = evaluate(data, out)
    record["load_after_default_recipe"] = [round(x, 2) for x in os.getloadavg()]
    if previous_budget > 0 and checkout is not None:
        record["older_commit"] = [older_commit(data, checkout, work / f"{name}_older_{n}.pt",
                                               previous_budget, n) for n in threads]
    elif previous_budget > 0:
        size = previous_image_size(data)
        record["previous_recipe"] = train(data, work / f"{name}_previous.pt", "--engine", "full",
                                          "--image-size", str(size), "--whitening", "none",
                                          "--expansion", "none", "--lr", "1e-4",
                                          "--max-minutes", f"{previous_budget:g}")
        record["previous_recipe"]["image_size"] = size
    record["load_end"] = [round(x, 2) for x in os.getloadavg()]
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="gtsrb32,caltech101")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cgd-finetune-bench"))
    parser.add_argument("--budget", type=float, default=15.0, help="minutes of the default recipe")
    parser.add_argument("--previous-budget", type=float, default=3.0,
                        help="minutes of the previous recipe's throughput run (0: skip)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the default recipe's run")
    parser.add_argument("--previous-checkout", type=Path, default=None,
                        help="a checkout of an older commit: its own cgd train defaults are the baseline")
    parser.add_argument("--previous-threads", default="1",
                        help="comma-separated thread counts of the older commit's runs")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.sets.split(","):
        threads = tuple(int(n) for n in args.previous_threads.split(","))
        record = bench(name, args.work, args.budget, args.previous_budget, args.seed,
                       args.previous_checkout, threads)
        line = json.dumps(record)
        print(line, flush=True)
        with (args.work / "results.jsonl").open("a") as handle:
            handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
