"""`cgd migrate --from sqlite:DIR --to postgresql://...`: move a gallery's items, vectors and versions from
SQLite to PostgreSQL, with a progress bar; resumable (run it again after an interruption); verified by
counts and a sample of searches on both. The data directory's model records (`models/registry.json`, with
the active model) and training jobs (`jobs.sqlite3`) are copied too, so the service serves the same model
on PostgreSQL. Stop the service first (the gallery's lock is taken). Images and checkpoints stay under
DIR: point the service at the same data directory with CGD_DATABASE_URL set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from index import GalleryError
from index.engines import VECTOR_BACKENDS, Engines
from index.migration import migrate_gallery, verify_migration
from index.postgres import PostgresSettings, redact
from service.job_store import JobStore
from service.model_registry import ModelRegistry
from service.runtime import GALLERY_DIR
from service.service_db import ServiceDatabase

SOURCE_SCHEME = "sqlite:"


def register(subparsers: argparse._SubParsersAction) -> None:
    migrate = subparsers.add_parser("migrate", help="move a SQLite gallery into PostgreSQL (resumable)")
    migrate.add_argument("--from", dest="source", required=True, metavar="sqlite:DIR",
                         help="the data directory (or its gallery/ directory) of a SQLite gallery")
    migrate.add_argument("--to", dest="target", default=os.environ.get("CGD_DATABASE_URL"),
                         metavar="postgresql://...",
                         help="the PostgreSQL database (default: CGD_DATABASE_URL, which keeps the password "
                              "out of the process list)")
    migrate.add_argument("--vector-backend", choices=VECTOR_BACKENDS, default="faiss",
                         help="the vector backend the verification searches with")
    migrate.add_argument("--milvus-uri", default=None, help="Milvus URI for --vector-backend milvus")
    migrate.add_argument("--index-kind", default="Flat", help="index kind the verification builds")
    migrate.add_argument("--batch-size", type=int, default=1000, help="items per transaction")
    migrate.set_defaults(handler=run_migrate)


def gallery_root(source: str) -> Path:
    """The gallery directory named by sqlite:DIR (DIR itself, or DIR/gallery of a data directory)."""
    if not source.startswith(SOURCE_SCHEME):
        raise ValueError(f"--from must be sqlite:DIR, got {source!r}")
    directory = Path(source[len(SOURCE_SCHEME):])
    return directory / GALLERY_DIR if (directory / GALLERY_DIR / "items.sqlite3").is_file() else directory


def run_migrate(args: argparse.Namespace) -> int:
    if not args.target:
        raise ValueError("--to postgresql://... (or CGD_DATABASE_URL) is required")
    root = gallery_root(args.source)
    engines = Engines(args.target, args.vector_backend, args.milvus_uri)
    try:
        with tqdm(unit="item", desc="migrate") as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            total, copied = migrate_gallery(root, engines, progress, batch=args.batch_size)
        report = verify_migration(root, engines, args.index_kind)
        models, jobs = migrate_service_records(root.parent if root.name == GALLERY_DIR else root, args.target)
    except GalleryError as exc:
        sys.stderr.write(f"cgd migrate: {exc}\n")
        return 1
    sys.stdout.write(json.dumps({"from": str(root), "to": redact(args.target), "items": total,
                                 "copied_now": copied, "vectors": report.vectors,
                                 "models": models, "jobs": jobs, "sample_queries": report.queries,
                                 "top1_agreement": report.top1_agreement,
                                 "overlap_at_10": round(report.overlap_at_10, 4)}) + "\n")
    return 0


def migrate_service_records(data_dir: Path, url: str) -> tuple[int, int]:
    """Copy the model records and training jobs of `data_dir` into the database's service tables, keeping
    ids (the active model is the gallery's live version, copied with the gallery); what is there already is
    kept. Returns (records, jobs) copied now."""
    registry_file, jobs_file = data_dir / "models" / "registry.json", data_dir / "jobs.sqlite3"
    if not registry_file.is_file() and not jobs_file.is_file():
        return 0, 0
    database = ServiceDatabase.open(PostgresSettings(url))
    try:
        models = (ModelRegistry(data_dir, database).import_records(ModelRegistry(data_dir))
                  if registry_file.is_file() else 0)
        jobs = 0
        if jobs_file.is_file():
            source = JobStore(jobs_file)
            try:
                jobs = JobStore(database).import_jobs(source.list(limit=1 << 30)[::-1])
            finally:
                source.close()
    finally:
        database.close()
    return models, jobs
