"""The embedded default model: CGD over offline-pretrained tf_efficientnet_lite0.

Its projections are fixed, not trained: orthogonal matrices made on the CPU in float64 from a
fixed seed, so every fresh install produces the same embeddings. It retrieves well out of the
box because orthogonal projections keep the descriptors' geometry; fine-tuning (`POST /train`
or `cgd train`) is what turns it into a trained CGD.
"""

from __future__ import annotations

import torch

from model.cgd import CGD, create_cgd
from model.config import CGDConfig

DEFAULT_CONFIG = CGDConfig()
PROJECTION_SEED = 20190326  # arXiv 1903.10663


def orthogonal_projection(out_features: int, in_features: int, seed: int) -> torch.Tensor:
    """(out, in) float32 matrix with orthonormal rows, reproducible from `seed`.

    A float64 Gaussian from a CPU generator, QR-factorised, with the signs of R's diagonal
    folded in so the result is unique (Haar-distributed), then rounded to float32.
    """
    if out_features > in_features:
        raise ValueError(f"cannot make {out_features} orthonormal rows in {in_features} dimensions")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    gaussian = torch.randn(in_features, out_features, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.T.contiguous().to(torch.float32)


def init_projections(model: CGD, seed: int = PROJECTION_SEED) -> None:
    """Set every branch projection to its own deterministic orthogonal matrix."""
    with torch.no_grad():
        for branch, projection in enumerate(model.projections):
            out_features, in_features = projection.weight.shape
            projection.weight.copy_(orthogonal_projection(out_features, in_features, seed + branch))


def default_model(config: CGDConfig = DEFAULT_CONFIG) -> CGD:
    """A CGD model with offline ImageNet weights and deterministic projections, in eval mode."""
    model = create_cgd(config, pretrained=True)
    init_projections(model)
    return model.eval()
