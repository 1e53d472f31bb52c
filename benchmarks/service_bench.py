"""Throughput and latency of the HTTP service against the raw model, on real images.

Starts `cgd serve` (the embedded default model) on 127.0.0.1 with a temporary data directory,
ingests a gallery of real images (read from `--image-root` at run time, round-robin over its class
folders), then for each client concurrency sends single-image POST /search and POST /gallery requests
from asyncio workers, one keep-alive HTTP/1.1 connection each (`Connection`: whole requests built once,
answers read with asyncio streams, so that the load generator takes little of the shared CPU; at most
`--requests` per level and `--max-seconds`). It reports images/s, p50/p99 latency, errors, the worker's
mean batch and the CPU time per image of the server and of this load generator, and "raw": in-process decode
(`service.images.decode_image`) + preprocess + model pass over the same image bytes, at the worker's
batch size (`Settings()`: CGD_MAX_BATCH_SIZE, CGD_DEVICE, CGD_INFERENCE_THREADS) on the runtime and
precision the server's `/ready` says it serves (with CGD_RUNTIME=auto, what it measured fastest at its
start), timed before, between and after the HTTP levels; a level's service/raw ratio
uses the raw figures on either side of it. CGD_* variables of the environment reach the server too.
At the end (`--reembed`), the server restarts on the same data directory with a new model version
(the default weights saved as a checkpoint) and re-embeds the whole gallery before it serves: its
images/s against a raw measurement right after.

    nice -n 10 .venv/bin/python benchmarks/service_bench.py --images 320 --queries 128 --requests 1024 \\
        --concurrency 1,4,16,64 --out /tmp/service_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.embedder import Embedder
from model.runtime_select import cpu_fields
from service.images import decode_image
from service.settings import Settings

HOST = "127.0.0.1"
DEFAULT_IMAGES = Path("/work/shared/data/caltech101/images")
INGEST_FILES = 32  # images per request of the initial ingest
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


@dataclass(frozen=True)
class ImageBytes:
    """One image file read into memory; `label` is its class folder."""

    name: str
    label: str
    data: bytes


@dataclass
class Level:
    """Results of one endpoint at one client concurrency."""

    endpoint: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p99_ms: float
    load1: float
    mean_batch: float  # images per forward pass of the worker during the level (from /metrics)
    server_cpu_ms: float  # CPU time of the server process per image (all its threads)
    client_cpu_ms: float  # CPU time of this load generator per image
    ratio_to_raw: float | None = None


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_model() -> str:
    with open("/proc/cpuinfo") as handle:
        line = next((line for line in handle if line.startswith("model name")), ": " + platform.machine())
    return line.split(":", 1)[1].strip()


def read_images(root: Path, count: int) -> list[ImageBytes]:
    """`count` image files, round-robin over the sorted class folders of `root`."""
    folders = [sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)
               for folder in sorted(root.iterdir()) if folder.is_dir()]
    folders = [files for files in folders if files]
    picked: list[ImageBytes] = []
    for position in range(max(len(files) for files in folders)):
        for files in folders:
            if position < len(files) and len(picked) < count:
                path = files[position]
                picked.append(ImageBytes(path.name, path.parent.name, path.read_bytes()))
    if len(picked) < count:
        raise SystemExit(f"only {len(picked)} images under {root}, {count} asked for")
    return picked


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(data_dir: Path, port: int, log: Path, checkpoint: Path | None = None) -> subprocess.Popen:
    """`cgd serve` in a child process (this interpreter), its output in `log`."""
    command = [sys.executable, "-m", "service.cli", "serve", "--host", HOST, "--port", str(port),
               "--data-dir", str(data_dir)]
    if checkpoint is not None:
        command += ["--checkpoint", str(checkpoint)]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[1])


def reembed(data_dir: Path, workdir: Path, port: int) -> dict:
    """Re-embedding of the whole gallery by a new model version: `cgd serve` restarted on the same data
    directory with the default model saved as a checkpoint (another version, the same weights), which
    re-embeds every item before it serves; images/s from the service's own log line."""
    from model.checkpoint import save_checkpoint
    from model.default import default_model

    checkpoint = workdir / "same-weights.pt"
    save_checkpoint(checkpoint, default_model())
    log = workdir / "reembed.log"
    server = start_server(data_dir, port, log, checkpoint)
    try:
        wait_ready(f"http://{HOST}:{port}", server, log, timeout_s=900.0)
        served = httpx.get(f"http://{HOST}:{port}/ready", timeout=10.0).json()
    finally:
        server.terminate()
        server.wait(timeout=60)
    text = log.read_text(errors="replace")
    seconds = float(re.search(r"re-embedding and swap took ([0-9.]+) s", text).group(1))
    items = int(re.search(r"over (\d+) gallery items", text).group(1))
    return {"images": items, "seconds": seconds, "images_per_s": round(items / seconds, 1),
            "load1": load_average(), "runtime": served["runtime"], "precision": served["precision"]}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all threads) so far, from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_memory(pid: int) -> dict:
    """Resident set now and at its peak (GiB) of process `pid`, from /proc."""
    with open(f"/proc/{pid}/status") as handle:
        fields = dict(line.split(":", 1) for line in handle if line.startswith(("VmRSS", "VmHWM")))
    return {name: round(int(fields[key].split()[0]) / 2**20, 2)
            for name, key in (("rss_gib", "VmRSS"), ("peak_gib", "VmHWM"))}


def wait_ready(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> None:
    """Until GET /ready answers 200; SystemExit with the server's log if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode} before it was ready:\n"
                             f"{log.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready after {timeout_s:.0f} s:\n"
                     f"{log.read_text(errors='replace')[-4000:]}")


class RawPipeline:
    """In-process decode + preprocess + model pass in batches of `settings.max_batch_size`, with the
    worker's device, dtype and runtime (`runtime` and `precision` when given: what a server's `/ready`
    says it serves; ONNX files and the runtime choice cached in `engine_dir`), for `checkpoint` (None:
    the embedded default): what the service would do with no HTTP, queue or gallery around it."""

    def __init__(self, images: list[ImageBytes], settings: Settings, checkpoint: Path | None = None,
                 engine_dir: Path | None = None, runtime: str | None = None,
                 precision: str | None = None) -> None:
        self.images, self.settings = images, settings
        if settings.inference_threads is not None:  # what the worker's model thread does
            torch.set_num_threads(settings.inference_threads)
        self.embedder = Embedder.load(checkpoint, device=settings.device,
                                      precision=precision or settings.precision,
                                      runtime=runtime or settings.runtime, cache_dir=engine_dir,
                                      threads=settings.inference_threads)
        self.batch = settings.max_batch_size
        for _ in range(3):  # warm-up: first-pass allocations, oneDNN kernel selection
            self._run(images[:self.batch])

    def _run(self, chunk: list[ImageBytes]) -> tuple[float, float, float]:
        """Seconds spent decoding, preprocessing and in the model for one batch."""
        started = time.perf_counter()
        decoded = [decode_image(image.data, filename=image.name, max_bytes=self.settings.max_upload_bytes,
                                max_pixels=self.settings.max_image_pixels) for image in chunk]
        decoded_at = time.perf_counter()
        batch = torch.stack([self.embedder.preprocess(image) for image in decoded])
        preprocessed_at = time.perf_counter()
        self.embedder.embed_tensors(batch)
        return decoded_at - started, preprocessed_at - decoded_at, time.perf_counter() - preprocessed_at

    def measure(self, seconds: float) -> dict:
        """Images/s over at least `seconds` and two batches, and ms per image in each stage."""
        done, stages, started, cpu = 0, np.zeros(3), time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds or done < 2 * self.batch:
            start = done % len(self.images)
            chunk = (self.images + self.images)[start:start + self.batch]
            stages += self._run(chunk)
            done += len(chunk)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        decode_ms, preprocess_ms, model_ms = (round(1000 * float(x) / done, 2) for x in stages)
        return {"images": done, "seconds": round(elapsed, 2), "images_per_s": round(done / elapsed, 1),
                "decode_ms": decode_ms, "preprocess_ms": preprocess_ms, "model_ms": model_ms,
                "model_images_per_s": round(1000 / model_ms, 1), "cpu_ms": round(1000 * cpu / done, 1),
                "load1": load_average()}

    def describe(self) -> dict:
        return {"batch": self.batch, "dtype": str(self.embedder.dtype).removeprefix("torch."),
                "device": str(self.embedder.device), "runtime": self.embedder.runtime,
                "torch_threads": torch.get_num_threads()}


async def ingest(client: httpx.AsyncClient, images: list[ImageBytes]) -> dict:
    """The initial gallery, `INGEST_FILES` images a request, one request at a time."""
    started = time.perf_counter()
    for start in range(0, len(images), INGEST_FILES):
        chunk = images[start:start + INGEST_FILES]
        response = await client.post("/gallery", files=[("files", (i.name, i.data)) for i in chunk],
                                     data={"labels": [i.label for i in chunk]})
        response.raise_for_status()
    elapsed = time.perf_counter() - started
    return {"images": len(images), "files_per_request": INGEST_FILES, "seconds": round(elapsed, 2),
            "images_per_s": round(len(images) / elapsed, 1)}


async def batch_totals(client: httpx.AsyncClient) -> tuple[float, float]:
    """(images, forward passes) of the inference worker so far, from GET /metrics."""
    text = (await client.get("/metrics")).text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines()
                  if line.startswith(("cgd_embed_batch_size_sum", "cgd_embed_batch_size_count")))
    return float(values["cgd_embed_batch_size_sum"]), float(values["cgd_embed_batch_size_count"])


def encode(endpoint: str, image: ImageBytes) -> tuple[bytes, dict[str, str]]:
    """The multipart body and headers of a single-image request, built once (httpx's multipart
    encoder is Python code, and this client shares the CPU with the server)."""
    if endpoint == "/search":
        request = httpx.Request("POST", f"http://{HOST}{endpoint}", files={"file": (image.name, image.data)})
    else:
        request = httpx.Request("POST", f"http://{HOST}{endpoint}", files={"files": (image.name, image.data)},
                                data={"labels": image.label})
    return request.read(), {"content-type": request.headers["content-type"]}


class Connection:
    """One keep-alive HTTP/1.1 connection sending prebuilt requests and reading each answer: a load
    generator that takes little of the CPU it shares with the server (httpx's client took 1.4 to 1.9 ms
    of CPU a request here, 0.2 to 0.3 of a core at the rates measured)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, request: bytes) -> int:
        """The answer's status code (its body read and dropped); the connection is kept."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(HOST, self._port)
        reader, writer = self._streams
        writer.write(request)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        return status

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


def raw_request(endpoint: str, image: ImageBytes) -> bytes:
    """The whole HTTP/1.1 request of a single-image POST to `endpoint`, built once."""
    body, headers = encode(endpoint, image)
    head = (f"POST {endpoint} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {headers['content-type']}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def run_level(client: httpx.AsyncClient, port: int, server_pid: int, endpoint: str,
                    images: list[ImageBytes], concurrency: int, requests: int, max_seconds: float) -> Level:
    """`concurrency` workers, each on its own `Connection`, send single-image requests until `requests`
    are sent or time is up; `client` reads /metrics before and after."""
    prebuilt = [raw_request(endpoint, image) for image in images]
    latencies: list[float] = []
    errors = 0
    sent = 0
    images_before, passes_before = await batch_totals(client)
    server_cpu, client_cpu = process_cpu_seconds(server_pid), time.process_time()
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker(connection: Connection) -> None:
        nonlocal sent, errors
        while sent < requests and time.perf_counter() < deadline:
            request = prebuilt[sent % len(prebuilt)]
            sent += 1
            began = time.perf_counter()
            try:
                ok = await connection.send(request) in (200, 201)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                connection.close()  # a new connection for the next request
                ok = False
            if ok:
                latencies.append(1000 * (time.perf_counter() - began))
            else:
                errors += 1

    connections = [Connection(port) for _ in range(concurrency)]
    try:
        await asyncio.gather(*(worker(connection) for connection in connections))
    finally:
        for connection in connections:
            connection.close()
    elapsed = time.perf_counter() - started
    server_cpu, client_cpu = process_cpu_seconds(server_pid) - server_cpu, time.process_time() - client_cpu
    images_after, passes_after = await batch_totals(client)
    ordered = sorted(latencies) or [float("nan")]
    done = max(len(latencies), 1)
    mean_batch = (images_after - images_before) / max(passes_after - passes_before, 1)
    return Level(endpoint, concurrency, sent, errors, round(elapsed, 2), round(len(latencies) / elapsed, 1),
                 round(statistics.median(ordered), 1), round(float(np.percentile(ordered, 99)), 1),
                 load_average(), round(mean_batch, 1), round(1000 * server_cpu / done, 1),
                 round(1000 * client_cpu / done, 1))


async def run_http(url: str, server_pid: int, gallery: list[ImageBytes], queries: list[ImageBytes],
                   raw: RawPipeline, args: argparse.Namespace,
                   levels: list[int]) -> tuple[dict, list[dict], list[Level]]:
    """Ingest, one raw measurement, then per concurrency: /search, /gallery, raw again. Each level's
    ratio is to the mean of the raw measurements just before and just after it, so that a change of
    the machine's load during the run moves both sides of the ratio."""
    port = httpx.URL(url).port
    async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:
        ingested = await ingest(client, gallery)
        await run_level(client, port, server_pid, "/search", queries, 4, 32, args.max_seconds)  # warm-up
        raws = [{"when": "before", **raw.measure(args.raw_seconds)}]
        results = []
        for concurrency in levels:
            measured = [await run_level(client, port, server_pid, endpoint, queries, concurrency,
                                        args.requests, args.max_seconds)
                        for endpoint in args.endpoints.split(",")]
            raws.append({"when": f"after concurrency {concurrency}", **raw.measure(args.raw_seconds)})
            reference = (raws[-2]["images_per_s"] + raws[-1]["images_per_s"]) / 2
            for level in measured:
                level.ratio_to_raw = round(level.images_per_s / reference, 2)
                print(f"  {asdict(level)}", file=sys.stderr, flush=True)
            results += measured
    return ingested, raws, results


def markdown(levels: list[Level], raws: list[dict]) -> str:
    lines = ["| raw, in process | images/s | decode ms/img | preprocess ms/img | model ms/img "
             "| model-only images/s | CPU ms/img | load |", "| --- |" + " ---: |" * 7]
    lines += [f"| {r['when']} | {r['images_per_s']} | {r['decode_ms']} | {r['preprocess_ms']} "
              f"| {r['model_ms']} | {r['model_images_per_s']} | {r['cpu_ms']} | {r['load1']} |" for r in raws]
    lines += ["", "| endpoint | concurrency | requests | errors | images/s | p50 ms | p99 ms | mean batch "
              "| server CPU ms/img | client CPU ms/img | service/raw | load |", "| --- |" + " ---: |" * 11]
    lines += [f"| {x.endpoint} | {x.concurrency} | {x.requests} | {x.errors} | {x.images_per_s} | {x.p50_ms} "
              f"| {x.p99_ms} | {x.mean_batch} | {x.server_cpu_ms} | {x.client_cpu_ms} | {x.ratio_to_raw:.2f} "
              f"| {x.load1} |" for x in levels]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,4,16,64", help="client concurrencies, comma-separated")
    parser.add_argument("--endpoints", default="/search,/gallery",
                        choices=("/search,/gallery", "/search", "/gallery"), help="what to measure")
    parser.add_argument("--requests", type=int, default=256, help="requests per endpoint and concurrency")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time bound per endpoint and level")
    parser.add_argument("--images", type=int, default=320, help="gallery images ingested first")
    parser.add_argument("--queries", type=int, default=128, help="other images used as requests")
    parser.add_argument("--raw-seconds", type=float, default=10.0, help="duration of each raw measurement")
    parser.add_argument("--image-root", type=Path, default=DEFAULT_IMAGES, help="class folders of images")
    parser.add_argument("--reembed", action=argparse.BooleanOptionalAction, default=True,
                        help="at the end, restart with a new model version and time its re-embedding")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    settings = Settings()
    images = read_images(args.image_root, args.images + args.queries)
    gallery, queries = images[:args.images], images[args.images:]
    flags = set(cpu_fields().get("flags", "").split())
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
               "torch": torch.__version__, "load1_start": load_average(),
               "cpu_flags": [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                             if flag in flags],
               "settings": {k: v for k, v in sorted(os.environ.items()) if k.startswith("CGD_")}}
    print(f"machine {machine}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="cgd-service-bench-") as tmp:
        port = free_port()
        url = f"http://{HOST}:{port}"
        log = Path(tmp) / "server.log"
        server = start_server(Path(tmp) / "data", port, log)
        try:
            wait_ready(url, server, log, timeout_s=600.0)  # an auto runtime exports and measures first
            served = httpx.get(f"{url}/ready", timeout=10.0).json()
            machine["served"] = {key: served[key] for key in ("runtime", "precision", "runtime_choice")}
            raw = RawPipeline(queries, settings, runtime=served["runtime"], precision=served["precision"])
            machine["raw"] = raw.describe()
            ingested, raws, results = asyncio.run(run_http(url, server.pid, gallery, queries, raw, args,
                                                           levels))
            machine["server_memory"] = process_memory(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=60)
        reembedded = reembed(Path(tmp) / "data", Path(tmp), port) if args.reembed else None
        if reembedded is not None:  # against raw on the runtime the new version chose, and on the first one
            raws.append({"when": "after re-embedding", **raw.measure(args.raw_seconds)})
            reembedded["ratio_to_raw"] = round(reembedded["images_per_s"] / raws[-1]["images_per_s"], 2)
            if (reembedded["runtime"], reembedded["precision"]) != (served["runtime"], served["precision"]):
                own = RawPipeline(queries, settings, runtime=reembedded["runtime"],
                                  precision=reembedded["precision"])
                raws.append({"when": f"after re-embedding, on {reembedded['runtime']} "
                                     f"{reembedded['precision']}", **own.measure(args.raw_seconds)})
                own_raw = raws[-1]["images_per_s"]
                reembedded["ratio_to_own_raw"] = round(reembedded["images_per_s"] / own_raw, 2)
    machine["load1_end"] = load_average()
    print(f"initial ingest: {ingested}; server memory at the end: {machine['server_memory']}")
    print(f"re-embedding by a new model version at start-up: {reembedded}")
    print(markdown(results, raws))
    if args.out is not None:
        args.out.write_text(json.dumps({"machine": machine, "command": " ".join(sys.argv), "raw": raws,
                                        "ingest": ingested, "levels": [asdict(level) for level in results],
                                        "reembed": reembedded}, indent=1))


if __name__ == "__main__":
    main()
