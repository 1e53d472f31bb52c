"""Fixtures of the route tests: pattern images stored through `POST /gallery`."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def add(shared_client, make_image):
    """`add(seeds, labels=None, metadata=None, external_ids=None) -> items`: pattern images, stored."""

    def _add(seeds: list[int], labels=None, metadata=None, external_ids=None) -> list[dict]:
        data = {}
        if labels is not None:
            data["labels"] = labels
        if metadata is not None:
            data["metadata"] = [json.dumps(m) for m in metadata]
        if external_ids is not None:
            data["external_ids"] = external_ids
        files = [("files", (f"img-{seed}.png", make_image(seed))) for seed in seeds]
        response = shared_client.post("/gallery", files=files, data=data)
        assert response.status_code == 201, response.text
        return response.json()["items"]

    return _add
