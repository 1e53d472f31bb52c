"""`GET /gallery/{id}/thumbnail` and `GET /gallery/labels` on a real app (routes/gallery.py; the
module shares one app, each test with labels of its own), and an item without an image."""

from __future__ import annotations

import io

from PIL import Image

from index import NewItem
from service.thumbnails import THUMBNAIL_DIR, THUMBNAIL_SIDE


def test_the_thumbnail_is_a_small_jpeg_cached_and_removed_with_the_item(shared_client, make_image,
                                                                        expect_error):
    added = shared_client.post("/gallery", files=[("files", ("big.png", make_image(300, size=1000)))])
    assert added.status_code == 201, added.text
    item = added.json()["items"][0]
    path = f"/gallery/{item['id']}/thumbnail"

    response = shared_client.get(path)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as thumbnail:
        assert thumbnail.format == "JPEG" and thumbnail.size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    assert response.headers["etag"] == f'"{item["sha256"]}"'
    cache = shared_client.app.state.settings.data_dir / THUMBNAIL_DIR
    assert [p.read_bytes() for p in cache.rglob(f"{item['id']}-*.jpg")] == [response.content]

    again = shared_client.get(path, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and not again.content

    assert shared_client.delete(f"/gallery/{item['id']}").status_code == 204
    assert not list(cache.rglob(f"{item['id']}-*.jpg"))
    expect_error(shared_client.get(path), 404, "not_found")


def test_label_counts_most_first_and_the_unlabelled(shared_client, add):
    before = shared_client.get("/gallery/labels").json()
    add([310, 311, 312, 313], labels=["counted-a", "counted-b", "counted-b", ""])
    after = shared_client.get("/gallery/labels").json()
    counts = {entry["label"]: entry["count"] for entry in after["labels"]}
    assert counts["counted-b"] == 2 and counts["counted-a"] == 1
    assert after["unlabelled"] == before["unlabelled"] + 1
    ordered = [entry["count"] for entry in after["labels"]]
    assert ordered == sorted(ordered, reverse=True)


def test_an_item_without_an_image_has_no_thumbnail_but_is_found(shared_client, add, make_image, expect_error):
    """An item imported as a vector alone: 404 no_image for its thumbnail and image, has_image false in
    its JSON and in search hits, found by its vector, deleted like any other."""
    pictured = add([320])[0]
    gallery = shared_client.app.state.runtime.gateway.gallery
    vector = gallery.vector(pictured["id"])[None, :]  # the same vector as a picture's: found beside it
    bare = gallery.add([NewItem(None, "bare-320", "no-picture")], {gallery.live_version: vector})[0]
    for path in (f"/gallery/{bare.id}/thumbnail", f"/gallery/{bare.id}/image"):
        body = expect_error(shared_client.get(path), 404, "no_image")
        assert body["detail"] == f"item {bare.id} has no image"
    item = shared_client.get(f"/gallery/{bare.id}").json()
    assert item["has_image"] is False and item["sha256"] is None and item["label"] == "no-picture"
    assert shared_client.get(f"/gallery/{pictured['id']}").json()["has_image"] is True
    found = shared_client.post("/search", files={"file": ("q.png", make_image(320))}, data={"k": "2"}).json()
    assert {(hit["id"], hit["has_image"]) for hit in found["results"]} == {(pictured["id"], True),
                                                                           (bare.id, False)}
    assert shared_client.delete(f"/gallery/{bare.id}").status_code == 204
    expect_error(shared_client.get(f"/gallery/{bare.id}/thumbnail"), 404, "not_found")
