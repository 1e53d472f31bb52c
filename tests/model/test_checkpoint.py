"""Checkpoints: bit-exact round trip, content-hash versions, clear errors for bad files."""

import pytest
import torch

from model import CGDConfig, CheckpointError, create_cgd, load_checkpoint, save_checkpoint
from model.checkpoint import read_checkpoint


@pytest.fixture(scope="module")
def trained_like_model():
    torch.manual_seed(3)
    model = create_cgd(CGDConfig(descriptors="GM", embedding_dim=128, num_classes=3, learn_gem_p=True))
    with torch.no_grad():
        for projection in model.projections:
            projection.weight.normal_()
    return model.eval()


def test_round_trip_is_bit_exact(tmp_path, trained_like_model):
    path = tmp_path / "model.pt"
    version = save_checkpoint(path, trained_like_model, classes=["a", "b", "c"], metrics={"map@r": 0.5})
    loaded = load_checkpoint(path)
    assert loaded.version == version and len(version) == 12
    assert loaded.classes == ["a", "b", "c"]
    assert loaded.metrics == {"map@r": 0.5}
    assert loaded.config == trained_like_model.config
    original, restored = trained_like_model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(trained_like_model(x), loaded.model(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_version_changes_with_the_weights(tmp_path, trained_like_model):
    first = save_checkpoint(tmp_path / "a.pt", trained_like_model)
    assert save_checkpoint(tmp_path / "b.pt", trained_like_model) == first
    other = create_cgd(trained_like_model.config)
    assert save_checkpoint(tmp_path / "c.pt", other) != first


def test_truncated_file_is_refused(tmp_path, trained_like_model):
    path = tmp_path / "model.pt"
    save_checkpoint(path, trained_like_model)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_tampered_weights_are_detected(tmp_path, trained_like_model):
    path = tmp_path / "model.pt"
    save_checkpoint(path, trained_like_model)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["projections.0.weight"][0, 0] += 1.0
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "not a readable checkpoint"), (b"hello, I am a text file", "not a readable checkpoint")],
)
def test_foreign_files_are_refused(tmp_path, content, message):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)


def test_a_plain_state_dict_is_not_a_checkpoint(tmp_path, trained_like_model):
    path = tmp_path / "weights.pt"
    torch.save(trained_like_model.state_dict(), path)
    with pytest.raises(CheckpointError, match="not a CGD checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
