"""ModelSwapper on a real app: re-embedding off the event loop, skipped deletions, cancellation, items
without an image left out.

Each test runs the real service (embedded default model, FAISS, SQLite) with a second model version:
the default model with its weights moved a little (another version, other vectors), registered as a
checkpoint.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from index import NewItem
from model.checkpoint import save_checkpoint
from model.default import default_model
from service.model_swap import SwapCancelled

GALLERY = 24


def variant_checkpoint(path: Path, seed: int = 1, **config_changes: int) -> Path:
    """The default model with every weight moved by N(0, 1e-3) (and its config changed as given)."""
    model = default_model()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 1e-3)
    model.config = model.config.with_changes(**config_changes)
    save_checkpoint(path, model)
    return path


@pytest.fixture(scope="module")
def variant(tmp_path_factory) -> Path:
    return variant_checkpoint(tmp_path_factory.mktemp("variant") / "variant.pt")


def caltech_labelled(root: Path, classes: int, per_class: int) -> list[tuple[Path, str]]:
    """(path, label) of the first `per_class` photos of the first `classes` caltech101 classes."""
    picked: dict[str, list[Path]] = {}
    for line in (root / "labels.csv").read_text().splitlines()[1:]:
        path, label = line.split(",")[:2]
        if len(picked.get(label, [])) < per_class and (label in picked or len(picked) < classes):
            picked.setdefault(label, []).append(root / path)
    return [(path, label) for label, paths in picked.items() for path in paths]


def fill(client, make_image, count: int = GALLERY) -> list[int]:
    files = [("files", (f"{seed}.png", make_image(seed))) for seed in range(count)]
    response = client.post("/gallery", files=files)
    assert response.status_code == 201, response.text
    return [item["id"] for item in response.json()["items"]]


def register(client, checkpoint: Path) -> str:
    return client.app.state.runtime.registry.add_checkpoint(checkpoint).version


def test_swap_skips_items_deleted_while_re_embedding(tmp_path, open_app, make_image, variant):
    with open_app(tmp_path / "data", max_batch_size=4) as client:
        ids = fill(client, make_image)
        runtime = client.app.state.runtime
        version = register(client, variant)
        gallery = runtime.gateway.gallery
        doomed = ids[-3:]  # in the last chunks: their images are read after the first progress report
        reports = []

        def on_progress(done: int, total: int) -> None:  # runs on the gateway's executor
            if not reports:
                for item_id in doomed:
                    gallery.delete(item_id)
            reports.append((done, total))

        client.portal.call(runtime.swapper.activate, version, on_progress)
        assert runtime.worker.version == version == gallery.live_version
        assert reports[-1] == (GALLERY, GALLERY)
        stored = set(gallery.versions())
        assert version in stored
        assert not len(gallery.ids_missing_vectors(version))
        hits = client.post("/search", files={"file": ("q.png", make_image(0))}, data={"k": "50"}).json()
        assert hits["model_version"] == version
        assert {hit["id"] for hit in hits["results"]} == set(ids) - set(doomed)


def _activate_by_request(client, version: str) -> dict:
    """POST /models/{version}/activate, then the finished job."""
    accepted = client.post(f"/models/{version}/activate")
    assert accepted.status_code == 202, accepted.text
    path = f"/models/activations/{accepted.json()['job_id']}"
    while (job := client.get(path).json())["status"] == "running":
        time.sleep(0.05)
    return job


def test_items_without_an_image_stay_out_of_a_new_version_until_theirs_is_supplied(tmp_path, open_app,
                                                                                    make_image, variant):
    """A promotion cannot embed items imported without an image: it leaves them out (its searches do not
    find them) and counts them in the job; once an image is supplied, the next activation embeds it."""
    with open_app(tmp_path / "data", max_batch_size=4) as client:
        ids = fill(client, make_image, count=6)
        runtime = client.app.state.runtime
        gallery = runtime.gateway.gallery
        old = runtime.worker.version
        bare = [item.id for item in gallery.add([NewItem(None, f"bare-{i}") for i in range(2)],
                                                {old: np.stack([gallery.vector(i) for i in ids[:2]])})]
        version = register(client, variant)
        job = _activate_by_request(client, version)
        assert job["status"] == "succeeded" and job["left_out_of_version"] == 2, job
        assert job["to_reembed"] == len(ids) and runtime.worker.version == version

        def found() -> set[int]:
            hits = client.post("/search", files={"file": ("q.png", make_image(0))}, data={"k": "50"}).json()
            assert hits["model_version"] == runtime.worker.version
            return {hit["id"] for hit in hits["results"]}

        assert found() == set(ids)
        gallery.attach_images([bare[0]], [make_image(100)])  # as cgd import does when a row names it
        assert _activate_by_request(client, old)["left_out_of_version"] == 0  # rollback: imported vectors
        assert found() == set(ids) | set(bare)
        job = _activate_by_request(client, version)
        assert (job["to_reembed"], job["left_out_of_version"]) == (1, 1), job
        assert found() == set(ids) | {bare[0]}


def test_re_embedding_leaves_the_event_loop_free(tmp_path, open_app, make_image, variant):
    """While the gallery is re-embedded, the loop keeps running: its worst lag stays far below the
    re-embedding time (decoding, vector writes and the index switch run on the executor)."""
    with open_app(tmp_path / "data", max_batch_size=4) as client:
        fill(client, make_image)
        runtime = client.app.state.runtime
        version = register(client, variant)

        async def measure() -> tuple[float, float]:
            lags: list[float] = []
            stop = asyncio.Event()

            async def ticker() -> None:
                while not stop.is_set():
                    before = time.perf_counter()
                    await asyncio.sleep(0.005)
                    lags.append(time.perf_counter() - before - 0.005)

            task = asyncio.create_task(ticker())
            started = time.perf_counter()
            await runtime.swapper.activate(version)
            took = time.perf_counter() - started
            stop.set()
            await task
            return took, max(lags)

        took, worst_lag = client.portal.call(measure)
        assert runtime.worker.version == version
        assert worst_lag < max(0.1, took / 5), (took, worst_lag)


def test_a_cancelled_swap_leaves_the_old_model_serving(tmp_path, open_app, make_image, variant):
    with open_app(tmp_path / "data", max_batch_size=2) as client:
        ids = fill(client, make_image)
        runtime = client.app.state.runtime
        old = runtime.worker.version
        version = register(client, variant)
        reports = []

        def cancelled() -> bool:
            return len(reports) >= 2

        with pytest.raises(SwapCancelled):
            client.portal.call(runtime.swapper.activate, version, lambda d, t: reports.append(d), cancelled)
        assert runtime.worker.version == old == runtime.gateway.live_version
        assert runtime.registry.active is None or runtime.registry.active.version == old
        assert len(reports) == 2  # stopped at the next chunk
        hits = client.post("/search", files={"file": ("q.png", make_image(0))}, data={"k": "50"}).json()
        assert hits["model_version"] == old and len(hits["results"]) == len(ids)
        # the vectors written so far stay, and the next activation only embeds the rest
        missing = len(runtime.gateway.gallery.ids_missing_vectors(version))
        assert 0 < missing < len(ids)
        totals = []
        client.portal.call(runtime.swapper.activate, version, lambda d, t: totals.append(t))
        assert totals[-1] == missing and runtime.worker.version == version


def test_re_embedding_matches_the_model_and_yields_to_searches(tmp_path, open_app, make_image, variant):
    """The pipelined vectors equal the model's own (same decoding as ingestion), and searches sent
    during the re-embedding are answered meanwhile, by the old model."""
    with open_app(tmp_path / "data", max_batch_size=4) as client:
        ids = fill(client, make_image)
        runtime = client.app.state.runtime
        old = runtime.worker.version
        version = register(client, variant)
        answered: list[tuple[float, str]] = []
        swap_done = threading.Event()

        def searcher() -> None:
            while not swap_done.is_set():
                response = client.post("/search", files={"file": ("q.png", make_image(3))}, data={"k": "3"})
                assert response.status_code == 200, response.text
                answered.append((time.perf_counter(), response.json()["model_version"]))

        thread = threading.Thread(target=searcher)
        thread.start()
        try:
            client.portal.call(runtime.swapper.activate, version)
        finally:
            swap_done.set()
            thread.join()
        assert [v for _, v in answered].count(old) >= 2
        gallery = runtime.gateway.gallery
        embedder = runtime.worker.embedder
        stored = np.stack([gallery.vector(item_id, version) for item_id in ids[:4]])
        images = [client.get(f"/gallery/{item_id}/image").content for item_id in ids[:4]]
        files = [("files", (f"{i}.png", data)) for i, data in enumerate(images)]
        expected = np.asarray(client.post("/embed", files=files).json()["embeddings"])
        assert embedder.version == version
        np.testing.assert_allclose(stored, expected, atol=1e-2)  # stored as float16


def test_a_models_search_defaults_serve_with_it(tmp_path, open_app, make_image):
    """A model trained with search defaults (qe_n, dba_n) brings them: its gallery index is augmented
    and its searches expand queries unless the request says otherwise; an exact copy still wins."""
    checkpoint = variant_checkpoint(tmp_path / "expanding.pt", qe_n=2, dba_n=1)
    with open_app(tmp_path / "data", max_batch_size=8) as client:
        ids = fill(client, make_image, 12)
        runtime = client.app.state.runtime
        version = register(client, checkpoint)
        client.portal.call(runtime.swapper.activate, version)
        assert runtime.gateway.gallery.version_info(version).dba_n == 1
        query = {"file": ("q.png", make_image(5))}
        default = client.post("/search", files=query, data={"k": "12"}).json()
        plain = client.post("/search", files=query, data={"k": "12", "qe_n": "0"}).json()
        assert default["model_version"] == plain["model_version"] == version
        assert default["results"][0]["id"] == plain["results"][0]["id"] == ids[5]
        default_scores = [hit["score"] for hit in default["results"]]
        plain_scores = [hit["score"] for hit in plain["results"]]
        assert default_scores != pytest.approx(plain_scores, abs=1e-4)  # the query was expanded



@pytest.mark.slow
def test_cancelling_a_training_job_while_it_re_embeds_keeps_the_old_model(tmp_path, open_app, make_image,
                                                                           caltech_dir):
    """POST /train/{id}/cancel during the promotion's re-embedding: the job ends cancelled, the old
    model serves (it used to answer 200 and the job still ended succeeded, with the new model live)."""
    with open_app(tmp_path / "data", max_batch_size=1) as client:
        photos = caltech_labelled(caltech_dir, classes=8, per_class=8)
        for start in range(0, len(photos), 32):
            chunk = photos[start:start + 32]
            files = [("files", (path.name, path.read_bytes(), "image/jpeg")) for path, _ in chunk]
            response = client.post("/gallery", files=files, data={"labels": [label for _, label in chunk]})
            assert response.status_code == 201, response.text
        old = client.get("/models").json()["active"]
        accepted = client.post("/train", json={"epochs": 1, "image_size": 64, "whitening": "none",
                                               "batch_size": 16, "promote": "always"})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            job = client.get(f"/train/{job_id}").json()
            if job["status"] != "running" and job["status"] != "queued":
                pytest.fail(f"the job ended before re-embedding: {job}")
            if (job["progress"] or {}).get("phase") == "re-embedding":
                break
            time.sleep(0.02)
        cancelled = client.post(f"/train/{job_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        while (job := client.get(f"/train/{job_id}").json())["status"] == "running":
            time.sleep(0.1)
        assert job["status"] == "cancelled", job
        assert job["promoted"] is False and "re-embedding" in job["message"]
        assert client.get("/models").json()["active"] == old
        hits = client.post("/search", files={"file": ("q.jpg", photos[0][0].read_bytes())}).json()
        assert hits["model_version"] == old


def test_the_swapped_out_model_is_freed(tmp_path, open_app, make_image, variant):
    """Once the new model serves, nothing keeps the old one (the worker's last round held it, with its
    images, until the next request)."""
    with open_app(tmp_path / "data", max_batch_size=4) as client:
        fill(client, make_image, count=4)
        runtime = client.app.state.runtime
        old = weakref.ref(runtime.worker.embedder)
        client.portal.call(runtime.swapper.activate, register(client, variant))
        gc.collect()
        assert old() is None

