"""CGD: Combination of multiple Global Descriptors (Jun et al., arXiv 1903.10663).

backbone map (B, C, h, w) -> n global descriptors (B, C) -> per-branch FC without bias (C -> d/n)
-> L2-normalise each -> concatenate -> L2-normalise: the (B, d) embedding. An auxiliary
classifier (BatchNorm1d(C) -> Linear(C, classes)) reads the FIRST descriptor before its FC.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.backbones import Backbone, Pretrained, create_backbone
from model.config import CGDConfig
from model.pooling import create_pool


class CGDOutput(NamedTuple):
    """What one training forward pass yields.

    embedding: (B, d) L2-normalised; raw: (B, d) concatenated branch projections before any
    normalisation (what MDR regularises); logits: (B, num_classes) or None without a classifier.
    """

    embedding: torch.Tensor
    raw: torch.Tensor
    logits: torch.Tensor | None


class AuxClassifier(nn.Module):
    """BatchNorm1d(C) -> Linear(C, num_classes), on the first descriptor."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class Whitening(nn.Module):
    """Learned whitening (Radenovic et al., TPAMI 2018): x -> L2norm(P (x - mu)), P (d, d).

    Starts as the identity (mu = 0, P = I); `model.selection.choose_whitening` fits mu and P."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("projection", torch.eye(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.normalize((x.float() - self.mean) @ self.projection.T, dim=1)


class CGD(nn.Module):
    """The CGD network for one `CGDConfig` over one `Backbone`."""

    def __init__(self, config: CGDConfig, backbone: Backbone) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        channels = backbone.num_features
        self.pools = nn.ModuleList(
            create_pool(letter, gem_p=config.gem_p, learn_gem_p=config.learn_gem_p)
            for letter in config.descriptors
        )
        self.projections = nn.ModuleList(
            nn.Linear(channels, config.branch_dim, bias=False) for _ in config.descriptors
        )
        self.classifier = AuxClassifier(channels, config.num_classes) if config.num_classes else None
        self.whitening = Whitening(config.embedding_dim) if config.whitening else None

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> backbone map (B, C, h, w)."""
        return self.backbone(x)

    def pool(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Backbone map (B, C, h, w) -> one (B, C) float32 global descriptor per configured letter."""
        # Pooling and head run in float32 even under autocast: they are cheap, and x^p or a
        # 1000-channel projection in bf16 would cost embedding fidelity.
        with torch.autocast(device_type=features.device.type, enabled=False):
            return [pool(features.float()) for pool in self.pools]

    def forward_descriptors(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> one (B, C) float32 global descriptor per configured letter."""
        return self.pool(self.forward_features(x))

    def forward_head(self, features: torch.Tensor) -> CGDOutput:
        """Backbone map (B, C, h, w) -> embedding, raw concatenation and auxiliary logits."""
        return self.head(self.pool(features))

    def head(self, descriptors: list[torch.Tensor]) -> CGDOutput:
        """One (B, C) descriptor per letter -> embedding, raw concatenation and auxiliary logits."""
        with torch.autocast(device_type=descriptors[0].device.type, enabled=False):
            branches = [proj(desc) for proj, desc in zip(self.projections, descriptors, strict=True)]
            raw = torch.cat(branches, dim=1)
            embedding = F.normalize(torch.cat([F.normalize(b, dim=1) for b in branches], dim=1), dim=1)
            logits = self.classifier(descriptors[0]) if self.classifier is not None else None
        return CGDOutput(embedding, raw, logits)

    def forward_train(self, x: torch.Tensor) -> CGDOutput:
        """Embedding (before whitening), raw concatenation and auxiliary logits for one batch."""
        return self.forward_head(self.forward_features(x))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone map (B, C, h, w) -> (B, d) unit-norm embedding, whitened when the model has it."""
        embedding = self.forward_head(features).embedding
        return embedding if self.whitening is None else self.whitening(embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, d) unit-norm embedding (whitened when the model has learned whitening).
        With several `config.scales`, each descriptor is averaged over the input resized by each
        scale before the projections and normalisations (multi-scale descriptors)."""
        if self.config.scales == (1.0,):
            return self.embed_features(self.forward_features(x))
        per_scale = [self.forward_descriptors(x if scale == 1.0 else F.interpolate(
            x, scale_factor=scale, mode="bilinear", align_corners=False, antialias=scale < 1.0))
            for scale in self.config.scales]
        descriptors = [torch.stack(same).mean(dim=0) for same in zip(*per_scale, strict=True)]
        embedding = self.head(descriptors).embedding
        return embedding if self.whitening is None else self.whitening(embedding)

    def set_whitening(self, mean: torch.Tensor | None, projection: torch.Tensor | None = None) -> None:
        """Apply learned whitening `L2norm(projection @ (e - mean))` after the embedding (None removes it)."""
        if mean is None:
            self.config = self.config.with_changes(whitening=False)
            self.whitening = None
            return
        self.config = self.config.with_changes(whitening=True)
        whitening = Whitening(self.config.embedding_dim)
        whitening.mean.copy_(mean)
        whitening.projection.copy_(projection)
        self.whitening = whitening.to(next(self.parameters()).device)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the auxiliary classifier (0 removes it) and record it in the config."""
        self.config = self.config.with_changes(num_classes=num_classes)
        channels = self.backbone.num_features
        self.classifier = AuxClassifier(channels, num_classes) if num_classes else None


def create_cgd(config: CGDConfig, pretrained: Pretrained = False) -> CGD:
    """Build a CGD model; the backbone's preprocessing defaults fill the config's normalisation."""
    backbone = create_backbone(config.backbone, pretrained=pretrained)
    pre = backbone.preprocessing
    resolved = config.with_changes(
        preprocessing=replace(
            config.preprocessing, interpolation=pre.interpolation, mean=pre.mean, std=pre.std
        )
    )
    return CGD(resolved, backbone)
