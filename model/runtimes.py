"""Inference engines behind `Embedder`: torch eager, ONNX Runtime and OpenVINO.

Each engine runs one model: `run((B, 3, S, S) float32 tensor) -> (B, d) float32 unit rows`, and names
its `runtime`, `device` and compute `dtype`. ONNX Runtime and OpenVINO read the ONNX file of the model
(`model.onnx_export`); their packages are optional and imported only when asked for.
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
from model.device import autocast, cpu_supports_bf16, resolve_precision
from model.malloc import keep_freed_memory

LOG = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "openvino")
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


class RuntimeUnavailable(ValueError):
    """A runtime that is unknown, whose package is missing, or that cannot run this device/precision."""


class Engine(Protocol):
    """One model, ready to embed preprocessed batches."""

    runtime: str
    device: torch.device
    dtype: torch.dtype

    def run(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) float32 -> (B, d) float32 unit rows."""
        ...


def runtime_installed(name: str) -> bool:
    """True when the package of runtime `name` can be imported (torch always can)."""
    return name == "torch" or importlib.util.find_spec(_PACKAGES[name]) is not None


def check_runtime(name: str, device: torch.device, precision: str) -> None:
    """Raise `RuntimeUnavailable` with the reason when runtime `name` cannot serve here."""
    if name not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {name!r}; use auto or one of {', '.join(RUNTIMES)}")
    if not runtime_installed(name):
        raise RuntimeUnavailable(f"runtime {name!r} asked for but the {_PACKAGES[name]!r} package is not "
                                 f"installed (pip install {_PACKAGES[name]})")
    if name == "torch":
        return
    if name == "openvino" and device.type == "cuda":
        raise RuntimeUnavailable("runtime 'openvino' runs on the CPU only; use device cpu")
    allowed = {"auto", "fp32"} | ({"bf16"} if name == "openvino" and cpu_supports_bf16() else set())
    if precision not in allowed:
        raise RuntimeUnavailable(f"runtime {name!r} cannot run precision {precision!r} here; "
                                 f"use one of {', '.join(sorted(allowed))}")


def unit_rows(embedding: np.ndarray) -> np.ndarray:
    """(B, d) -> C-contiguous float32 rows of unit L2 norm."""
    embedding = np.asarray(embedding, dtype=np.float32)
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    return np.ascontiguousarray(embedding / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


class TorchEngine:
    """Torch eager: BatchNorm folded into the convolutions (`fold_bn`, on a copy), channels_last, autocast
    per `model.device` rules, glibc malloc tuned for big tensors on the CPU (`model.malloc`)."""

    runtime = "torch"

    def __init__(self, model: CGD, device: torch.device, precision: str = "auto", *,
                 fold_bn: bool = True) -> None:
        if device.type == "cpu":
            keep_freed_memory()
        self.device = device
        self.dtype = resolve_precision(device, precision)
        model = model.eval().to(device)
        if fold_bn:
            size = model.config.image_size
            sample = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
            model = fold_batchnorm(model, sample.to(device))
        self.model = model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> np.ndarray:
        batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            embedding = self.model(batch)
        embedding = F.normalize(embedding.float(), dim=1)
        return np.ascontiguousarray(embedding.cpu().numpy(), dtype=np.float32)


class OnnxRuntimeEngine:
    """ONNX Runtime: CUDAExecutionProvider on a CUDA device when the package has it, else the CPU provider."""

    runtime = "onnxruntime"
    dtype = torch.float32

    def __init__(self, onnx_file: Path, device: torch.device, threads: int | None = None) -> None:
        ort = importlib.import_module("onnxruntime")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeUnavailable("runtime 'onnxruntime' on CUDA needs the onnxruntime-gpu package")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.device = device
        self._session = ort.InferenceSession(str(onnx_file), options, providers=providers)
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: torch.Tensor) -> np.ndarray:
        images = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return unit_rows(self._session.run(None, {self._input: images})[0])


class OpenVinoEngine:
    """OpenVINO on the CPU, fp32 (bf16 when asked for and the CPU has it natively)."""

    runtime = "openvino"
    device = torch.device("cpu")

    def __init__(self, onnx_file: Path, precision: str = "auto", threads: int | None = None) -> None:
        ov = importlib.import_module("openvino")
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
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
    """The engine of runtime `name` (not `auto`) for `model`; ONNX runtimes need `onnx_file`."""
    check_runtime(name, device, precision)
    if name == "torch":
        return TorchEngine(model, device, precision)
    if onnx_file is None:
        raise ValueError(f"runtime {name!r} needs the model's ONNX file")
    if name == "onnxruntime":
        return OnnxRuntimeEngine(onnx_file, device, threads)
    return OpenVinoEngine(onnx_file, precision, threads)
