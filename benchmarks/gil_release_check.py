"""Does building an engine hold the interpreter? ONNX Runtime session creation and OpenVINO compilation
(and, for comparison, their inference), timed against a Python thread that keeps counting meanwhile.

For each build (`model.runtimes`' own engine classes, on the embedded default model's ONNX file, exported
first in a child process as the service does), a counting thread increments a counter and a ticker thread
sleeps 1 ms at a time and notes how late it wakes. Holding the GIL for the whole build shows as a counter
that stops (counts per second near 0 against the idle rate) and a ticker gap as long as the build; a build
that releases it leaves the counter running at whatever CPU share the build's own threads leave it, and
the ticker's gaps short. One long builtin C call (it keeps the GIL) is the positive control.

    /work/notes/cpu bench .venv/bin/python benchmarks/gil_release_check.py --out /tmp/gil.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.default import default_model
from model.device import cpu_supports_bf16
from model.embedder import version_of
from model.onnx_export import ensure_onnx
from model.runtime_select import cpu_fields
from model.runtimes import Engine, OnnxRuntimeEngine, OpenVinoEngine, runtime_installed

T = TypeVar("T")

BASELINE_S = 1.0
CONTROL_TERMS = 50_000_000
INFER_BATCH = 8
INFER_PASSES = 20
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


class Observers:
    """A counting thread and a 1 ms ticker thread, running until `stop`."""

    def __init__(self) -> None:
        self.count = 0
        self.gaps: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._counting, daemon=True),
                         threading.Thread(target=self._ticking, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _counting(self) -> None:
        while not self._stop.is_set():
            self.count += 1

    def _ticking(self) -> None:
        while not self._stop.is_set():
            before = time.perf_counter()
            time.sleep(0.001)
            self.gaps.append(time.perf_counter() - before)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def observe(fn: Callable[[], T]) -> tuple[dict, T]:
    """`fn()` while the observers run: (its seconds, the counter's rate and the ticker's gaps; its result)."""
    observers = Observers()
    started = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - started
    observers.stop()
    gaps = sorted(observers.gaps)
    return {"seconds": round(seconds, 3), "counts_per_s": round(observers.count / seconds),
            "ticks": len(gaps), "max_gap_ms": round(gaps[-1] * 1000, 1) if gaps else None,
            "p99_gap_ms": round(gaps[int(0.99 * (len(gaps) - 1))] * 1000, 1) if gaps else None}, value


def one_c_call() -> int:
    """Positive control: one long C call (a builtin `sum` over a range), which keeps the GIL throughout."""
    return sum(range(CONTROL_TERMS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "cgd-engines",
                        help="where the ONNX file is cached (exported there first when missing)")
    args = parser.parse_args()
    model = default_model()
    threads = len(os.sched_getaffinity(0))
    onnx_file = ensure_onnx(model, version_of(model, default=True), args.cache_dir)
    builds: dict[str, Callable[[], object]] = {
        "idle (sleep)": lambda: time.sleep(BASELINE_S),
        "one C call holding the GIL (control)": one_c_call,
    }
    engines: dict[str, Callable[[], Engine]] = {}
    if runtime_installed("onnxruntime"):
        cpu = torch.device("cpu")
        engines["onnxruntime session fp32"] = lambda: OnnxRuntimeEngine(onnx_file, cpu, threads)
    if runtime_installed("openvino"):
        engines["openvino compile fp32"] = lambda: OpenVinoEngine(onnx_file, "fp32", threads)
        if cpu_supports_bf16():
            engines["openvino compile bf16"] = lambda: OpenVinoEngine(onnx_file, "bf16", threads)
    results = {name: observe(build)[0] for name, build in builds.items()}
    batch = torch.randn(INFER_BATCH, 3, model.config.image_size, model.config.image_size)
    for name, build in engines.items():
        results[name], engine = observe(build)
        engine.run(batch)  # warm-up
        results[f"{engine.runtime} {engine.precision} inference, batch {INFER_BATCH}"], _ = observe(
            lambda engine=engine: [engine.run(batch) for _ in range(INFER_PASSES)])
    idle = results["idle (sleep)"]["counts_per_s"]
    for result in results.values():
        result["counter_vs_idle"] = round(result["counts_per_s"] / idle, 3)
    fields = cpu_fields()
    flags = [flag for flag in FLAGS if flag in fields.get("flags", "").split()]
    report = {"machine": {"cpu": fields.get("model name", "?"), "flags": flags, "cores": threads,
                          "load1": round(os.getloadavg()[0], 2)},
              "results": results}
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
