"""BatchNorm folding: the folded default model embeds real photos as the original does; a model whose
forward order is not its registration order is left as it is."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from model.bn_fold import fold_batchnorm
from model.default import default_model
from model.transforms import inference_transform


def test_the_folded_default_model_has_no_batchnorm_and_the_same_embeddings(caltech_dir: Path):
    model = default_model()
    transform = inference_transform(model.config.preprocessing)
    with (caltech_dir / "labels.csv").open(newline="") as handle:
        paths = [caltech_dir / row["path"] for row, _ in zip(csv.DictReader(handle), range(4), strict=False)]
    batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
    folded = fold_batchnorm(model, batch[:2])
    assert folded is not model
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert any(isinstance(module, nn.BatchNorm2d) for module in model.modules())  # the original is kept
    with torch.inference_mode():
        cosine = nn.functional.cosine_similarity(model(batch), folded(batch), dim=1)
    assert cosine.min() >= 0.99999


class _NormThenConv(nn.Module):
    """Registered conv, norm; runs norm, then conv: folding the pair would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.norm = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.norm.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
            self.norm.running_var.copy_(torch.tensor([0.2, 3.0, 1.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x)).mean(dim=(2, 3))


def test_a_fold_that_changes_the_output_is_refused():
    model = _NormThenConv()
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert fold_batchnorm(model, sample) is model
