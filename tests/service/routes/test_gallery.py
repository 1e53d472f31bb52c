"""Gallery endpoints on a real app: update, delete, external ids, paging, original images, similar.

The module shares one app; every test uses its own labels, metadata values and external ids, so the
items other tests add never match its filters.
"""

from __future__ import annotations

import json

import pytest

from tests.service.routes.queries import search


def test_patch_changes_label_and_metadata_in_get_and_in_search(shared_client, add, make_image):
    (item,) = add([100], labels=["patch-old"], metadata=[{"shop": "patch-a", "n": 1}])
    path = f"/gallery/{item['id']}"

    patched = shared_client.patch(path, json={"label": "patch-new", "metadata": {"shop": "patch-b"}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["label"] == "patch-new" and patched.json()["metadata"] == {"shop": "patch-b"}
    assert shared_client.get(path).json() == patched.json()
    top = search(shared_client, make_image(100), k="1")[0]
    assert (top["id"], top["label"], top["metadata"]) == (item["id"], "patch-new", {"shop": "patch-b"})
    assert search(shared_client, make_image(100), label="patch-old") == []
    assert [h["id"] for h in search(shared_client, make_image(100), label="patch-new")] == [item["id"]]
    assert search(shared_client, make_image(100), metadata=json.dumps({"shop": "patch-a"})) == []

    unchanged = shared_client.patch(path, json={})
    assert unchanged.json() == patched.json()
    cleared = shared_client.patch(path, json={"label": None})
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["label"] is None and cleared.json()["metadata"] == {"shop": "patch-b"}
    assert search(shared_client, make_image(100), label="patch-new") == []


def test_delete_removes_the_item_from_search_at_once(shared_client, add, make_image, expect_error):
    first, second = add([110, 111], labels=["del", "del"])
    total = shared_client.get("/gallery").json()["total"]
    assert search(shared_client, make_image(110), k="1")[0]["id"] == first["id"]

    assert shared_client.delete(f"/gallery/{first['id']}").status_code == 204
    expect_error(shared_client.get(f"/gallery/{first['id']}"), 404, "not_found")
    expect_error(shared_client.get(f"/gallery/{first['id']}/image"), 404, "not_found")
    expect_error(shared_client.delete(f"/gallery/{first['id']}"), 404, "not_found")
    hits = search(shared_client, make_image(110), k="100")
    assert first["id"] not in [hit["id"] for hit in hits]
    assert [hit["id"] for hit in search(shared_client, make_image(110), label="del")] == [second["id"]]
    assert shared_client.get("/gallery").json()["total"] == total - 1


def test_compact_rebuilds_the_index_and_search_goes_on(shared_client, add, make_image):
    (item,) = add([112], labels=["compact"])
    accepted = shared_client.post("/gallery/compact")
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["version"] == shared_client.get("/models").json()["active"]
    assert accepted.json()["vectors"] >= 1 and accepted.json()["tombstones"] == 0  # Flat deletes physically
    assert [hit["id"] for hit in search(shared_client, make_image(112), label="compact")] == [item["id"]]


def test_external_ids_with_a_slash_can_be_read_and_deleted(shared_client, add, expect_error):
    (item,) = add([115], external_ids=["shop/42/front"])
    found = shared_client.get("/gallery/external/shop/42/front")
    assert found.status_code == 200, found.text
    assert found.json()["id"] == item["id"]
    assert shared_client.delete("/gallery/external/shop/42/front").status_code == 204
    expect_error(shared_client.get(f"/gallery/{item['id']}"), 404, "not_found")


def test_resending_an_external_id_returns_the_stored_item_unchanged(shared_client, add):
    (first,) = add([120], labels=["resend-first"], metadata=[{"v": 1}], external_ids=["resend-1"])
    total = shared_client.get("/gallery").json()["total"]
    (again,) = add([121], labels=["resend-second"], metadata=[{"v": 2}], external_ids=["resend-1"])
    assert again == first
    assert shared_client.get("/gallery").json()["total"] == total
    assert shared_client.get("/gallery/external/resend-1").json() == first
    # a batch mixing a known and a new external id stores only the new one
    known, new = add([122, 123], external_ids=["resend-1", "resend-2"])
    assert known == first and new["id"] != first["id"]
    assert shared_client.get("/gallery").json()["total"] == total + 1


def test_one_external_id_for_two_files_of_a_request_is_refused(shared_client, make_image, expect_error):
    total = shared_client.get("/gallery").json()["total"]
    files = [("files", (f"twin-{seed}.png", make_image(seed))) for seed in (124, 125)]
    response = shared_client.post("/gallery", files=files, data={"external_ids": ["twin", "twin"]})
    assert "twin" in expect_error(response, 422, "invalid_parameter")["detail"]
    assert shared_client.get("/gallery").json()["total"] == total


def test_paging_and_label_filter_of_the_listing(shared_client, add):
    ids = [item["id"] for item in add(list(range(140, 145)), labels=["page"] * 5)]
    pages = [shared_client.get("/gallery", params={"label": "page", "limit": 2, "offset": offset}).json()
             for offset in (0, 2, 4, 6)]
    assert [page["total"] for page in pages] == [5, 5, 5, 5]
    assert [[item["id"] for item in page["items"]] for page in pages] == [ids[:2], ids[2:4], ids[4:], []]
    assert all(item["label"] == "page" for page in pages for item in page["items"])
    everything = shared_client.get("/gallery", params={"limit": 1000}).json()
    listed = [item["id"] for item in everything["items"]]
    assert everything["total"] == len(listed) and set(ids) <= set(listed)
    assert listed == sorted(listed)
    assert shared_client.get("/gallery", params={"label": "page-none"}).json() == {
        "items": [], "total": 0, "offset": 0, "limit": 100}


@pytest.mark.parametrize(("fmt", "media_type"), [("JPEG", "image/jpeg"), ("PNG", "image/png"),
                                                  ("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_the_image_endpoint_returns_the_original_bytes(shared_client, make_image, fmt, media_type):
    data = make_image(150, fmt=fmt, size=80)
    added = shared_client.post("/gallery", files=[("files", (f"orig.{fmt.lower()}", data))])
    assert added.status_code == 201, added.text
    response = shared_client.get(f"/gallery/{added.json()['items'][0]['id']}/image")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == media_type


def test_similar_excludes_the_item_itself(shared_client, add, make_image):
    items = add(list(range(160, 165)), labels=["similar"] * 5)
    target = items[0]["id"]
    response = shared_client.get(f"/gallery/{target}/similar", params={"k": 3, "label": "similar"})
    assert response.status_code == 200, response.text
    similar = [hit["id"] for hit in response.json()["results"]]
    assert len(similar) == 3 and target not in similar
    # the same neighbours as a search with the item's own image, after the item itself
    by_image = [hit["id"] for hit in search(shared_client, make_image(160), k="4", label="similar")]
    assert by_image[0] == target and by_image[1:] == similar
    assert response.json()["model_version"] == shared_client.get("/ready").json()["model_version"]
