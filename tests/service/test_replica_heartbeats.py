"""ReplicaHeartbeats on a real PostgreSQL (pgserver): the database's clock stamps each beat."""

from __future__ import annotations

import contextlib
import time

from index.postgres import PostgresSettings
from service.replica_heartbeats import ReplicaHeartbeats
from service.service_db import ServiceDatabase
from tests.index.engines import create_database


def test_beats_are_listed_by_name_with_their_age_and_forgotten(postgres_server) -> None:
    url = create_database(postgres_server)
    with contextlib.closing(ServiceDatabase.open(PostgresSettings(url))) as database:
        heartbeats = ReplicaHeartbeats(database)
        assert heartbeats.list() == []
        heartbeats.beat("b")
        heartbeats.beat("a")
        time.sleep(0.3)
        heartbeats.beat("a")  # again: one row, silent since now
        beats = {beat.name: beat.silent_s for beat in heartbeats.list()}
        assert list(beats) == ["a", "b"] and beats["a"] < 0.2 <= beats["b"] < 30
        heartbeats.forget("b")
        assert [beat.name for beat in heartbeats.list()] == ["a"]
