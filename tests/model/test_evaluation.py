"""embed_dataset / evaluate on real images, checked against a brute-force NumPy retrieval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.cgd import create_cgd
from model.config import CGDConfig, Preprocessing
from model.data import read_labels_csv
from model.embedder import Embedder
from model.evaluation import embed_dataset, evaluate


@pytest.fixture(scope="module")
def tiny_model():
    config = CGDConfig(descriptors="G", embedding_dim=32, preprocessing=Preprocessing(image_size=32))
    return create_cgd(config, pretrained=True)


def test_embeddings_are_unit_rows_in_input_order(gtsrb_dir: Path, tiny_model) -> None:
    images = read_labels_csv(gtsrb_dir, "test")[::40]
    embeddings, labels = embed_dataset(tiny_model, images, batch_size=7, precision="fp32")
    assert embeddings.shape == (len(images), 32) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    names = sorted({i.label for i in images})
    assert [names[k] for k in labels] == [i.label for i in images]
    single = Embedder(tiny_model, "t", precision="fp32")
    again, _ = embed_dataset(single, images[:5], batch_size=2)
    np.testing.assert_allclose(again, embeddings[:5], atol=1e-5)


def test_evaluate_matches_brute_force(gtsrb_dir: Path, tiny_model) -> None:
    images = read_labels_csv(gtsrb_dir, "test")[::8]
    metrics = evaluate(tiny_model, images, ks=(1, 4), batch_size=64, precision="fp32")
    embeddings, labels = embed_dataset(tiny_model, images, precision="fp32")
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = labels[order] == labels[:, None]
    assert set(metrics) == {"recall@1", "recall@4", "map@r"}
    assert metrics["recall@1"] == pytest.approx(hits[:, 0].mean(), abs=2 / len(images))
    assert metrics["recall@4"] == pytest.approx(hits[:, :4].any(axis=1).mean(), abs=2 / len(images))
    r = (labels[:, None] == labels[None, :]).sum(axis=1) - 1
    ap = [(np.cumsum(h[:k]) / np.arange(1, k + 1) * h[:k]).sum() / k for h, k in zip(hits, r, strict=True)]
    assert metrics["map@r"] == pytest.approx(float(np.mean(ap)), abs=0.01)


def test_evaluate_needs_two_classes(gtsrb_dir: Path, tiny_model) -> None:
    images = [i for i in read_labels_csv(gtsrb_dir, "test") if i.label.startswith("21_")][:5]
    with pytest.raises(ValueError, match="2 classes"):
        evaluate(tiny_model, images)
