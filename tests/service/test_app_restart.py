"""Restarts on one data directory: the gallery and the jobs persist; a job left running is failed.

Two apps are opened one after the other on the same directory (each with its lifespan, as a
restarted server). A job that a dead process left `running` is written with the service's own
`JobStore` before the first start.
"""

from __future__ import annotations

import json
import time

from service.job_store import JobStore


def test_gallery_and_jobs_survive_a_restart_and_a_dead_job_is_failed(tmp_path, open_app, make_image,
                                                                      expect_error):
    data_dir = tmp_path / "data"
    store = JobStore(data_dir / "jobs.sqlite3")
    interrupted = store.create({"epochs": 3})
    store.update(interrupted.id, status="running", started_at=time.time(), progress={"phase": "training"})
    finished = store.create({"epochs": 2})
    store.update(finished.id, status="succeeded", started_at=time.time(), finished_at=time.time(),
                 result={"model_version": "abc123", "promoted": False, "message": "not promoted"})
    store.close()

    with open_app(data_dir) as client:
        failed = client.get(f"/train/{interrupted.id}").json()
        assert failed["status"] == "failed" and "interrupted" in failed["error"], failed
        assert failed["finished_at"] is not None
        kept = client.get(f"/train/{finished.id}").json()
        assert (kept["status"], kept["model_version"], kept["promoted"]) == ("succeeded", "abc123", False)
        expect_error(client.post(f"/train/{interrupted.id}/cancel"), 409, "conflict")
        expect_error(client.post(f"/train/{finished.id}/cancel"), 409, "conflict")

        images = {seed: make_image(400 + seed, fmt="JPEG") for seed in range(4)}
        added = client.post(
            "/gallery",
            files=[("files", (f"r{seed}.jpg", data)) for seed, data in images.items()],
            data={"labels": ["keep", "keep", "drop", "edit"], "external_ids": ["r0", "r1", "r2", "r3"],
                  "metadata": [json.dumps({"n": seed}) for seed in images]},
        )
        assert added.status_code == 201, added.text
        ids = [item["id"] for item in added.json()["items"]]
        assert client.delete(f"/gallery/{ids[2]}").status_code == 204
        edited = client.patch(f"/gallery/{ids[3]}", json={"label": "edited", "metadata": {"n": 30}})
        assert edited.status_code == 200, edited.text
        listing = client.get("/gallery").json()
        jobs = client.get("/train").json()
        hits = client.post("/search", files={"file": ("q.jpg", images[3])}, data={"k": "3"}).json()
        version = client.get("/ready").json()["model_version"]

    with open_app(data_dir) as client:
        ready = client.get("/ready").json()
        assert ready["ready"] and ready["model_version"] == version and ready["store"]["items"] == 3
        assert client.get("/gallery").json() == listing
        assert listing["total"] == 3 and [item["id"] for item in listing["items"]] == [ids[0], ids[1], ids[3]]
        assert client.get("/train").json() == jobs
        expect_error(client.get(f"/gallery/{ids[2]}"), 404, "not_found")
        assert client.get("/gallery/external/r3").json()["label"] == "edited"
        assert client.get(f"/gallery/{ids[0]}/image").content == images[0]
        again = client.post("/search", files={"file": ("q.jpg", images[3])}, data={"k": "3"}).json()
        assert [h["id"] for h in again["results"]] == [h["id"] for h in hits["results"]]
        assert again["results"][0]["id"] == ids[3] and again["results"][0]["score"] > 0.99
        assert again["results"][0]["metadata"] == {"n": 30}
        # the ids continue after the restart: a new item never reuses a deleted item's id
        more = client.post("/gallery", files=[("files", ("new.jpg", make_image(499, fmt="JPEG")))])
        assert more.json()["items"][0]["id"] > max(ids)
