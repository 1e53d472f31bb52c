"""Calls shared by the route tests."""

from __future__ import annotations


def search(client, image: bytes, **form) -> list[dict]:
    response = client.post("/search", files={"file": ("query.png", image)}, data=form)
    assert response.status_code == 200, response.text
    return response.json()["results"]
