"""Items without an image (vectors imported alone) on real engines: searchable by their vector, no image
to read, deletable, left alone by the blob sweep; a new version leaves them out (nothing to embed them
from) and never fails for them, and takes them in once `attach_images` gave them theirs. SQLite + FAISS,
PostgreSQL + pgvector and PostgreSQL + Milvus Lite (`gallery_engines`)."""

from __future__ import annotations

import numpy as np
import pytest

from index import Item, NewItem, NoImage
from tests.index.engines import ENGINE_NAMES

pytestmark = pytest.mark.parametrize("gallery_engines", ENGINE_NAMES, indirect=True)


def test_an_item_without_an_image_is_searchable_and_has_no_image_to_read(open_gallery, unit_vectors) -> None:
    gallery = open_gallery()
    vectors = unit_vectors(3)
    pictured, bare, other = gallery.add([NewItem(b"pictured", "p"), NewItem(None, "bare", "cat"),
                                         NewItem(None, "other")], {"v1": vectors})
    assert pictured.has_image and not bare.has_image and bare.sha256 is None
    assert gallery.get(bare.id) == bare and gallery.count(has_image=False) == 2 and gallery.count() == 3
    assert gallery.search(vectors[1:2], 1)[1][0][0].item == bare
    for read in (gallery.image, gallery.image_path):
        with pytest.raises(NoImage, match=f"item {bare.id} has no image"):
            read(bare.id)
    assert gallery.delete(bare.id) == bare
    assert gallery.sweep_blobs() == 0  # items without an image name none: nothing is taken for an orphan
    assert gallery.image(pictured.id) == b"pictured"
    assert {hit.item.id for hit in gallery.search(vectors[1:2], 3)[1][0]} == {pictured.id, other.id}
    assert other.id in gallery.ids_missing_vectors("v2", has_image=False).tolist()


def test_a_new_version_leaves_them_out_until_their_image_is_attached(open_gallery, unit_vectors) -> None:
    gallery = open_gallery()
    items = gallery.add([NewItem(f"img-{i}".encode(), f"x{i}") for i in range(3)]
                        + [NewItem(None, f"bare{i}") for i in range(2)], {"v1": unit_vectors(5, seed=1)})
    pictured, bare = [it.id for it in items[:3]], [it.id for it in items[3:]]
    assert gallery.ids_missing_vectors("v2", has_image=True).tolist() == pictured
    assert gallery.ids_missing_vectors("v2", has_image=False).tolist() == bare
    asked: list[list[Item]] = []

    def embed(missing: list[Item]) -> np.ndarray:
        asked.append(missing)
        return unit_vectors(len(missing), 16, seed=len(asked))

    gallery.activate("v2", fill_missing=embed)
    assert [[it.id for it in batch] for batch in asked] == [pictured]
    assert gallery.live_version == "v2"
    found = {hit.item.id for hit in gallery.search(unit_vectors(1, 16, seed=9), 10)[1][0]}
    assert found == set(pictured)  # the items without an image are not in v2

    assert gallery.attach_images([bare[0], pictured[0]], [b"late", b"ignored"]) == [bare[0]]
    assert gallery.image(bare[0]) == b"late" and gallery.image(pictured[0]) == b"img-0"
    assert gallery.sweep_blobs() == 0  # the image offered to an item that has one was not kept
    gallery.activate("v1")  # rollback: v1 holds every item, by its imported vector
    assert len(gallery.search(unit_vectors(1, seed=9), 10)[1][0]) == 5
    gallery.activate("v2", fill_missing=embed)
    assert [it.id for it in asked[-1]] == [bare[0]] and asked[-1][0].has_image
    found = {hit.item.id for hit in gallery.search(unit_vectors(1, 16, seed=9), 10)[1][0]}
    assert found == {*pictured, bare[0]}


def test_a_version_can_go_live_when_no_item_has_an_image(open_gallery, unit_vectors) -> None:
    gallery = open_gallery()
    gallery.add([NewItem(None, "a"), NewItem(None, "b")], {"v1": unit_vectors(2)})
    gallery.activate("v2", fill_missing=lambda missing: pytest.fail(f"asked to embed {missing}"))
    assert gallery.live_version == "v2"
    assert gallery.search(unit_vectors(1, 16), 5) == ("v2", [[]])
