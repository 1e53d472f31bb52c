"""A real `cgd serve` process on localhost: ingest real photos, search, train, swap, roll back, restart.

The whole life of one data directory: caltech101 photos of four classes are ingested with labels and
external ids; an ingested photo finds itself first and mostly its own class; a tiny training job
is promoted, re-embeds the gallery and swaps the model while a background thread keeps searching
(every search answers 200, from the old or the new model); rolling back and forward through
`/models/{version}/activate` changes the version searches report; SIGTERM stops the server with
exit code 0, and a second server on the same directory has the same gallery, jobs and active model;
SIGTERM during a training job also exits 0 and leaves that job cancelled.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from service.job_store import JobStore
from service.model_registry import ModelRegistry

TRAIN_REQUEST = {"max_minutes": 0.5, "epochs": 2, "image_size": 64, "promote": "always"}
JOB_TIMEOUT_S = 240.0
TOP_K = 5


@dataclass
class SearchLog:
    """What the background searcher saw: (monotonic time, status, model version or None) per request."""

    records: list[tuple[float, int, str | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def between(self, start: float, end: float) -> list[tuple[float, int, str | None]]:
        return [record for record in self.records if start <= record[0] <= end]


def search_continuously(base_url: str, queries: list[bytes], stop: threading.Event, log: SearchLog) -> None:
    """POST /search in a loop until `stop` is set, recording every answer."""
    with httpx.Client(base_url=base_url, timeout=60.0, trust_env=False) as client:
        position = 0
        while not stop.is_set():
            data = queries[position % len(queries)]
            position += 1
            try:
                response = client.post("/search", files={"file": ("q.jpg", data)}, data={"k": "3"})
            except httpx.HTTPError as exc:
                log.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            version = response.json().get("model_version") if response.status_code == 200 else None
            log.records.append((time.monotonic(), response.status_code, version))
            if response.status_code != 200:
                log.errors.append(f"{response.status_code}: {response.text[:300]}")
            time.sleep(0.02)


def ingest_continuously(base_url: str, images: list[bytes], stop: threading.Event,
                        added: list[tuple[int, bytes]], errors: list[str]) -> None:
    """POST /gallery one unlabelled image at a time until `stop` is set or `images` run out."""
    with httpx.Client(base_url=base_url, timeout=60.0, trust_env=False) as client:
        for position, data in enumerate(images):
            if stop.wait(0.3):
                return
            response = client.post("/gallery", files=[("files", (f"live-{position}.png", data))],
                                   data={"external_ids": f"live-{position}"})
            if response.status_code != 201:
                errors.append(f"{response.status_code}: {response.text[:300]}")
                continue
            added.append((response.json()["items"][0]["id"], data))


def top_hits(client: httpx.Client, data: bytes, k: int = TOP_K) -> tuple[list[dict], str]:
    response = client.post("/search", files={"file": ("query.jpg", data)}, data={"k": str(k)})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["results"], body["model_version"]


def activate(client: httpx.Client, version: str, timeout_s: float = 300.0) -> dict:
    """POST /models/{version}/activate (202), then its activation job once it has ended."""
    accepted = client.post(f"/models/{version}/activate")
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/models/activations/{accepted.json()['job_id']}").json()
        if job["status"] != "running" or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def wait_for_job(client: httpx.Client, job_id: str, server_log) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        response = client.get(f"/train/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {job['status']} after {JOB_TIMEOUT_S:.0f} s: {job}\n"
                        f"{server_log()}")
        time.sleep(0.5)


@pytest.mark.slow
def test_real_server_ingest_search_train_swap_rollback_restart(tmp_path: Path, serve, caltech_photos,
                                                                make_image):
    data_dir = tmp_path / "data"
    log_path = tmp_path / "server.log"
    server = serve(data_dir, log_path)
    client = server.client
    old_version = client.get("/ready").json()["model_version"]

    # Ingest: 4 classes x 8 real photos, one request, labels and external ids in file order.
    external_ids = [f"{photo.label}-{i}" for i, photo in enumerate(caltech_photos)]
    added = client.post(
        "/gallery",
        files=[("files", (photo.name, photo.data, "image/jpeg")) for photo in caltech_photos],
        data={"labels": [photo.label for photo in caltech_photos], "external_ids": external_ids},
    )
    assert added.status_code == 201, added.text
    assert added.json()["model_version"] == old_version
    items = added.json()["items"]
    assert [item["external_id"] for item in items] == external_ids
    assert [item["label"] for item in items] == [photo.label for photo in caltech_photos]
    ids = [item["id"] for item in items]
    assert len(set(ids)) == len(ids)

    # Search: each probe finds itself first (score ~1) and mostly its own class in the top 5.
    labels = [photo.label for photo in caltech_photos]
    probes = [labels.index(label) for label in dict.fromkeys(labels)]  # the first photo of each class
    for position in probes:
        photo = caltech_photos[position]
        hits, version = top_hits(client, photo.data)
        assert version == old_version
        assert hits[0]["id"] == ids[position] and hits[0]["score"] > 0.99, hits[0]
        same_class = sum(hit["label"] == photo.label for hit in hits)
        assert same_class >= 3, f"{photo.label}: only {same_class} of the top {TOP_K} share its label: {hits}"
        assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)

    # Train while one background thread searches continuously and another one ingests.
    searches = SearchLog()
    ingested: list[tuple[int, bytes]] = []
    ingest_errors: list[str] = []
    stop = threading.Event()
    searcher = threading.Thread(
        target=search_continuously,
        args=(str(client.base_url), [caltech_photos[p].data for p in probes], stop, searches),
        daemon=True,
    )
    ingester = threading.Thread(
        target=ingest_continuously,
        args=(str(client.base_url), [make_image(500 + i) for i in range(40)], stop, ingested, ingest_errors),
        daemon=True,
    )
    searcher.start()
    ingester.start()
    try:
        submitted_at = time.monotonic()
        accepted = client.post("/train", json=TRAIN_REQUEST)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        job = wait_for_job(client, job_id, server.log_tail)
        finished_at = time.monotonic()
        time.sleep(1.0)  # a few searches after the swap
    finally:
        stop.set()
        searcher.join(timeout=90)
        ingester.join(timeout=90)
    assert not searcher.is_alive() and not ingester.is_alive(), "a background client hung"

    assert job["status"] == "succeeded", f"{job}\n{server.log_tail()}"
    assert job["promoted"] is True, job
    new_version = job["model_version"]
    assert new_version and new_version != old_version, job
    assert job["progress"]["phase"] == "done", job
    assert job["progress"]["reembedded"] == job["progress"]["to_reembed"] >= len(caltech_photos), job
    assert job["reembedding_seconds"] is not None, job
    assert job["baseline_metrics"] and job["new_metrics"], job
    finished = client.post(f"/train/{job_id}/cancel")
    assert (finished.status_code, finished.json()["code"]) == (409, "conflict"), finished.text

    assert not searches.errors, f"{len(searches.errors)} failed searches, e.g. {searches.errors[:3]}"
    during_job = searches.between(submitted_at, finished_at)
    assert len(during_job) >= 20, f"only {len(during_job)} searches ran during the job"
    assert all(status == 200 for _, status, _ in searches.records)
    seen = {version for _, _, version in searches.records}
    assert seen <= {old_version, new_version}, seen
    assert new_version in seen, "no background search was answered by the new model"
    versions_in_order = [version for _, _, version in searches.records]
    first_new = versions_in_order.index(new_version)
    # one client, one request at a time: once the new model answered, the old one never does again
    assert old_version not in versions_in_order[first_new:], "searches went back to the old model"

    # Promoted: searches and /models report the new version; the re-embedded gallery still self-matches,
    # and so does every image ingested during training and swap (none lacks the new model's vector).
    hits, version = top_hits(client, caltech_photos[0].data)
    assert version == new_version
    assert hits[0]["id"] == ids[0] and hits[0]["score"] > 0.99, hits[0]
    assert not ingest_errors, ingest_errors[:3]
    assert len(ingested) >= 5, f"only {len(ingested)} images were ingested during the job"
    for item_id, data in ingested:
        hits, version = top_hits(client, data, k=1)
        assert version == new_version and hits[0]["id"] == item_id and hits[0]["score"] > 0.99, hits
    gallery_size = len(caltech_photos) + len(ingested)
    assert client.get("/gallery").json()["total"] == gallery_size
    models = client.get("/models").json()
    assert models["active"] == new_version
    by_version = {model["version"]: model for model in models["models"]}
    assert set(by_version) == {old_version, new_version}
    assert by_version[new_version]["active"] and not by_version[old_version]["active"]
    assert by_version[old_version]["has_vectors"] and by_version[new_version]["has_vectors"]

    # One item surely stored after the swap (the background ingester may have run out of images before).
    late = client.post("/gallery", files=[("files", ("late.png", make_image(999)))],
                       data={"external_ids": "late"})
    assert late.status_code == 201, late.text
    ingested.append((late.json()["items"][0]["id"], make_image(999)))
    gallery_size += 1

    # Roll back to the old model (only the items ingested after the swap need its vectors), then forward.
    rolled_back = activate(client, old_version)
    assert rolled_back["status"] == "succeeded", rolled_back
    assert 1 <= rolled_back["to_reembed"] <= len(ingested)  # only items stored after the swap
    assert client.get("/models").json()["active"] == old_version
    hits, version = top_hits(client, caltech_photos[probes[1]].data)
    assert version == old_version
    assert hits[0]["id"] == ids[probes[1]] and hits[0]["score"] > 0.99
    last_id, last_image = ingested[-1]  # stored after the swap: the rollback embedded it with the old model
    hits, version = top_hits(client, last_image, k=1)
    assert version == old_version and hits[0]["id"] == last_id and hits[0]["score"] > 0.99
    assert activate(client, new_version)["status"] == "succeeded"
    assert top_hits(client, caltech_photos[probes[1]].data)[1] == new_version

    listed_before = client.get("/gallery", params={"limit": 1000}).json()
    jobs_before = client.get("/train").json()["jobs"]
    assert server.stop() == 0, f"SIGTERM must stop the server cleanly:\n{server.log_tail()}"

    # Restart on the same data directory: gallery, jobs and active model persist.
    restarted = serve(data_dir, log_path)
    client = restarted.client
    ready = client.get("/ready").json()
    assert ready["ready"] and ready["model_version"] == new_version
    assert ready["store"]["items"] == gallery_size
    listed_after = client.get("/gallery", params={"limit": 1000}).json()
    assert listed_after == listed_before
    assert listed_after["total"] == gallery_size
    jobs_after = client.get("/train").json()["jobs"]
    assert [(j["id"], j["status"], j["model_version"]) for j in jobs_after] == [
        (j["id"], j["status"], j["model_version"]) for j in jobs_before
    ]
    assert client.get("/models").json()["active"] == new_version
    hits, version = top_hits(client, caltech_photos[probes[2]].data)
    assert version == new_version
    assert hits[0]["id"] == ids[probes[2]] and hits[0]["score"] > 0.99

    # SIGTERM while a job trains: a clean exit, the job cancelled (not left running), nothing promoted.
    long_job = client.post("/train", json={"epochs": 50, "image_size": 64, "max_minutes": 5,
                                           "promote": "always"})
    assert long_job.status_code == 202, long_job.text
    long_id = long_job.json()["job_id"]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not ((job := client.get(f"/train/{long_id}").json())["progress"] or {}).get("step"):
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline, f"the job never reached a training step: {job}"
        time.sleep(0.25)
    assert restarted.stop() == 0, restarted.log_tail()
    jobs = JobStore(data_dir / "jobs.sqlite3")
    try:
        stopped = jobs.get(long_id)
    finally:
        jobs.close()
    assert stopped.status == "cancelled", stopped
    assert stopped.result["message"] == "cancelled: the service stopped" and not stopped.result["promoted"]
    assert ModelRegistry(data_dir).active.version == new_version
