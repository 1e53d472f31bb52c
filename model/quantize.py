"""int8 ONNX models for ONNX Runtime: static QDQ quantization calibrated on sample images.

Weights int8 per output channel, activations uint8 per tensor with min/max ranges from calibration
images run through the fp32 export (`model.onnx_export`). Only made when `CGD_PRECISION=int8` asks for
it: int8 costs retrieval quality (docs/BENCHMARKS.md states how much), so `auto` never picks it. The
file is cached per model version beside the fp32 export; the calibration images of its first making
are the ones it keeps.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.onnx_export import onnx_path

LOG = logging.getLogger(__name__)

CALIBRATION_BATCH = 8


class QuantizationError(RuntimeError):
    """The int8 model could not be made (the `onnxruntime.quantization` tools failed)."""


def int8_path(cache_dir: Path, version: str) -> Path:
    """Where the int8 ONNX file of model `version` is cached."""
    return cache_dir / f"{version}.int8.onnx"


def ensure_int8_onnx(version: str, cache_dir: Path, calibration: torch.Tensor) -> Path:
    """The cached int8 file of `version`, quantized from its fp32 export with `calibration`
    ((N, 3, S, S) preprocessed images) when missing. The fp32 export must exist."""
    path = int8_path(cache_dir, version)
    if path.is_file():
        return path
    source = onnx_path(cache_dir, version)
    if not source.is_file():
        raise QuantizationError(f"no fp32 ONNX export of model {version} in {cache_dir} to quantize")
    quantization = importlib.import_module("onnxruntime.quantization")
    started = time.perf_counter()
    images = np.ascontiguousarray(calibration.detach().cpu().numpy(), dtype=np.float32)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        partial = Path(tmp) / "int8.onnx"
        try:
            quantization.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantization.quantize_static(
                str(prepared), str(partial), _Batches(images),
                quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax)
        except Exception as exc:  # the quantization tools raise many types
            raise QuantizationError(f"int8 quantization of model {version} failed: {exc}") from exc
        os.replace(partial, path)
    LOG.info("quantized model %s to int8 (%d calibration images) in %.1f s", version, len(images),
             time.perf_counter() - started)
    return path


class _Batches:
    """`onnxruntime.quantization.CalibrationDataReader`: the calibration images in batches."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter([{"images": images[i:i + CALIBRATION_BATCH]}
                              for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)
