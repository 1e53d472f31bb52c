"""The CGD network: every descriptor configuration, branch sizes, gradients, config errors."""

import pytest
import torch

from model import DESCRIPTOR_CONFIGS, CGDConfig, ConfigError, create_cgd


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_there_are_twelve_descriptor_configurations():
    assert len(set(DESCRIPTOR_CONFIGS)) == 12


@pytest.mark.parametrize("descriptors", DESCRIPTOR_CONFIGS)
def test_every_configuration_gives_unit_embeddings_of_size_d(descriptors, images):
    config = CGDConfig(descriptors=descriptors, embedding_dim=768, num_classes=5)
    model = create_cgd(config).train()
    out = model.forward_train(images)
    n = len(descriptors)
    assert out.embedding.shape == (2, 768)
    assert out.raw.shape == (2, 768)
    assert out.logits.shape == (2, 5)
    assert torch.isfinite(out.embedding).all()
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(2))
    for projection in model.projections:
        assert projection.weight.shape == (768 // n, model.backbone.num_features)
        assert projection.bias is None
    # Each branch is L2-normalised before the final normalisation: each has norm 1/sqrt(n).
    for branch in out.embedding.split(768 // n, dim=1):
        torch.testing.assert_close(branch.norm(dim=1), torch.full((2,), n ** -0.5))
    (out.embedding.sum() + out.logits.sum()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_classifier_reads_the_first_descriptor(images):
    model = create_cgd(CGDConfig(descriptors="MG", embedding_dim=64, num_classes=3)).eval()
    with torch.no_grad():
        first = model.forward_descriptors(images)[0]
        expected = model.classifier(first)
        torch.testing.assert_close(model.forward_train(images).logits, expected)
        torch.testing.assert_close(first, model.forward_features(images).amax(dim=(2, 3)))


def test_no_classifier_without_classes(images):
    model = create_cgd(CGDConfig(embedding_dim=64)).eval()
    assert model.classifier is None
    assert model.forward_train(images).logits is None
    model.reset_classifier(7)
    assert model.config.num_classes == 7
    assert model.eval().forward_train(images).logits.shape == (2, 7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embedding_dim": 1000, "descriptors": "SMG"}, "multiple of the number of descriptors"),
        ({"descriptors": "SX"}, "letters from S, M, G"),
        ({"descriptors": "SGMS"}, "letters from S, M, G"),
        ({"descriptors": "GG"}, "must not repeat"),
        ({"descriptors": ""}, "letters from S, M, G"),
        ({"gem_p": 0.5}, "gem_p"),
    ],
)
def test_bad_configurations_are_refused_with_a_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CGDConfig(**kwargs)


def test_config_round_trips_through_plain_dicts():
    config = CGDConfig(descriptors="gsm", embedding_dim=96, num_classes=4, learn_gem_p=True)
    assert config.descriptors == "GSM"
    assert CGDConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown model config fields"):
        CGDConfig.from_dict({**config.to_dict(), "colour": "blue"})


def test_multi_scale_descriptors_average_the_scales() -> None:
    import torch.nn.functional as F

    from model.default import default_model

    model = default_model()
    x = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        single = model(x)
        scaled = [model.forward_descriptors(F.interpolate(x, scale_factor=s, mode="bilinear",
                                                          align_corners=False, antialias=s < 1))
                  for s in (0.5,)]
        expected = model.head([(a + b) / 2 for a, b in zip(model.forward_descriptors(x), scaled[0],
                                                             strict=True)]).embedding
        model.config = model.config.with_changes(scales=(1.0, 0.5))
        multi = model(x)
    assert torch.allclose(multi, expected, atol=1e-6)
    assert not torch.allclose(multi, single, atol=1e-3)
    assert torch.allclose(multi.norm(dim=1), torch.ones(2))
