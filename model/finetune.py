"""From a start model to a trainable one: descriptor/size changes, parameter groups, frozen BN."""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from model.cgd import CGD
from model.default import PROJECTION_SEED, orthogonal_projection

LOG = logging.getLogger(__name__)


def training_model(
    start: CGD, *, num_classes: int, image_size: int, descriptors: str | None = None,
    embedding_dim: int | None = None,
) -> CGD:
    """A copy of `start` (which is left untouched) at `image_size` with a fresh auxiliary
    classifier for `num_classes`. When the descriptors or the dimension change, the backbone is
    kept and the new projections start orthogonal (as the embedded default's)."""
    base = start.config
    config = base.with_changes(
        descriptors=descriptors or base.descriptors,
        embedding_dim=embedding_dim or base.embedding_dim,
        preprocessing=replace(base.preprocessing, image_size=image_size),
        num_classes=0,
    )
    model = CGD(config, copy.deepcopy(start.backbone))
    if (config.descriptors, config.embedding_dim) == (base.descriptors, base.embedding_dim):
        model.pools.load_state_dict(start.pools.state_dict())
        model.projections.load_state_dict(start.projections.state_dict())
    else:
        LOG.info("descriptors %s/%d -> %s/%d: new orthogonal projections", base.descriptors,
                 base.embedding_dim, config.descriptors, config.embedding_dim)
        init_isometric_projections(model)
    model.reset_classifier(num_classes)
    return model


def init_isometric_projections(model: CGD, seed: int = PROJECTION_SEED) -> None:
    """Each branch projection (out, in) gets orthonormal rows (out <= in) or, when a branch is
    wider than the backbone (e.g. "G" at 1536-d over 1280 channels), orthonormal columns: either
    way the start keeps the descriptors' geometry."""
    with torch.no_grad():
        for branch, projection in enumerate(model.projections):
            out_features, in_features = projection.weight.shape
            if out_features <= in_features:
                weight = orthogonal_projection(out_features, in_features, seed + branch)
            else:
                weight = orthogonal_projection(in_features, out_features, seed + branch).T
            projection.weight.copy_(weight)


def backbone_norms(model: CGD) -> list[nn.Module]:
    """The backbone's normalisation layers (BatchNorm and timm's BatchNormAct variants)."""
    return [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_train_mode(model: CGD, *, freeze_bn: bool) -> None:
    """Training mode, with the backbone's BatchNorm layers kept in eval mode when frozen."""
    model.train()
    if freeze_bn:
        for norm in backbone_norms(model):
            norm.eval()


def set_backbone_trainable(model: CGD, trainable: bool, *, freeze_bn: bool,
                           part: nn.Module | None = None) -> None:
    """(Un)freeze the backbone, or only `part` of it; frozen BatchNorm affine parameters stay frozen."""
    frozen_bn = {id(p) for m in backbone_norms(model) for p in m.parameters()} if freeze_bn else set()
    for parameter in (part or model.backbone).parameters():
        parameter.requires_grad_(trainable and id(parameter) not in frozen_bn)


def parameter_groups(model: CGD, *, backbone_lr: float, head_lr: float,
                     freeze_bn: bool) -> list[dict[str, Any]]:
    """Optimiser groups: backbone (minus frozen BN) at `backbone_lr`; pools, projections and the
    auxiliary classifier at `head_lr`. Each group is named for logging."""
    frozen_bn = {id(p) for m in backbone_norms(model) for p in m.parameters()} if freeze_bn else set()
    backbone = [p for p in model.backbone.parameters() if id(p) not in frozen_bn]
    heads = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
    return [
        {"name": "backbone", "params": backbone, "lr": backbone_lr},
        {"name": "heads", "params": heads, "lr": head_lr},
    ]
