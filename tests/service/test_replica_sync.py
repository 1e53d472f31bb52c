"""Two `cgd serve` replicas on one PostgreSQL (pgserver) and one data directory, on 127.0.0.1: what
`service.replica_sync` (with the shared job queue and the per-replica gallery folders) makes possible.

Real processes, real HTTP, the real default model and real caltech101 photos: what one replica is told
is visible on the other; a training job runs on one replica of the two and is cancelled from the other;
a model promoted on one serves on both, with every search during the switch answered by one version,
and a rollback on the other serves on both too; and a replica killed with SIGKILL during ingestion
loses no item it acknowledged. And, in one process step by step, a replica that starts during
another's promotion follows it instead of undoing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from index.postgres import PostgresSettings
from model.checkpoint import save_checkpoint
from model.default import default_model
from service.gallery_gateway import GalleryGateway
from service.metrics import ServiceMetrics
from service.model_registry import ModelRegistry
from service.runtime import GALLERY_DIR, Runtime
from service.service_db import ServiceDatabase
from tests.index.engines import create_database

pytestmark = pytest.mark.slow

VISIBLE_WITHIN_S = 5.0  # the bound for an item acknowledged on one replica
SWITCH_WITHIN_S = 30.0  # and for every replica to serve a promoted model


def _variant(path: Path) -> Path:
    """The default model with its weights moved by N(0, 0.02): another version, with other vectors."""
    model = default_model()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    save_checkpoint(path, model)
    return path


def _search(client: httpx.Client, image: bytes) -> dict[str, Any]:
    response = client.post("/search", files={"file": ("q.jpg", image, "image/jpeg")}, data={"k": "3"})
    assert response.status_code == 200, response.text
    return response.json()


def _within(seconds: float, check: Callable[[], Any], what: str) -> float:
    """Poll `check` until it returns a true value; returns the seconds it took (fails past `seconds`)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            pytest.fail(f"{what} not within {seconds} s")
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_replica_starting_during_a_promotion_follows_it_and_never_flips_it_back(tmp_path, open_app,
                                                                                   make_settings,
                                                                                   postgres_server,
                                                                                   make_image):
    """The race, step by step: replica b opens the gallery and reads the live version (the default model),
    replica a's promotion to a new version completes, then b finishes its start on the model it chose.
    b starts serving the old version without writing the live version, and its first catch-up follows
    the new one; the store never goes back."""
    url = create_database(postgres_server)
    data = tmp_path / "data"
    with open_app(data, database_url=url, replica_id="a", sync_interval_s=10) as a:
        files = [("files", (f"{seed}.png", make_image(seed))) for seed in range(3)]
        assert a.post("/gallery", files=files).status_code == 201
        old = a.get("/models").json()["active"]
        new = a.app.state.runtime.registry.add_checkpoint(_variant(tmp_path / "variant.pt")).version
        settings = make_settings(data, database_url=url, replica_id="b", sync_interval_s=10)

        def promote_on_a() -> None:
            activation = a.post(f"/models/{new}/activate")
            assert activation.status_code == 202, activation.text
            status = f"/models/activations/{activation.json()['job_id']}"
            _within(120, lambda: a.get(status).json()["status"] == "succeeded", "the promotion on a")

        async def start_b() -> tuple[str, str | None, str]:
            gateway = await GalleryGateway.open(data / GALLERY_DIR, threads=settings.io_threads,
                                                **settings.index_options())
            database = ServiceDatabase.open(settings.gallery_engines().postgres())
            assert gateway.live_version == old  # b chooses its model by it
            promote_on_a()
            runtime = await Runtime._start(settings, ServiceMetrics(), gateway, database)  # b's start, on
            try:
                serving = runtime.worker.version
                stored = await gateway.run(gateway.gallery.stored_live_version)
                await runtime.sync.step()  # b's first catch-up
                return serving, stored, runtime.worker.version
            finally:
                await runtime.close()

        serving, stored, followed = asyncio.run(start_b())
        assert (serving, stored, followed) == (old, new, new)
        assert a.get("/models").json()["active"] == new
        query = a.post("/search", files={"file": ("q.png", make_image(1))}, data={"k": "1"}).json()
        assert query["model_version"] == new


def test_two_replicas_share_one_gallery_its_jobs_and_its_model(tmp_path, serve, postgres_server,
                                                                 caltech_photos, make_image):
    url = create_database(postgres_server)
    data = tmp_path / "data"

    def start(name: str):
        return serve(data, tmp_path / f"{name}.log", {"CGD_DATABASE_URL": url, "CGD_REPLICA_ID": name,
                                                      "CGD_SYNC_INTERVAL_S": "0.2"})

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(start, ["a", "b"])
    assert {p.name for p in (data / "gallery" / "replicas").iterdir()} == {"a", "b"}

    # ingest on A, search on B
    files = [("files", (photo.name, photo.data, "image/jpeg")) for photo in caltech_photos]
    added = a.client.post("/gallery", files=files, data={"labels": [photo.label for photo in caltech_photos]})
    assert added.status_code == 201, added.text
    ids = [item["id"] for item in added.json()["items"]]
    _within(VISIBLE_WITHIN_S, lambda: _search(b.client, caltech_photos[5].data)["results"][0]["id"] == ids[5],
            "an item ingested on A found by a search on B")
    assert b.client.get(f"/gallery/{ids[7]}").json()["label"] == caltech_photos[7].label

    # a training job started on A: visible, and cancelled, from B
    accepted = a.client.post("/train", json={"epochs": 200, "image_size": 64, "batch_size": 16,
                                             "val_fraction": 0.3, "whitening": "none", "promote": "never"})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    _within(60, lambda: b.client.get(f"/train/{job_id}").json()["status"] == "running", "the job running")
    running = b.client.get(f"/train/{job_id}").json()
    assert running["replica"] in {"a", "b"}, running
    cancelled = b.client.post(f"/train/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    _within(60, lambda: a.client.get(f"/train/{job_id}").json()["status"] == "cancelled", "the job cancelled")
    assert b.client.get(f"/train/{job_id}").json()["status"] == "cancelled"

    # promotion on A: both replicas serve the new version; no search fails or mixes two versions
    with contextlib.closing(ServiceDatabase.open(PostgresSettings(url))) as database:
        new = ModelRegistry(data, database).add_checkpoint(_variant(tmp_path / "variant.pt")).version
    query, query_id = caltech_photos[9].data, ids[9]
    old = _search(a.client, query)["model_version"]
    before = np.asarray(a.client.post("/embed", files={"files": ("q.jpg", query)}).json()["embeddings"][0])
    answers: list[dict[str, Any]] = []
    stop = threading.Event()

    def keep_searching(client: httpx.Client) -> None:
        while not stop.is_set():
            answers.append(_search(client, query))

    with ThreadPoolExecutor(2) as pool:
        searching = [pool.submit(keep_searching, replica.client) for replica in (a, b)]
        activation = a.client.post(f"/models/{new}/activate")
        assert activation.status_code == 202, activation.text
        activation_id = activation.json()["job_id"]
        status = f"/models/activations/{activation_id}"
        _within(120, lambda: a.client.get(status).json()["status"] == "succeeded", "the activation on A")
        switched = _within(SWITCH_WITHIN_S, lambda: all(_search(r.client, query)["model_version"] == new
                                                        for r in (a, b)), "both replicas on the new model")
        stop.set()
        for future in searching:
            future.result()
    after = np.asarray(b.client.post("/embed", files={"files": ("q.jpg", query)}).json()["embeddings"][0])
    assert float(before @ after) < 0.97  # a search that mixed the versions would score below 0.98
    assert {answer["model_version"] for answer in answers} == {old, new}, len(answers)
    for answer in answers:  # the query is a gallery item: it comes first, as similar as itself
        assert answer["results"][0]["id"] == query_id and answer["results"][0]["score"] > 0.98, answer
    assert b.client.get("/models").json()["active"] == new
    print(f"{len(answers)} searches during the switch; B followed A {switched:.1f} s after it finished")

    # rollback on B, the same call with the old version: A follows it
    rollback = b.client.post(f"/models/{old}/activate")
    assert rollback.status_code == 202, rollback.text
    status = f"/models/activations/{rollback.json()['job_id']}"
    _within(120, lambda: b.client.get(status).json()["status"] == "succeeded", "the rollback on B")
    _within(SWITCH_WITHIN_S, lambda: all(_search(r.client, query)["model_version"] == old for r in (a, b)),
            "both replicas back on the old model")
    assert a.client.get("/models").json()["active"] == old

    # SIGKILL of A during ingestion: every item it acknowledged is on B
    acknowledged: list[tuple[int, bytes]] = []
    lost = threading.Event()

    def ingest(seed: int) -> None:
        while not lost.is_set():
            image = make_image(1000 + seed, fmt="JPEG")
            seed += 2
            try:
                response = a.client.post("/gallery", files={"files": ("i.jpg", image, "image/jpeg")})
            except httpx.TransportError:
                lost.set()
                return
            assert response.status_code == 201, response.text
            acknowledged.append((response.json()["items"][0]["id"], image))

    with ThreadPoolExecutor(2) as pool:
        ingesting = [pool.submit(ingest, seed) for seed in (0, 1)]
        _within(60, lambda: len(acknowledged) >= 12, "12 acknowledged items")
        a.process.kill()
        a.process.wait()
        for future in ingesting:
            future.result()
    assert acknowledged
    print(f"{len(acknowledged)} items acknowledged by A before its SIGKILL, all found through B")
    for item_id, image in acknowledged:
        assert b.client.get(f"/gallery/{item_id}").status_code == 200
        _within(VISIBLE_WITHIN_S, lambda i=image, n=item_id: _search(b.client, i)["results"][0]["id"] == n,
                f"acknowledged item {item_id} found on B")
    assert b.client.get("/ready").json()["ready"]
