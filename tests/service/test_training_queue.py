"""Training jobs through the real app: a typed recipe, a job that cannot beat the serving model
keeps it and registers no version, search answers while a job runs, and a promoted model is served
from the ONNX file its job exported, on the runtime choice of the model it replaced; labelled items
without an image are left out of training and of the promoted version, and counted in the job."""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import replace

import numpy as np
import pytest
from pydantic import ValidationError

from index import NewItem
from model.checkpoint import save_checkpoint
from model.default import DEFAULT_CONFIG, default_model
from model.onnx_export import exported_version, onnx_path
from service.runtime import ENGINE_DIR
from service.schemas import Promotion, TrainRequest

pytestmark = pytest.mark.slow


def _upload(client, photos) -> None:
    files = [("files", (photo.name, photo.data, "image/jpeg")) for photo in photos]
    labels = {"labels": [photo.label for photo in photos]}
    response = client.post("/gallery", files=files, data=labels)
    assert response.status_code == 201, response.text


def _add_without_image(client, labels: list[str]) -> None:
    """Labelled items imported as vectors alone (the vector of the first item): training leaves them out."""
    gallery = client.app.state.runtime.gateway.gallery
    vector = gallery.vector(gallery.list_items(0, 1)[0][0].id)
    gallery.add([NewItem(None, f"bare-{i}", label) for i, label in enumerate(labels)],
                {gallery.live_version: np.tile(vector, (len(labels), 1))})


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
        _add_without_image(client, [caltech_photos[0].label, "only-vectors", "only-vectors"])
        refused = client.post("/train", json={"labels": ["only-vectors", caltech_photos[0].label]})
        assert refused.status_code == 422 and "3 labelled items have no image" in refused.json()["detail"]
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
        assert job["left_out_of_training"] == 3 and job["left_out_of_version"] is None
        assert job["recipe"]["engine"] == "cached" and job["recipe"]["map_gain"]["lower"] <= 0
        ready = client.get("/ready").json()  # the 224 px start is validated on the engine that serves it
        assert job["recipe"]["baseline_engine"] == f"{ready['runtime']} {ready['precision']}"
        progress = job["progress"]
        assert progress["phase"] == "done" and progress["eta_s"] == 0.0
        assert progress["steps"] == progress["step"] > 0  # what ran, not what was planned
        assert client.get("/models").json() == serving
        assert searches > 0


def test_a_promoted_model_is_served_from_its_jobs_export_on_the_replaced_models_choice(tmp_path, open_app,
                                                                                      caltech_photos):
    """CGD_RUNTIME=auto: the job's child exports the new model beside its checkpoint and the registry keeps
    it; the swap links that file into the engine cache (no export in the serving process) and reuses the
    runtime choice measured for the serving model of the same architecture (64 px here)."""
    if importlib.util.find_spec("onnxscript") is None:
        pytest.skip("onnxscript (torch.onnx's exporter) is not installed: auto has torch alone")
    start = tmp_path / "start.pt"
    save_checkpoint(start, default_model(DEFAULT_CONFIG.with_changes(
        preprocessing=replace(DEFAULT_CONFIG.preprocessing, image_size=64))))
    data = tmp_path / "data"
    with open_app(data, runtime="auto", checkpoint=start) as client:
        old = client.get("/ready").json()
        assert old["runtime_choice"]["reused_from"] is None  # measured at start-up
        _upload(client, caltech_photos)
        _add_without_image(client, [caltech_photos[0].label])
        accepted = client.post("/train", json={"epochs": 1, "image_size": 64, "whitening": "none",
                                               "promote": "always"})
        assert accepted.status_code == 202, accepted.text
        job = _wait(client, accepted.json()["job_id"])
        assert job["status"] == "succeeded" and job["promoted"], job
        version = job["model_version"]
        assert job["left_out_of_training"] == 1 and job["left_out_of_version"] == 1
        assert f"1 items without an image are not in version {version}" in job["message"]
        ready = client.get("/ready").json()
    exported = data / "models" / f"{version}.onnx"
    assert exported_version(exported) == version
    assert os.path.samefile(onnx_path(data / ENGINE_DIR, version), exported)
    choice = ready["runtime_choice"]
    assert ready["model_version"] == version and ready["runtime"] == choice["runtime"]
    assert choice["reused_from"] == old["model_version"] and choice["source"] == "gallery"
    assert next(m for m in choice["measurements"] if (m["runtime"], m["precision"])
                == (choice["runtime"], choice["precision"]))["agrees"]
