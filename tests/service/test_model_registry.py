"""ModelRegistry on a real data directory and real checkpoints, its records in registry.json or in a real
PostgreSQL (pgserver): copies, the active model, restarts, two processes on one database. With
PostgreSQL the active model is the gallery's live version in the same database (a real gallery store)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from index.postgres import PostgresSettings
from index.postgres_store import PostgresItemStore
from model.cgd import create_cgd
from model.checkpoint import CheckpointError, save_checkpoint
from model.config import CGDConfig, Preprocessing
from service.errors import NotFound
from service.model_registry import ModelRegistry
from service.service_db import ServiceDatabase
from tests.index.engines import create_database


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small trained-model checkpoint (random weights) with metrics."""
    config = CGDConfig(descriptors="G", embedding_dim=32, preprocessing=Preprocessing(image_size=32))
    path = tmp_path_factory.mktemp("ckpt") / "trained.pt"
    version = save_checkpoint(path, create_cgd(config), metrics={"recall@1": 0.5})
    return path, version


@dataclass
class Registries:
    """`open(data_dir)` -> a registry whose records are in registry.json or in one PostgreSQL database (each
    call opens it again: a new connection, as after a restart); `promote(registry, version)` makes a version
    active as a promotion does (with PostgreSQL: the gallery's flip, then the registry's check)."""

    open: Callable[[Path], ModelRegistry]
    store: PostgresItemStore | None = None

    def promote(self, registry: ModelRegistry, version: str) -> None:
        if self.store is not None:
            self.store.set_live_version(version, expected=self.store.live_version())
        registry.set_active(version)


@pytest.fixture(params=["file", "postgresql"])
def registries(request, tmp_path_factory) -> Iterator[Registries]:
    if request.param == "file":
        yield Registries(ModelRegistry)
        return
    url = create_database(request.getfixturevalue("postgres_server"))
    databases: list[ServiceDatabase] = []

    def reopen(root: Path) -> ModelRegistry:
        databases.append(ServiceDatabase.open(PostgresSettings(url)))
        return ModelRegistry(root, databases[-1])

    store = PostgresItemStore.open(tmp_path_factory.mktemp("gallery"), PostgresSettings(url))
    yield Registries(reopen, store)
    store.close()
    for database in databases:
        database.close()


def test_a_checkpoint_is_copied_in_and_the_active_model_survives_a_restart(tmp_path, checkpoint,
                                                                          registries):
    path, version = checkpoint
    registry = registries.open(tmp_path)
    assert registry.active is None and registry.records() == []
    default = registry.add_default("default-abc", {"embedding_dim": 1536})
    record = registry.add_checkpoint(path)
    assert record.version == version and record.metrics == {"recall@1": 0.5}
    assert record.config["embedding_dim"] == 32
    copy = tmp_path / "models" / f"{version}.pt"
    assert record.checkpoint == str(copy) and copy.read_bytes() == path.read_bytes()
    assert registry.add_checkpoint(path) == record  # known already: the first record stays
    registries.promote(registry, version)

    reopened = registries.open(tmp_path)
    assert reopened.active == record
    assert reopened.records() == [default, record]  # oldest first
    assert reopened.get("default-abc").checkpoint is None
    assert reopened.add_checkpoint(copy) == record  # the registry's own copy is not copied onto itself
    assert not list((tmp_path / "models").glob("*.tmp"))


def test_unknown_versions_and_damaged_checkpoints_are_refused(tmp_path, checkpoint, registries):
    registry = registries.open(tmp_path)
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
    assert registries.open(tmp_path).active is None


def test_replicas_on_one_database_see_the_same_records_and_active_model(tmp_path, checkpoint,
                                                                         postgres_server):
    url = create_database(postgres_server)
    with (contextlib.closing(ServiceDatabase.open(PostgresSettings(url))) as one,
          contextlib.closing(ServiceDatabase.open(PostgresSettings(url))) as two,
          contextlib.closing(PostgresItemStore.open(tmp_path / "gallery", PostgresSettings(url))) as gallery):
        first, second = ModelRegistry(tmp_path, one), ModelRegistry(tmp_path, two)
        record = first.add_checkpoint(checkpoint[0])
        first.add_default("default-abc", {})
        assert second.get(record.version) == record and second.active is None
        gallery.set_live_version(record.version, expected=None)  # a promotion's flip, seen by both
        second.set_active(record.version)
        assert first.active == record
        gallery.set_live_version("default-abc", expected=record.version)
        assert second.active.version == "default-abc" and [r.version for r in second.records()] == [
            record.version, "default-abc"]
        second.set_active(record.version)  # only a check: the gallery's live version is the active model
        assert first.active.version == "default-abc"
