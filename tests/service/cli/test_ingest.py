"""`cgd ingest` against a real `cgd serve` on 127.0.0.1: what the gallery already holds is neither sent
again nor counted as uploaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families


def _ingest(folder: Path, url: str) -> dict:
    """Run the installed `cgd ingest` on `folder`; returns its JSON summary line."""
    cgd = Path(sys.executable).with_name("cgd")
    result = subprocess.run([str(cgd), "ingest", str(folder), "--url", url, "--batch-size", "2"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def _gallery_posts(client) -> float:
    """How many `POST /gallery` requests the server has answered, from its /metrics."""
    return sum(sample.value
               for family in text_string_to_metric_families(client.get("/metrics").text)
               for sample in family.samples
               if sample.name == "cgd_http_request_duration_seconds_count"
               and sample.labels["method"] == "POST" and sample.labels["route"] == "/gallery")


@pytest.mark.slow
def test_ingesting_a_folder_again_uploads_nothing(tmp_path, serve, make_image):
    folder = tmp_path / "photos"
    for seed, (label, name) in enumerate([("cat", "a.png"), ("cat", "b.png"), ("dog", "c.png")]):
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / name).write_bytes(make_image(500 + seed, size=48))
    server = serve(tmp_path / "data", tmp_path / "server.log")
    url = f"http://127.0.0.1:{server.client.base_url.port}"

    assert _ingest(folder, url) == {"uploaded": 3, "already_in_gallery": 0, "url": url}
    posts = _gallery_posts(server.client)
    assert _ingest(folder, url) == {"uploaded": 0, "already_in_gallery": 3, "url": url}
    assert _gallery_posts(server.client) == posts  # nothing was sent again

    (folder / "dog" / "d.png").write_bytes(make_image(510, size=48))
    assert _ingest(folder, url) == {"uploaded": 1, "already_in_gallery": 3, "url": url}
    assert _gallery_posts(server.client) == posts + 1
    listed = server.client.get("/gallery").json()
    assert listed["total"] == 4
    assert sorted(item["external_id"] for item in listed["items"]) == ["cat/a.png", "cat/b.png", "dog/c.png",
                                                                      "dog/d.png"]
