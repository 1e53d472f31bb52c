"""`Embedder`: one model on one device and inference runtime, turning images into float32 unit vectors."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.cgd import CGD
from model.checkpoint import load_checkpoint, model_version
from model.default import default_model
from model.device import resolve_device
from model.onnx_export import adopt_onnx, ensure_onnx, export_path
from model.quantize import ensure_int8_onnx
from model.runtime_select import MAX_SAMPLES, SHIPPED, RuntimeChoice, select_engine
from model.runtimes import check_runtime, create_engine
from model.sample_images import sample_images
from model.transforms import Normalizer, inference_pixels

LOG = logging.getLogger(__name__)


class Embedder:
    """Inference wrapper: preprocessing and one engine (`model.runtimes`) for a `CGD` model.

    `runtime`: `torch` (the default), `onnxruntime`, `openvino`, `tensorrt` (CUDA), or `auto` (the
    fastest that agrees with torch fp32, measured by `model.runtime_select`; `choice` says what it chose
    and why). `precision` `int8` (only when asked for; `auto` then means onnxruntime) quantizes the model
    on `calibration` images ((N, 3, S, S) of `preprocess`). Both default to real images: `samples()`
    (e.g. up to 32 gallery images, read only when needed), else the photos shipped with the package
    (`model.sample_images`). ONNX files and the auto choice are cached in `cache_dir` (default: a
    `cgd-engines` folder in the temporary directory); `load` takes the ONNX file exported beside a
    checkpoint into it (`model.onnx_export.adopt_onnx`). Embeddings are always float32 unit rows,
    whatever the runtime and compute dtype.
    """

    def __init__(
        self,
        model: CGD,
        version: str,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        classes: Sequence[str] = (),
        runtime: str = "torch",
        cache_dir: Path | None = None,
        threads: int | None = None,
        calibration: torch.Tensor | None = None,
        samples: Callable[[], Sequence[Image.Image]] | None = None,
    ) -> None:
        device = device if isinstance(device, torch.device) else resolve_device(device)
        cache_dir = engine_cache(cache_dir)
        self.model = model.eval()
        self.version = version
        self.classes = list(classes)
        self.choice: RuntimeChoice | None = None
        self._pixels = inference_pixels(model.config.preprocessing)
        self._normalize = Normalizer(model.config.preprocessing)
        self._samples = samples
        if runtime == "auto" and precision == "int8":
            runtime = "onnxruntime"  # the one runtime with int8 here; asked for, so not measured against fp32
        if runtime == "auto":
            self.engine, self.choice = select_engine(model, version, device, precision=precision,
                                                     cache_dir=cache_dir, threads=threads,
                                                     samples=self._sample_batch)
        else:
            check_runtime(runtime, device, precision)  # before any export: a clear error at once
            onnx_file = None if runtime == "torch" else ensure_onnx(model, version, cache_dir)
            if precision == "int8":
                batch = (self._normalize(calibration) if calibration is not None
                         else self._sample_batch()[0])
                onnx_file = ensure_int8_onnx(version, cache_dir, batch)
            self.engine = create_engine(runtime, model, device, precision=precision, onnx_file=onnx_file,
                                        threads=threads)

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, *, device: str = "auto",
             precision: str = "auto", runtime: str = "torch", cache_dir: Path | None = None,
             threads: int | None = None, scales: Sequence[float] | None = None,
             calibration: torch.Tensor | None = None,
             samples: Callable[[], Sequence[Image.Image]] | None = None) -> Embedder:
        """From a checkpoint file, or the embedded default model when `checkpoint` is None; `scales`
        replaces the model's inference scales (multi-scale descriptors) and so its version. An ONNX
        runtime uses the file exported with the checkpoint when it is there and of this version."""
        engine = {"runtime": runtime, "cache_dir": cache_dir, "threads": threads, "calibration": calibration,
                  "samples": samples}
        if checkpoint is None:
            model, classes, version = default_model(), [], None
        else:
            loaded = load_checkpoint(checkpoint)
            model, classes, version = loaded.model, loaded.classes, loaded.version
        if scales is not None and tuple(scales) != model.config.scales:
            model.config = model.config.with_changes(scales=tuple(scales))
            version = None
        if version is None:
            version = version_of(model, default=checkpoint is None)
        if checkpoint is not None and runtime != "torch":
            adopt_onnx(export_path(Path(checkpoint)), version, engine_cache(cache_dir))
        return cls(model, version, device=device, precision=precision, classes=classes, **engine)

    def _sample_batch(self) -> tuple[torch.Tensor, str]:
        """Up to `MAX_SAMPLES` real images as the model's input, and where they come from."""
        images = list(self._samples()[:MAX_SAMPLES]) if self._samples is not None else []
        source = "gallery"
        if not images:
            images, source = sample_images(), SHIPPED
        return self.model_input(torch.stack([self.preprocess(image) for image in images])), source

    @property
    def runtime(self) -> str:
        """The inference runtime in use: torch, onnxruntime, openvino or tensorrt."""
        return self.engine.runtime

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of the engine."""
        return self.engine.dtype

    @property
    def precision(self) -> str:
        """The engine's precision: fp32, bf16, fp16 or int8."""
        return self.engine.precision

    @property
    def dim(self) -> int:
        return self.model.embedding_dim

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def qe_n(self) -> int:
        """The model's default query expansion: neighbours added to a query (0 = off)."""
        return self.model.config.qe_n

    @property
    def dba_n(self) -> int:
        """The model's default database-side augmentation: neighbours added to each gallery item."""
        return self.model.config.dba_n

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> (3, S, S) uint8 tensor on the CPU, resized and cropped (`embed_tensors` normalises
        whole batches, cheaper than image by image)."""
        return self._pixels(image if image.mode == "RGB" else image.convert("RGB"))

    def model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 pixels of `preprocess` -> the model's normalised float32 input (a float batch,
        e.g. of `model.transforms.inference_transform`, is taken as already normalised)."""
        return self._normalize(batch)

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) images of `preprocess` (uint8) or normalised floats -> (B, d) float32 unit rows."""
        return self.engine.run(self._normalize(batch))

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """PIL images -> (N, d) float32 unit rows, in batches of `batch_size`."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = [
            self.embed_tensors(torch.stack([self.preprocess(img) for img in images[i:i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(chunks)


def engine_cache(cache_dir: Path | None) -> Path:
    """`cache_dir`, or by default a `cgd-engines` folder in the temporary directory."""
    return cache_dir if cache_dir is not None else Path(tempfile.gettempdir()) / "cgd-engines"


def version_of(model: CGD, *, default: bool) -> str:
    """A model's version: the hash of its config and weights, `default-` first for the embedded default."""
    return ("default-" if default else "") + model_version(model.config, model.state_dict())
