"""`cgd import` on a real data directory: embeddings of the served model (the embedded default, really
computed) and their images go into the gallery in durable chunks; a second run adds nothing; items
without an image are imported, counted, and given their image by a later run; bad files, another model's
vectors and a running service are refused before anything is written."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index import Gallery
from model import Embedder
from service.cli import main

IMAGES = 7


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load(None, device="cpu", precision="fp32")


@pytest.fixture
def photos(tmp_path, make_image, embedder) -> tuple[Path, np.ndarray]:
    """(folder with images/ and labels.csv (path,label,split,metadata), their embeddings (N, d))."""
    folder = tmp_path / "photos"
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(IMAGES):
        path = f"images/{i}.png"
        (folder / path).write_bytes(make_image(900 + i, size=64))
        rows.append({"path": path, "label": "ab"[i % 2], "split": "test", "metadata": json.dumps({"i": i})})
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split", "metadata"])
        writer.writeheader()
        writer.writerows(rows)
    images = [Image.open(folder / row["path"]).convert("RGB") for row in rows]
    return folder, embedder.embed_images(images)


def _import(vectors: Path, items: Path, data_dir: Path, version: str, *extra: str) -> int:
    return main(["import", str(vectors), str(items), "--model-version", version, "--data-dir", str(data_dir),
                 *extra])


def test_import_adds_items_under_the_served_model_and_a_second_run_adds_nothing(
        photos, embedder, tmp_path, capsys) -> None:
    folder, vectors = photos
    np.save(tmp_path / "vectors.npy", vectors.astype(np.float16))  # any float width is accepted
    data = tmp_path / "data"
    assert _import(tmp_path / "vectors.npy", folder / "labels.csv", data, embedder.version,
                   "--batch-size", "3") == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report == {"imported": IMAGES, "without_image": 0, "images_attached": 0, "already_in_gallery": 0,
                      "model_version": embedder.version, "dim": vectors.shape[1], "data_dir": str(data)}
    with Gallery.open(data / "gallery") as gallery:
        assert gallery.live_version == embedder.version and gallery.count() == IMAGES
        _, hits = gallery.search(vectors[3:4], 1)
        item = hits[0][0].item
        assert (item.external_id, item.label, item.metadata) == ("images/3.png", "b", {"i": 3})
        assert gallery.image(item.id) == (folder / "images" / "3.png").read_bytes()
    assert _import(tmp_path / "vectors.npy", folder / "labels.csv", data, embedder.version) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["already_in_gallery"] == IMAGES


def test_jsonl_items_with_their_own_external_ids(photos, embedder, tmp_path, capsys) -> None:
    folder, vectors = photos
    np.save(tmp_path / "vectors.npy", vectors)
    lines = [json.dumps({"path": f"images/{i}.png", "external_id": f"sku-{i}", "metadata": {"shop": "x"}})
             for i in range(IMAGES)]
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    assert _import(tmp_path / "vectors.npy", folder / "items.jsonl", tmp_path / "data", embedder.version) == 0
    with Gallery.open(tmp_path / "data" / "gallery") as gallery:
        item = gallery.get_by_external_id("sku-5")
        assert item.label is None and item.metadata == {"shop": "x"}


def _write_items(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_items_without_an_image_are_imported_counted_and_given_theirs_by_a_later_run(
        photos, embedder, tmp_path, capsys) -> None:
    folder, vectors = photos
    np.save(tmp_path / "vectors.npy", vectors)
    rows = [{"path": f"images/{i}.png" if i < 4 else "", "external_id": f"sku-{i}", "label": "ab"[i % 2]}
            for i in range(IMAGES)]
    _write_items(folder / "items.csv", rows)
    data = tmp_path / "data"
    assert _import(tmp_path / "vectors.npy", folder / "items.csv", data, embedder.version) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (report["imported"], report["without_image"], report["images_attached"],
            report["already_in_gallery"]) == (IMAGES, 3, 0, 0)
    with Gallery.open(data / "gallery") as gallery:
        bare = gallery.get_by_external_id("sku-5")
        assert not bare.has_image and bare.label == "b" and gallery.count(has_image=False) == 3
        assert gallery.search(vectors[5:6], 1)[1][0][0].item == bare  # found by its vector
    rows[4]["path"], rows[5]["path"] = "images/4.png", "images/5.png"  # their images, supplied later
    _write_items(folder / "items.csv", rows)
    assert _import(tmp_path / "vectors.npy", folder / "items.csv", data, embedder.version) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (report["imported"], report["without_image"], report["images_attached"],
            report["already_in_gallery"]) == (0, 0, 2, IMAGES - 2)
    with Gallery.open(data / "gallery") as gallery:
        assert gallery.image(gallery.get_by_external_id("sku-5").id) == (folder / "images/5.png").read_bytes()
        assert gallery.count(has_image=False) == 1 and gallery.count() == IMAGES


def test_an_item_without_an_image_needs_an_external_id(photos, embedder, tmp_path, capsys) -> None:
    folder, vectors = photos
    np.save(tmp_path / "vectors.npy", vectors)
    lines = [json.dumps({"path": f"images/{i}.png"} if i != 2 else {"label": "a"}) for i in range(IMAGES)]
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    assert _import(tmp_path / "vectors.npy", folder / "items.jsonl", tmp_path / "data", embedder.version) == 2
    assert "item 2: an item without an image (no 'path') needs an 'external_id'" in capsys.readouterr().err


def _nan_row(vectors: np.ndarray) -> np.ndarray:
    vectors[5, 0] = np.nan
    return vectors


def _short_row(vectors: np.ndarray) -> np.ndarray:
    vectors[2] *= 0.5
    return vectors


@pytest.mark.parametrize(("spoil", "version", "message"), [
    (_nan_row, None, "NaN or infinity (row 5)"),
    (_short_row, None, "L2-normalised (row 2 has norm 0.5"),
    (lambda v: v[:, :512] / np.linalg.norm(v[:, :512], axis=1, keepdims=True), None,
     "the vectors have 512 dimensions but model"),
    (lambda v: v, "0123456789ab", "the vectors are of model version '0123456789ab' but the service serves"),
    (lambda v: v[:-1], None, f"has {IMAGES} items for {IMAGES - 1} vectors"),
])
def test_bad_vectors_or_another_model_are_refused_before_anything_is_written(
        spoil, version, message, photos, embedder, tmp_path, capsys) -> None:
    folder, vectors = photos
    np.save(tmp_path / "vectors.npy", spoil(vectors.copy()))
    data = tmp_path / "data"
    assert _import(tmp_path / "vectors.npy", folder / "labels.csv", data, version or embedder.version,
                   "--batch-size", "2") == 2
    assert message in capsys.readouterr().err
    if (data / "gallery").exists():
        with Gallery.open(data / "gallery") as gallery:
            assert gallery.count() == 0


def test_a_missing_image_or_a_bad_metadata_cell_names_its_item(photos, embedder, tmp_path, capsys) -> None:
    folder, vectors = photos
    np.save(tmp_path / "vectors.npy", vectors)
    (folder / "images" / "4.png").unlink()
    assert _import(tmp_path / "vectors.npy", folder / "labels.csv", tmp_path / "data", embedder.version) == 2
    assert "item 4: image" in capsys.readouterr().err
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "metadata"])
    writer.writerows([[f"images/{i}.png", "{not json" if i == 1 else ""] for i in range(IMAGES)])
    (folder / "items.csv").write_text(buffer.getvalue())
    assert _import(tmp_path / "vectors.npy", folder / "items.csv", tmp_path / "data", embedder.version) == 2
    assert "item 1: metadata is not JSON" in capsys.readouterr().err


def test_a_gallery_open_in_the_service_is_not_imported_into(photos, embedder, tmp_path, capsys) -> None:
    folder, vectors = photos
    np.save(tmp_path / "vectors.npy", vectors)
    with Gallery.open(tmp_path / "data" / "gallery"):  # as a running service holds it
        assert _import(tmp_path / "vectors.npy", folder / "labels.csv", tmp_path / "data",
                       embedder.version) == 1
    assert "stop the service first" in capsys.readouterr().err


@pytest.mark.slow
def test_the_service_serves_the_imported_gallery_with_the_model_that_made_it(
        photos, embedder, tmp_path, serve) -> None:
    """A real `cgd serve` on the imported data directory keeps the imported version live (no
    re-embedding) and finds an imported item from its image."""
    folder, vectors = photos
    np.save(tmp_path / "vectors.npy", vectors)
    assert _import(tmp_path / "vectors.npy", folder / "labels.csv", tmp_path / "data", embedder.version) == 0
    server = serve(tmp_path / "data", tmp_path / "server.log")
    assert server.client.get("/ready").json()["model_version"] == embedder.version
    image = (folder / "images" / "3.png").read_bytes()
    found = server.client.post("/search", files={"file": ("3.png", image)}, data={"k": "1"}).json()
    assert found["model_version"] == embedder.version
    assert found["results"][0]["external_id"] == "images/3.png" and found["results"][0]["score"] > 0.99
