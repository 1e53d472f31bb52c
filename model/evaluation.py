"""Retrieval evaluation: embed a labelled image set, then Recall@K and MAP@R, each image querying
all the others (itself excluded). The metrics themselves (FAISS, chunked) are `model.metrics`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from model.cgd import CGD
from model.data import LabelledImage, LabelledImageDataset, class_index
from model.embedder import Embedder
from model.expansion import expanded_scores
from model.metrics import retrieval_metrics
from model.transforms import inference_transform

LOG = logging.getLogger(__name__)

DEFAULT_KS = (1, 2, 4, 8)


def as_embedder(model_or_embedder: CGD | Embedder, *, device: str = "auto",
                precision: str = "auto") -> Embedder:
    """An `Embedder` as is, or a CGD model wrapped in one (the model is put in eval mode)."""
    if isinstance(model_or_embedder, Embedder):
        return model_or_embedder
    return Embedder(model_or_embedder, "unsaved", device=device, precision=precision)


def inference_dataset(embedder: Embedder, images: Sequence[LabelledImage], *,
                      cache: bool = False) -> LabelledImageDataset:
    """`images` through the embedder's own inference transform, with integer class labels."""
    _, labels = class_index(images)
    return LabelledImageDataset(images, labels, inference_transform(embedder.model.config.preprocessing),
                                cache=cache)


def embed_dataset(
    model_or_embedder: CGD | Embedder,
    images: Sequence[LabelledImage] | LabelledImageDataset,
    batch_size: int = 64,
    *,
    num_workers: int = 0,
    device: str = "auto",
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """(N, d) float32 unit embeddings and (N,) int64 class indices, in the order of `images`."""
    embedder = as_embedder(model_or_embedder, device=device, precision=precision)
    dataset = images if isinstance(images, LabelledImageDataset) else inference_dataset(embedder, images)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks: list[np.ndarray] = []
    labels: list[torch.Tensor] = []
    for batch, batch_labels in loader:
        chunks.append(embedder.embed_tensors(batch))
        labels.append(batch_labels)
    if not chunks:
        return np.zeros((0, embedder.dim), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    return np.concatenate(chunks), torch.cat(labels).numpy().astype(np.int64)


def evaluate(
    model_or_embedder: CGD | Embedder,
    images: Sequence[LabelledImage] | LabelledImageDataset,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
    precision: str = "auto",
) -> dict[str, float]:
    """Recall@K for each K in `ks` and MAP@R (fractions in [0, 1]) over `images`, under the model's
    search defaults (query expansion, database-side augmentation) when it has any."""
    embedder = as_embedder(model_or_embedder, device=device, precision=precision)
    embeddings, labels = embed_dataset(embedder, images, batch_size, num_workers=num_workers)
    if len(np.unique(labels)) < 2:
        raise ValueError("retrieval evaluation needs images of at least 2 classes")
    config = embedder.model.config
    if config.qe_n or config.dba_n:
        metrics, _ = expanded_scores(embeddings, labels, config.qe_n, config.dba_n, ks=tuple(ks))
    else:
        metrics = retrieval_metrics(embeddings, labels, ks=tuple(ks))
    return {key: float(value) for key, value in metrics.items()}
