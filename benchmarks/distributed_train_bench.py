"""Data-parallel training against one process: test R@1 and MAP@R of `cgd train` with
`--nproc-per-node 1` and `--nproc-per-node N`, the same data, recipe and number of steps, two seeds
each (issue: within 1 point of R@1). Prints one JSON document (also written to --out) with the
machine, the load average before and after, each run's figures and the mean difference.

    /work/notes/cpu bench .venv/bin/python benchmarks/distributed_train_bench.py \
        --data ../shared/data/gtsrb32 --epochs 8 --nproc 2 --seeds 0 1 --out /tmp/dist_bench.json

Fixed epochs and no time budget, so every run takes the same optimiser steps whatever its speed;
wall times are reported, not compared (on 2 cores, 2 processes share the cores 1 process had). Each
run also reports its recipe (stop reason, whitening, the promotion's MAP@R gain) and the validation
figures of the start model and of the kept weights: a run that kept the start model compares nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def cgd(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", *args]


def machine() -> dict:
    flags: set[str] = set()
    model = platform.processor()
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "flags": [f for f in wanted if f in flags]}


def run(data: Path, out: Path, nproc: int, seed: int, epochs: int, extra: list[str]) -> dict:
    began = time.perf_counter()
    command = cgd("train", "--data", str(data), "--out", str(out), "--nproc-per-node", str(nproc),
                  "--seed", str(seed), "--epochs", str(epochs), "--max-minutes", "0", "--device", "cpu",
                  "--no-progress", *extra)
    train = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - began
    summary = json.loads(train.stdout.strip().splitlines()[-1])
    evaluated = subprocess.run(cgd("eval", "--data", str(data), "--checkpoint", str(out), "--json"),
                               capture_output=True, text=True, check=True)
    test = json.loads(evaluated.stdout.strip().splitlines()[-1])
    return {"nproc": nproc, "seed": seed, "seconds": round(seconds, 1), "steps": summary["recipe"]["steps"],
            "kept_start_model": summary["kept_start_model"], "test": test, "recipe": summary["recipe"],
            "validation_start": summary["validation_start_model"],
            "validation_best": summary["validation_best_trained"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/distributed_train_bench"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train-args", default="", help="more `cgd train` options, space-separated")
    args = parser.parse_args()
    extra = args.train_args.split()
    report: dict = {"machine": machine(), "load_before": os.getloadavg(), "command": sys.argv, "runs": []}
    for nproc in (1, args.nproc):
        for seed in args.seeds:
            out = args.work / f"n{nproc}_s{seed}.pt"
            report["runs"].append(run(args.data, out, nproc, seed, args.epochs, extra))
            print(json.dumps(report["runs"][-1]), file=sys.stderr)
    report["load_after"] = os.getloadavg()

    def mean(nproc: int, key: str) -> float:
        return statistics.fmean(r["test"][key] for r in report["runs"] if r["nproc"] == nproc)

    report["difference_points"] = {key: round(100 * (mean(args.nproc, key) - mean(1, key)), 2)
                                   for key in ("recall@1", "map@r")}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
