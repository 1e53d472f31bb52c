"""`cgd replicas`: the replicas of a PostgreSQL gallery, and the removal of what gone ones left behind.

Every replica records a heartbeat in the database when it starts and every 10 s while it runs
(`service.replica_heartbeats`). `cgd replicas` prints one JSON document: for each replica with a
heartbeat or a folder under `<data_dir>/gallery/replicas/`, the seconds since its last heartbeat (null if
it never recorded one: a replica of an earlier version, judged by its folder's age) and whether it is
stale, silent for longer than `--stale-after-minutes` (default 10). With `--remove-stale`, each stale
replica's folder and, with pgvector or Milvus, its tables or collections are removed
(`index.replicas.remove_replica`) and its heartbeat forgotten; one still running on this host keeps
everything (its lock is held). Run it with the replicas' settings (CGD_DATABASE_URL, CGD_DATA_DIR,
CGD_VECTOR_BACKEND, CGD_MILVUS_URI), from any host that mounts the shared volume.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from index import GalleryError, GalleryLocked
from index.replicas import remove_replica, replica_folders
from service.replica_heartbeats import ReplicaHeartbeats
from service.runtime import GALLERY_DIR
from service.service_db import ServiceDatabase
from service.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    command = subparsers.add_parser("replicas", help="list the replicas of a PostgreSQL gallery; remove the "
                                                     "folders and index tables of stale ones")
    command.add_argument("--data-dir", type=Path, default=None, help="the service's data directory "
                                                                     "(CGD_DATA_DIR)")
    command.add_argument("--stale-after-minutes", type=float, default=10.0,
                         help="a replica silent for longer is gone (default 10)")
    command.add_argument("--remove-stale", action="store_true",
                         help="remove the stale replicas' folders, tables or collections and heartbeats")
    command.set_defaults(handler=run_replicas)


def run_replicas(args: argparse.Namespace) -> int:
    if args.stale_after_minutes <= 0:
        raise ValueError("--stale-after-minutes must be > 0")
    settings = Settings(data_dir=args.data_dir) if args.data_dir is not None else Settings()
    if settings.database_url is None:
        sys.stderr.write("cgd replicas: replicas share a gallery through PostgreSQL: set CGD_DATABASE_URL\n")
        return 1
    try:
        replicas = survey(settings, args.stale_after_minutes * 60, remove=args.remove_stale)
    except GalleryError as exc:
        sys.stderr.write(f"cgd replicas: {exc}\n")
        return 1
    report = {"stale_after_s": args.stale_after_minutes * 60, "replicas": replicas}
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


def survey(settings: Settings, stale_after_s: float, *, remove: bool) -> list[dict[str, Any]]:
    """One record per replica (heartbeat or folder), removing the stale ones' leftovers when `remove`."""
    root = settings.data_dir / GALLERY_DIR
    engines = settings.gallery_engines()
    database = ServiceDatabase.open(engines.postgres())
    try:
        heartbeats = ReplicaHeartbeats(database)
        silent = {beat.name: beat.silent_s for beat in heartbeats.list()}
        folders = replica_folders(root)
        replicas = []
        for name in sorted(silent.keys() | folders.keys()):
            beat = silent.get(name)
            quiet = beat if beat is not None else folders[name]
            record: dict[str, Any] = {"name": name, "silent_s": round(beat, 1) if beat is not None else None,
                                      "folder": name in folders, "stale": quiet > stale_after_s}
            if remove and record["stale"]:
                try:
                    record["dropped"] = remove_replica(root, engines, name) if name in folders else []
                except GalleryLocked:
                    record["removed"] = False
                    record["reason"] = "it runs on this host (its lock is held)"
                else:
                    heartbeats.forget(name)
                    record["removed"] = True
            replicas.append(record)
    finally:
        database.close()
    return replicas
