"""`Embedder`: one model on one device, turning images into float32 unit vectors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.cgd import CGD
from model.checkpoint import load_checkpoint, model_version
from model.default import default_model
from model.device import autocast, resolve_device, resolve_precision
from model.transforms import inference_transform

LOG = logging.getLogger(__name__)


class Embedder:
    """Inference wrapper: preprocessing, device, channels_last and autocast for a `CGD` model.

    Embeddings are always returned as float32 unit rows, whatever the compute dtype.
    """

    def __init__(
        self,
        model: CGD,
        version: str,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        classes: Sequence[str] = (),
    ) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = resolve_precision(self.device, precision)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.version = version
        self.classes = list(classes)
        self._transform = inference_transform(model.config.preprocessing)

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, *, device: str = "auto",
             precision: str = "auto") -> Embedder:
        """From a checkpoint file, or the embedded default model when `checkpoint` is None."""
        if checkpoint is None:
            model = default_model()
            version = "default-" + model_version(model.config, model.state_dict())
            return cls(model, version, device=device, precision=precision)
        loaded = load_checkpoint(checkpoint)
        return cls(loaded.model, loaded.version, device=device, precision=precision,
                   classes=loaded.classes)

    @property
    def dim(self) -> int:
        return self.model.embedding_dim

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> (3, S, S) float32 tensor on the CPU."""
        return self._transform(image.convert("RGB"))

    @torch.inference_mode()
    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) preprocessed images -> (B, d) float32 unit rows."""
        batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            embedding = self.model(batch)
        embedding = F.normalize(embedding.float(), dim=1)
        return np.ascontiguousarray(embedding.cpu().numpy(), dtype=np.float32)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """PIL images -> (N, d) float32 unit rows, in batches of `batch_size`."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = [
            self.embed_tensors(torch.stack([self.preprocess(img) for img in images[i:i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(chunks)
