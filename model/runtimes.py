"""Inference engines behind `Embedder`: torch eager, ONNX Runtime, OpenVINO, and TensorRT on CUDA.

Each engine runs one model: `run((B, 3, S, S) float32 tensor) -> (B, d) float32 unit rows`, and names
its `runtime`, `device`, compute `dtype` and `precision`. ONNX Runtime, OpenVINO and TensorRT (ONNX
Runtime's TensorRT provider) read the ONNX file of the model (`model.onnx_export`, int8: `model.quantize`);
their packages are optional and imported only when asked for.

Precisions per runtime (`precisions`): torch fp32 and bf16 on the CPU, fp16 (replayed as CUDA graphs),
fp32 and bf16 on CUDA; onnxruntime fp32 and int8 (static quantization) on the CPU, fp32 on CUDA;
openvino fp32 and, on a CPU with native bf16 (AVX512-BF16 or AMX), bf16; tensorrt fp16 and fp32, CUDA
only. int8 is never chosen by `auto`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from model.bn_fold import fold_batchnorm
from model.cgd import CGD
from model.device import autocast, cpu_supports_bf16
from model.malloc import keep_freed_memory

LOG = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "openvino", "tensorrt")
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "onnxruntime"}  # module names
PIP_NAMES = {"tensorrt": "onnxruntime-gpu"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}
CUDA_GRAPH_MAX_BATCH = 64  # torch on CUDA: graphs for 1, 2, 4, ... up to this batch; larger ones are split
TENSORRT_MAX_BATCH = 64  # the TensorRT optimisation profile covers batches 1..this; larger ones are split


class RuntimeUnavailable(ValueError):
    """A runtime that is unknown, whose package is missing, or that cannot run this device/precision."""


class Engine(Protocol):
    """One model, ready to embed preprocessed batches."""

    runtime: str
    device: torch.device
    dtype: torch.dtype
    precision: str  # fp32, bf16, fp16 or int8

    def run(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) float32 -> (B, d) float32 unit rows."""
        ...


def runtime_installed(name: str) -> bool:
    """True when the package of runtime `name` can be imported (torch always can)."""
    return name == "torch" or importlib.util.find_spec(PACKAGES[name]) is not None


def precisions(name: str, device: torch.device) -> tuple[str, ...]:
    """The precisions runtime `name` runs on `device`; the first is what `auto` means for it."""
    cuda = device.type == "cuda"
    if name == "torch":
        if cuda:
            return "fp16", "fp32", "bf16"
        return ("bf16", "fp32") if cpu_supports_bf16() else ("fp32", "bf16")
    if name == "onnxruntime":
        return ("fp32",) if cuda else ("fp32", "int8")
    if name == "openvino":
        return () if cuda else ("fp32", "bf16") if cpu_supports_bf16() else ("fp32",)
    return ("fp16", "fp32") if cuda else ()


def resolve_runtime_precision(name: str, device: torch.device, precision: str) -> str:
    """`precision` made concrete for runtime `name` on `device`; `RuntimeUnavailable` naming the reason
    when the runtime is unknown, its package missing, or it cannot run there at that precision."""
    if name not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {name!r}; use auto or one of {', '.join(RUNTIMES)}")
    if precision != "auto" and precision not in DTYPES:
        raise RuntimeUnavailable(f"unknown precision {precision!r}; use auto or one of {', '.join(DTYPES)}")
    if not runtime_installed(name):
        raise RuntimeUnavailable(f"runtime {name!r} asked for but the {PACKAGES[name]!r} package is not "
                                 f"installed (pip install {PIP_NAMES.get(name, PACKAGES[name])})")
    if name == "tensorrt" and device.type != "cuda":
        raise RuntimeUnavailable(f"runtime 'tensorrt' needs a CUDA device, and the model runs on {device}; "
                                 f"use CGD_DEVICE=cuda on a machine with an NVIDIA GPU, or another runtime")
    allowed = precisions(name, device)
    if not allowed:
        raise RuntimeUnavailable(f"runtime {name!r} cannot run on {device.type}")
    if precision == "auto":
        return allowed[0]
    if precision not in allowed:
        raise RuntimeUnavailable(f"runtime {name!r} cannot run precision {precision!r} on "
                                 f"{device.type}; use one of auto, {', '.join(allowed)}")
    return precision


def check_runtime(name: str, device: torch.device, precision: str) -> None:
    """Raise `RuntimeUnavailable` with the reason when runtime `name` cannot serve here at `precision`."""
    resolve_runtime_precision(name, device, precision)


def unit_rows(embedding: np.ndarray) -> np.ndarray:
    """(B, d) -> C-contiguous float32 rows of unit L2 norm."""
    embedding = np.asarray(embedding, dtype=np.float32)
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    return np.ascontiguousarray(embedding / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


def graph_batch(size: int) -> int:
    """The batch a CUDA graph is captured for: the next power of two (a few graphs serve every size)."""
    return 1 << max(size - 1, 0).bit_length()


class TorchEngine:
    """Torch eager: BatchNorm folded into the convolutions (`fold_bn`, on a copy), channels_last, autocast
    per `model.device` rules, glibc malloc tuned for big tensors on the CPU (`model.malloc`). On CUDA,
    each batch size (padded to a power of two) is captured once as a CUDA graph and replayed."""

    runtime = "torch"

    def __init__(self, model: CGD, device: torch.device, precision: str = "auto", *,
                 fold_bn: bool = True) -> None:
        if device.type == "cpu":
            keep_freed_memory()
        self.device = device
        self.precision = resolve_runtime_precision("torch", device, precision)
        self.dtype = DTYPES[self.precision]
        model = model.eval().to(device)
        if fold_bn:
            size = model.config.image_size
            sample = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
            model = fold_batchnorm(model, sample.to(device))
        self.model = model.to(memory_format=torch.channels_last)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> np.ndarray:
        if self.device.type == "cuda":  # larger batches in parts: a graph per size up to the cap
            embedding = torch.cat([self._replay(part) for part in batch.split(CUDA_GRAPH_MAX_BATCH)])
        else:
            embedding = self._forward(batch.contiguous(memory_format=torch.channels_last))
        return np.ascontiguousarray(embedding.cpu().numpy(), dtype=np.float32)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and self.dtype != torch.float32:
            # No autocast weight cache under CUDA graphs: cached casts made during capture would be freed.
            context = torch.autocast(device_type="cuda", dtype=self.dtype, cache_enabled=False)
        else:
            context = autocast(self.device, self.dtype)
        with context:
            embedding = self.model(batch)
        return F.normalize(embedding.float(), dim=1)

    def _replay(self, batch: torch.Tensor) -> torch.Tensor:
        """The batch through the CUDA graph of its padded size (captured at its first use)."""
        size = graph_batch(len(batch))
        if size not in self._graphs:
            self._graphs[size] = self._capture(size, batch.shape[1:])
        graph, inputs, outputs = self._graphs[size]
        inputs[:len(batch)].copy_(batch, non_blocking=True)
        inputs[len(batch):].zero_()
        graph.replay()
        return outputs[:len(batch)].clone()

    def _capture(self, size: int, shape: torch.Size) -> tuple[torch.cuda.CUDAGraph, torch.Tensor,
                                                              torch.Tensor]:
        inputs = torch.zeros(size, *shape, device=self.device).contiguous(memory_format=torch.channels_last)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up off the default stream: cuDNN picks its kernels first
            for _ in range(3):
                self._forward(inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):  # other threads
            # (FAISS on the GPU, a swap's reference run) may use CUDA meanwhile
            outputs = self._forward(inputs)
        LOG.info("captured a CUDA graph for batches of %d (%s)", size, self.precision)
        return graph, inputs, outputs


class OnnxRuntimeEngine:
    """ONNX Runtime: the CPU provider (fp32, or int8 on the quantized file), CUDA on a CUDA device, or
    TensorRT (`tensorrt=True`: fp16 or fp32 engines built once and cached in `trt_cache`)."""

    def __init__(self, onnx_file: Path, device: torch.device, threads: int | None = None,
                 precision: str = "fp32", *, tensorrt: bool = False, trt_cache: Path | None = None) -> None:
        ort = importlib.import_module("onnxruntime")
        self.runtime = "tensorrt" if tensorrt else "onnxruntime"
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.device = device
        providers = _providers(ort, device, tensorrt, precision, trt_cache or onnx_file.parent / "tensorrt")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads sleep between runs instead of spinning: in the service, decoding, HTTP and search
        # share the cores with the model, and a spinning pool takes their CPU.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(onnx_file), options, providers=providers)
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if self._session.get_providers()[0] != wanted:
            raise RuntimeUnavailable(f"runtime {self.runtime!r}: ONNX Runtime could not start its {wanted} "
                                     f"(it fell back to {self._session.get_providers()[0]})")
        self._input = self._session.get_inputs()[0].name
        self._max_batch = TENSORRT_MAX_BATCH if tensorrt else None

    def run(self, batch: torch.Tensor) -> np.ndarray:
        images = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        step = self._max_batch or len(images) or 1
        outputs = [self._session.run(None, {self._input: images[i:i + step]})[0]
                   for i in range(0, len(images), step)]
        return unit_rows(np.concatenate(outputs) if len(outputs) != 1 else outputs[0])


def _providers(ort, device: torch.device, tensorrt: bool, precision: str, trt_cache: Path) -> list:
    """ONNX Runtime's execution providers, first the one asked for; `RuntimeUnavailable` if absent."""
    available = ort.get_available_providers()
    if tensorrt:
        if "TensorrtExecutionProvider" not in available:
            raise RuntimeUnavailable("runtime 'tensorrt' needs onnxruntime-gpu with the TensorRT provider "
                                     "and TensorRT's libraries (this onnxruntime has "
                                     f"{', '.join(available)})")
        trt_cache.mkdir(parents=True, exist_ok=True)
        options = {"device_id": device.index or 0, "trt_fp16_enable": precision == "fp16",
                   "trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache),
                   "trt_timing_cache_enable": True, "trt_timing_cache_path": str(trt_cache)}
        cuda = ("CUDAExecutionProvider", {"device_id": device.index or 0})
        return [("TensorrtExecutionProvider", options), cuda, "CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeUnavailable("runtime 'onnxruntime' on CUDA needs the onnxruntime-gpu package")
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OpenVinoEngine:
    """OpenVINO on the CPU, fp32 (bf16 when asked for and the CPU has it natively)."""

    runtime = "openvino"
    device = torch.device("cpu")

    def __init__(self, onnx_file: Path, precision: str = "fp32", threads: int | None = None) -> None:
        ov = importlib.import_module("openvino")
        self.precision = precision
        self.dtype = DTYPES[precision]
        config = {
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._compiled = ov.Core().compile_model(str(onnx_file), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one batch at a time

    def run(self, batch: torch.Tensor) -> np.ndarray:
        images = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        with self._lock:
            output = self._request.infer({0: images})[self._compiled.output(0)]
        return unit_rows(output)


def create_engine(name: str, model: CGD, device: torch.device, *, precision: str = "auto",
                  onnx_file: Path | None = None, threads: int | None = None) -> Engine:
    """The engine of runtime `name` (not `auto`) for `model`; the ONNX runtimes need `onnx_file` (for int8,
    the quantized file of `model.quantize`)."""
    precision = resolve_runtime_precision(name, device, precision)
    if name == "torch":
        return TorchEngine(model, device, precision)
    if onnx_file is None:
        raise ValueError(f"runtime {name!r} needs the model's ONNX file")
    if name == "openvino":
        return OpenVinoEngine(onnx_file, precision, threads)
    return OnnxRuntimeEngine(onnx_file, device, threads, precision, tensorrt=name == "tensorrt")
