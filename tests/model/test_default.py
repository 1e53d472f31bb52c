"""The embedded default model: deterministic, orthogonal, identical across fresh builds."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from model import Embedder, default_model
from model.default import orthogonal_projection

# sha256 of the float32 bytes of the default model's two projections ("SG", 1280 -> 768 each).
PROJECTIONS_SHA256 = "a8356314a7ecb0789218252314ce876af47b281b7c3a9a210b5aa9230b87dcbc"


@pytest.fixture(scope="module")
def photos(caltech_dir) -> list[Image.Image]:
    paths = sorted((caltech_dir / "images" / "airplanes").glob("*.jpg"))[:3]
    paths += sorted((caltech_dir / "images" / "ant").glob("*.jpg"))[:3]
    return [Image.open(p).convert("RGB") for p in paths]


def test_projections_are_orthogonal_and_reproducible():
    w = orthogonal_projection(768, 1280, seed=7).double()
    torch.testing.assert_close(w @ w.T, torch.eye(768, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.equal(orthogonal_projection(768, 1280, seed=7), orthogonal_projection(768, 1280, seed=7))
    assert not torch.equal(orthogonal_projection(768, 1280, seed=7), orthogonal_projection(768, 1280, seed=8))
    with pytest.raises(ValueError, match="orthonormal rows"):
        orthogonal_projection(10, 5, seed=0)


def test_projection_checksum_is_stable():
    model = default_model()
    digest = hashlib.sha256()
    for projection in model.projections:
        digest.update(projection.weight.detach().numpy().tobytes())
    assert digest.hexdigest() == PROJECTIONS_SHA256


def test_two_fresh_default_models_embed_identically(photos):
    first = Embedder(default_model(), "a", device="cpu", precision="fp32").embed_images(photos)
    second = Embedder(default_model(), "b", device="cpu", precision="fp32").embed_images(photos)
    assert first.dtype == np.float32 and first.shape == (6, 1536)
    assert np.array_equal(first, second)


def test_bf16_embeddings_stay_close_to_fp32(photos):
    fp32 = Embedder(default_model(), "a", device="cpu", precision="fp32").embed_images(photos)
    bf16 = Embedder(default_model(), "a", device="cpu", precision="bf16").embed_images(photos)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    cosine = (fp32 * bf16).sum(axis=1)
    assert cosine.mean() >= 0.998
    assert cosine.min() >= 0.99


def test_default_model_already_retrieves_same_class_images(photos):
    vectors = Embedder.load(device="cpu").embed_images(photos)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -1)
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert (labels[similarity.argmax(axis=1)] == labels).all()


def test_default_version_is_a_content_hash():
    assert Embedder.load(device="cpu").version == Embedder.load(device="cpu").version
    assert Embedder.load(device="cpu").version.startswith("default-")
