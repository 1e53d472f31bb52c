"""From a start model to a training model: weights kept, new projections isometric, BN frozen."""

from __future__ import annotations

import torch

from model.cgd import create_cgd
from model.config import CGDConfig
from model.finetune import parameter_groups, set_backbone_trainable, set_train_mode, training_model


def test_same_descriptors_keep_the_start_weights_and_the_start_is_untouched() -> None:
    start = create_cgd(CGDConfig(descriptors="SG", embedding_dim=256))
    model = training_model(start, num_classes=7, image_size=64)
    assert model.config.image_size == 64 and start.config.image_size == 224
    assert torch.equal(model.projections[1].weight, start.projections[1].weight)
    assert model.classifier is not None and start.classifier is None
    model.projections[0].weight.data.zero_()
    assert start.projections[0].weight.abs().sum() > 0


def test_new_descriptors_start_isometric_even_when_wider_than_the_backbone() -> None:
    start = create_cgd(CGDConfig(descriptors="SG", embedding_dim=256))
    channels = start.backbone.num_features
    wide = training_model(start, num_classes=0, image_size=64, descriptors="G", embedding_dim=channels + 256)
    weight = wide.projections[0].weight
    torch.testing.assert_close(weight.T @ weight, torch.eye(channels), atol=1e-5, rtol=0)
    narrow = training_model(start, num_classes=0, image_size=64, descriptors="MG", embedding_dim=128)
    weight = narrow.projections[1].weight
    torch.testing.assert_close(weight @ weight.T, torch.eye(64), atol=1e-5, rtol=0)


def test_frozen_batchnorm_stays_in_eval_mode_and_out_of_the_optimiser() -> None:
    model = training_model(create_cgd(CGDConfig(descriptors="G", embedding_dim=64)), num_classes=3,
                           image_size=64)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    set_backbone_trainable(model, True, freeze_bn=True)
    set_train_mode(model, freeze_bn=True)
    assert norms and not any(m.training for m in norms) and model.classifier.norm.training
    assert not any(p.requires_grad for m in norms for p in m.parameters())
    groups = {g["name"]: g for g in parameter_groups(model, backbone_lr=1e-4, head_lr=1e-3, freeze_bn=True)}
    bn_ids = {id(p) for m in norms for p in m.parameters()}
    assert not bn_ids & {id(p) for p in groups["backbone"]["params"]}
    # one projection, the classifier's BatchNorm1d (weight, bias) and Linear (weight, bias)
    assert groups["heads"]["lr"] == 1e-3 and len(groups["heads"]["params"]) == 5
