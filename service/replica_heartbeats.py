"""Replicas' heartbeats in the service's PostgreSQL tables: which replicas run, and which are gone.

A replica records one when it starts (before it opens the gallery) and every `HEARTBEAT_S` while it
runs (`service.replica_sync`), stamped by the database's clock so that the hosts' clocks need not agree.
`cgd replicas` lists them and removes what replicas silent for long have left behind.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.service_db import ServiceDatabase

HEARTBEAT_S = 10.0
_NOW = "extract(epoch FROM clock_timestamp())"


@dataclass(frozen=True)
class Heartbeat:
    """A replica's name and the seconds since its last heartbeat (by the database's clock)."""

    name: str
    silent_s: float


class ReplicaHeartbeats:
    """The `replicas` table: one row per replica name, its last heartbeat."""

    def __init__(self, database: ServiceDatabase) -> None:
        self._database = database

    def beat(self, name: str) -> None:
        with self._database.connection() as conn:
            conn.execute(f"INSERT INTO replicas (name, heartbeat_at) VALUES (%s, {_NOW}) "
                         "ON CONFLICT (name) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at", (name,))

    def list(self) -> list[Heartbeat]:
        """Every replica that recorded a heartbeat, by name."""
        with self._database.connection() as conn:
            rows = conn.execute(f"SELECT name, {_NOW} - heartbeat_at FROM replicas ORDER BY name").fetchall()
        return [Heartbeat(row[0], max(0.0, float(row[1]))) for row in rows]

    def forget(self, name: str) -> None:
        with self._database.connection() as conn:
            conn.execute("DELETE FROM replicas WHERE name = %s", (name,))
