"""Training jobs through the real app: a typed recipe, a job that cannot beat the serving model
keeps it and registers no version, and search answers while a job runs."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from service.schemas import Promotion, TrainRequest

pytestmark = pytest.mark.slow


def _upload(client, photos) -> None:
    files = [("files", (photo.name, photo.data, "image/jpeg")) for photo in photos]
    labels = {"labels": [photo.label for photo in photos]}
    response = client.post("/gallery", files=files, data=labels)
    assert response.status_code == 201, response.text


def _wait(client, job_id: str, timeout_s: float = 600.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/train/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise TimeoutError(job)


def test_the_request_maps_to_one_train_config() -> None:
    request = TrainRequest(epochs=1, image_size=64, whitening="none", promote="always")
    config = request.train_config(default_max_minutes=15.0)
    assert (config.epochs, config.image_size, config.whitening, config.max_minutes) == (1, 64, "none", 15.0)
    assert not config.keep_start_if_not_better and not config.progress_bar
    assert request.promote is Promotion.ALWAYS
    assert TrainRequest().train_config(3.0).keep_start_if_not_better
    assert TrainRequest(scales=[1, 0.707]).train_config(3.0).scales == (1.0, 0.707)
    assert TrainRequest().train_config(3.0).scales == (1.0,)
    with pytest.raises(ValidationError, match="less than or equal to 4"):
        TrainRequest(scales=[1, 8])


def test_a_job_that_cannot_beat_the_serving_model_keeps_it(tmp_path, open_app, caltech_photos) -> None:
    with open_app(tmp_path) as client:
        _upload(client, caltech_photos)
        serving = client.get("/models").json()
        unchanged = {"epochs": 1, "image_size": 64, "lr": 1e-12, "whitening": "none"}
        accepted = client.post("/train", json=unchanged)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        searches = 0
        while client.get(f"/train/{job_id}").json()["status"] in ("queued", "running"):
            hit = client.post("/search", files={"file": ("q.jpg", caltech_photos[0].data, "image/jpeg")},
                              data={"k": "3"})
            assert hit.status_code == 200, hit.text
            searches += 1
        job = _wait(client, job_id)
        assert job["status"] == "succeeded", job
        assert job["promoted"] is False and job["model_version"] is None
        assert "no new model version" in job["message"]
        assert job["recipe"]["engine"] == "cached" and job["recipe"]["map_gain"]["lower"] <= 0
        assert job["progress"]["phase"] == "done"
        assert client.get("/models").json() == serving
        assert searches > 0
