"""Inference runtimes side by side on the embedded default model: images/s, latency, agreement with fp32.

Every row runs in a fresh child process (the malloc tuning of `model.malloc` is process-wide and the
baseline must not have it), rows alternate over `--repeats`, and each process times batches of real
images (caltech101, 224 px) at every `--batches` size for `--seconds` each, on `--threads` threads.
Rows:

- `torch-baseline`: torch eager as the service ran it before the runtimes (channels_last, no malloc tuning)
- `torch-unfolded`: `model.runtimes.TorchEngine` without BatchNorm folding (channels_last, malloc tuned)
- `torch`: `model.runtimes.TorchEngine` (BatchNorm folded, channels_last, glibc malloc tuned), fp32
- `torch-bf16`: the same under bf16 autocast (slow without native bf16: opt in with `--rows`)
- `onnxruntime`, `openvino`: the ONNX export of `CGD.forward` (cached in `--cache-dir`), fp32
- `openvino-bf16`: OpenVINO with its bf16 inference precision (native bf16 only: opt in otherwise)
- `onnxruntime-int8`: ONNX Runtime on the int8 model of `model.quantize` (static QDQ quantization,
  calibrated on `--calibration` other photos: the train split); only ever used when asked for
- `auto`: `CGD_RUNTIME=auto` and `CGD_PRECISION=auto` as the service builds them (`select_engine`),
  with the runtime and precision it chose

`torch-bf16` and `openvino-bf16` join the default rows on a CPU with native bf16 (AVX512-BF16 or AMX).
Before the rows, the ONNX export is timed cold (a fresh cache directory, as at a first service start)
and warm (the cached file, as at every restart).

Each batch size also records the minor page faults of one more pass (eager torch without the malloc
tuning faults its big activations in at every pass). The min cosine compares each row's vectors with
torch fp32 on the same images. The CPU model, its avx2/avx512f/avx512_bf16/amx_bf16 flags and the
load average before and after every row are recorded.

    .venv/bin/python benchmarks/runtime_bench.py --seconds 2 --repeats 2 --time-export --out /tmp/rt.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "caltech101"
ROWS = ("torch-baseline", "torch-unfolded", "torch", "torch-bf16", "onnxruntime", "onnxruntime-int8",
        "openvino", "openvino-bf16", "auto")
DEFAULT_ROWS = "torch-baseline,torch-unfolded,torch,onnxruntime,onnxruntime-int8,openvino,auto"
BF16_ROWS = ("torch-bf16", "openvino-bf16")  # added to the default rows on a CPU with native bf16
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def cpu_facts() -> dict:
    fields: dict[str, str] = {}
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name", "?"), "cores": os.cpu_count(),
            "flags": {flag: flag in flags for flag in FLAGS}}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def real_batch(root: Path, count: int, split: str | None = None):
    """(count, 3, 224, 224): the first photo of `count` caltech101 classes (of `split`), preprocessed."""
    import csv

    import torch
    from PIL import Image

    from model.default import DEFAULT_CONFIG
    from model.images import upright_rgb
    from model.transforms import inference_transform

    transform = inference_transform(DEFAULT_CONFIG.preprocessing)
    chosen: dict[str, Path] = {}
    with (root / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if split is not None and row.get("split") != split:
                continue
            if row["label"] not in chosen:
                chosen[row["label"]] = root / row["path"]
            if len(chosen) == count:
                break
    return torch.stack([transform(upright_rgb(Image.open(path))) for path in chosen.values()])


def make_runner(row: str, threads: int, cache_dir: Path, calibration):
    """(row's embed function, the runtime and precision that run it)."""
    import torch

    from model.default import default_model
    from model.embedder import Embedder

    torch.set_num_threads(threads)
    if row == "torch-baseline":
        model = default_model().eval().to(memory_format=torch.channels_last)

        @torch.inference_mode()
        def run(batch):
            out = model(batch.contiguous(memory_format=torch.channels_last))
            return torch.nn.functional.normalize(out.float(), dim=1).numpy()

        return run, "torch-fp32"
    if row == "torch-unfolded":
        from model.runtimes import TorchEngine

        return TorchEngine(default_model(), torch.device("cpu"), "fp32", fold_bn=False).run, "torch-fp32"
    runtime, _, precision = row.partition("-")
    precision = precision or ("auto" if row == "auto" else "fp32")
    embedder = Embedder.load(None, device="cpu", precision=precision, runtime=runtime, cache_dir=cache_dir,
                             threads=threads, calibration=calibration if precision == "int8" else None)
    return embedder.embed_tensors, f"{embedder.runtime}-{embedder.engine.precision}"


def worker(args: argparse.Namespace) -> None:
    """Child process: time one row at every batch size, save its vectors of the full batch."""
    images = real_batch(args.image_root, max(args.batch_sizes))
    calibration = real_batch(args.image_root, args.calibration, "train") if "int8" in args.worker else None
    run, runtime = make_runner(args.worker, args.threads, args.cache_dir, calibration)
    result = {}
    for size in args.batch_sizes if args.seconds > 0 else ():
        batch = images[:size]
        run(batch)  # warm-up
        times = []
        deadline = time.perf_counter() + args.seconds
        while time.perf_counter() < deadline or len(times) < 2:
            started = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - started)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        run(batch)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        median = float(np.median(times))
        result[str(size)] = {"images_per_s": size / median, "latency_ms": median * 1000, "runs": len(times),
                             "page_faults": faults}
    np.save(args.vectors, run(images))
    print(json.dumps({"runtime": runtime, "by_batch": result}))


def run_row(row: str, args: argparse.Namespace, vectors: Path) -> dict:
    command = [sys.executable, __file__, "--worker", row, "--vectors", str(vectors),
               "--batches", ",".join(map(str, args.batch_sizes)), "--seconds", str(args.seconds),
               "--threads", str(args.threads), "--cache-dir", str(args.cache_dir),
               "--image-root", str(args.image_root), "--calibration", str(args.calibration)]
    before = load_average()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-500:], "load": [before, load_average()]}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "load": [before, load_average()]}


def time_export(cache_dir: Path) -> dict:
    """Seconds of `ensure_onnx` for the default model: cold (fresh `cache_dir`), then warm (cached)."""
    from model.checkpoint import model_version
    from model.default import default_model
    from model.onnx_export import ensure_onnx

    model = default_model()
    version = "default-" + model_version(model.config, model.state_dict())
    timings = {"load": [load_average()]}
    for phase in ("cold", "warm"):
        started = time.perf_counter()
        ensure_onnx(model, version, cache_dir)
        timings[f"{phase}_s"] = round(time.perf_counter() - started, 3)
    timings["load"].append(load_average())
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per row and batch size")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats of all rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/cgd-engines"), help="ONNX exports")
    parser.add_argument("--image-root", type=Path, default=DEFAULT_IMAGES, help="caltech101 (labels.csv)")
    parser.add_argument("--calibration", type=int, default=32,
                        help="int8 calibration photos (one per class of the train split)")
    parser.add_argument("--time-export", action="store_true", help="time a cold and a warm ONNX export")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vectors", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batches.split(",")]
    if args.worker:
        worker(args)
        return
    rows = args.rows.split(",")
    if args.rows == DEFAULT_ROWS and cpu_facts()["flags"]["avx512_bf16"] | cpu_facts()["flags"]["amx_bf16"]:
        rows.insert(3, BF16_ROWS[0])
        rows.insert(rows.index("openvino") + 1, BF16_ROWS[1])
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; use {', '.join(ROWS)}")
    report = {**cpu_facts(), "threads": args.threads, "seconds": args.seconds, "rows": {}}
    work = Path(args.cache_dir) / "bench"
    work.mkdir(parents=True, exist_ok=True)
    if args.time_export:
        import shutil

        shutil.rmtree(args.cache_dir / "export-timing", ignore_errors=True)
        report["export"] = time_export(args.cache_dir / "export-timing")
        print(json.dumps({"export": report["export"]}), flush=True)
    reference = work / "reference.npy"
    reference_run = run_row("torch", argparse.Namespace(**{**vars(args), "seconds": 0.0}), reference)
    if "error" in reference_run:
        raise SystemExit(f"the torch fp32 reference failed: {reference_run['error']}")
    expected = np.load(reference)
    for repeat in range(args.repeats):
        for row in rows:
            vectors = work / f"{row}.npy"
            result = run_row(row, args, vectors)
            if "by_batch" in result:
                result["min_cosine"] = float((np.load(vectors) * expected).sum(axis=1).min())
            report["rows"].setdefault(row, []).append(result)
            print(json.dumps({"repeat": repeat, "row": row, **result}), flush=True)
    print(markdown(report))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1))


def markdown(report: dict) -> str:
    """One line per row: the best repeat's images/s and latency per batch size, min cosine, load."""
    sizes = None
    lines = []
    for row, results in report["rows"].items():
        good = [r for r in results if "by_batch" in r]
        if not good:
            lines.append(f"| {row} | failed: {results[0]['error'][-80:]} |")
            continue
        sizes = sizes or list(good[0]["by_batch"])
        cells = []
        for size in sizes:
            best = max(good, key=lambda r: r["by_batch"][size]["images_per_s"])["by_batch"][size]
            cells.append(f"{best['images_per_s']:.1f} ({best['latency_ms']:.0f} ms, "
                         f"{best['page_faults']} faults)")
        loads = [load for r in results for load in r["load"]]
        cosine = min(r["min_cosine"] for r in good)
        chosen = f" ({good[0]['runtime']})" if row == "auto" else ""
        lines.append(f"| {row}{chosen} | " + " | ".join(cells)
                     + f" | {cosine:.5f} | {min(loads):.1f}-{max(loads):.1f} |")
    header = ("| row | " + " | ".join(f"batch {s}: img/s (latency, faults/pass)" for s in sizes or [])
              + " | min cosine | load |")
    rule = "| --- | " + " | ".join("---:" for _ in sizes or []) + " | ---: | --- |"
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in report["flags"].items())
    for base in ("torch-baseline", "torch-bf16"):
        if sizes and _best(report, "auto", sizes[0]) and _best(report, base, sizes[0]):
            ratios = ", ".join(f"batch {s}: {_best(report, 'auto', s) / _best(report, base, s):.2f}x"
                               for s in sizes)
            lines.append(f"\nauto / {base}: {ratios}")
    export = report.get("export")
    if export:
        lines.append(f"\nONNX export: cold {export['cold_s']:.1f} s, warm (cached) {export['warm_s']:.3f} s, "
                     f"load {export['load'][0]}-{export['load'][1]}")
    return "\n".join([f"{report['cpu']}, {report['cores']} cores ({flags}), {report['threads']} threads",
                      header, rule, *lines])


def _best(report: dict, row: str, size: str) -> float | None:
    """The best repeat's images/s of `row` at batch `size`, None when the row did not run."""
    good = [r for r in report["rows"].get(row, []) if "by_batch" in r]
    return max(r["by_batch"][size]["images_per_s"] for r in good) if good else None


if __name__ == "__main__":
    main()
