"""ModelRegistry on a real data directory and real checkpoints: copies, the active model, restarts."""

from __future__ import annotations

import pytest

from model.cgd import create_cgd
from model.checkpoint import CheckpointError, save_checkpoint
from model.config import CGDConfig, Preprocessing
from service.errors import NotFound
from service.model_registry import ModelRegistry


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small trained-model checkpoint (random weights) with metrics."""
    config = CGDConfig(descriptors="G", embedding_dim=32, preprocessing=Preprocessing(image_size=32))
    path = tmp_path_factory.mktemp("ckpt") / "trained.pt"
    version = save_checkpoint(path, create_cgd(config), metrics={"recall@1": 0.5})
    return path, version


def test_a_checkpoint_is_copied_in_and_the_active_model_survives_a_restart(tmp_path, checkpoint):
    path, version = checkpoint
    registry = ModelRegistry(tmp_path)
    assert registry.active is None and registry.records() == []
    default = registry.add_default("default-abc", {"embedding_dim": 1536})
    record = registry.add_checkpoint(path)
    assert record.version == version and record.metrics == {"recall@1": 0.5}
    assert record.config["embedding_dim"] == 32
    copy = tmp_path / "models" / f"{version}.pt"
    assert record.checkpoint == str(copy) and copy.read_bytes() == path.read_bytes()
    assert registry.add_checkpoint(path) == record  # known already: the first record stays
    registry.set_active(version)

    reopened = ModelRegistry(tmp_path)
    assert reopened.active == record
    assert reopened.records() == [default, record]  # oldest first
    assert reopened.get("default-abc").checkpoint is None
    assert reopened.add_checkpoint(copy) == record  # the registry's own copy is not copied onto itself
    assert not list((tmp_path / "models").glob("*.tmp"))


def test_unknown_versions_and_damaged_checkpoints_are_refused(tmp_path, checkpoint):
    registry = ModelRegistry(tmp_path)
    with pytest.raises(NotFound, match="unknown model version"):
        registry.get("nope")
    with pytest.raises(NotFound):
        registry.set_active("nope")
    damaged = tmp_path / "damaged.pt"
    data = bytearray(checkpoint[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        registry.add_checkpoint(damaged)
    assert registry.records() == [] and not list((tmp_path / "models").glob("*.pt"))
    assert ModelRegistry(tmp_path).active is None
