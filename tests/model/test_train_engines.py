"""The cached engine embeds as the plain forward does, and trains only the backbone's tail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.data import class_index, read_labels_csv
from model.default import default_model
from model.embedder import Embedder
from model.evaluation import embed_dataset
from model.feature_cache import build_cache
from model.finetune import training_model
from model.stages import split_backbone
from model.train_engines import CachedEngine

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images(gtsrb_dir: Path):
    return read_labels_csv(gtsrb_dir, "train")[::60][:24]


@pytest.fixture(scope="module")
def engine(images, tmp_path_factory: pytest.TempPathFactory) -> CachedEngine:
    model = training_model(default_model(), num_classes=0, image_size=96)
    split = split_backbone(model.backbone)
    cache = build_cache(tmp_path_factory.mktemp("cache"), images, images, split.trunk,
                        model.config.preprocessing, stride=split.stride, channels=split.channels, views=2,
                        device=CPU)
    _, labels = class_index(images)
    return CachedEngine(model, split, cache, labels, device=CPU, dtype=torch.float32, freeze_bn=True, seed=0,
                        eval_batch_size=8, tail_stages=2)


def test_the_split_halves_compose_to_the_backbone() -> None:
    model = default_model()
    split = split_backbone(model.backbone)
    assert split is not None and split.stride == 16 and split.channels == 112
    x = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        assert torch.equal(split.tail(split.trunk(x)), model.backbone(x))


def test_cached_validation_embeddings_match_the_plain_forward(engine: CachedEngine, images) -> None:
    cached = engine.val_embeddings()
    plain, _ = embed_dataset(Embedder(engine.model, "plain", device="cpu", precision="fp32"), images)
    assert cached.shape == plain.shape == (len(images), 1536)
    assert float((cached * plain).sum(axis=1).min()) >= 0.999


def test_the_start_model_is_measured_from_the_same_cache(engine: CachedEngine, images) -> None:
    start = training_model(default_model(), num_classes=0, image_size=96)
    cached = engine.val_embeddings_of(start)
    plain, _ = embed_dataset(Embedder(start, "plain", device="cpu", precision="fp32"), images)
    assert float((cached * plain).sum(axis=1).min()) >= 0.999
    assert engine.val_embeddings_of(default_model()) is None  # 224 px: another size, no cache


def test_batches_are_random_windows_of_the_cached_views(engine: CachedEngine) -> None:
    rng = np.random.default_rng(0)
    batch = engine.cache.batch([0, 1, 2, 3], rng)
    assert batch.shape == (4, 112, 6, 6) and batch.dtype == torch.float32
    assert engine.cache.train.shape == (24, 2, 112, 8, 8)
    windows = {tuple(engine.cache.batch([0], np.random.default_rng(seed))[0, 0, 0, :2].tolist())
               for seed in range(20)}
    assert len(windows) > 1


def test_only_the_tail_trains(engine: CachedEngine) -> None:
    engine.set_trainable(True)
    engine.model.train()
    inputs, _ = next(iter(engine.batches(_two_class_sampler(engine))))
    engine.forward(inputs).embedding.sum().backward()
    trunk_grads = [p.grad for p in engine.split.trunk.parameters()]
    tail_grads = [p.grad for p in engine.split.tail.parameters() if p.requires_grad]
    assert all(g is None for g in trunk_grads)
    assert tail_grads and all(g is not None for g in tail_grads)
    engine.model.zero_grad(set_to_none=True)


def _two_class_sampler(engine: CachedEngine):
    from model.sampler import ClassBalancedBatchSampler

    return ClassBalancedBatchSampler(engine.labels, 2, 2, seed=0)
