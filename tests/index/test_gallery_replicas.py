"""Several processes' galleries on one PostgreSQL store (service replicas), on a real server: each has its
own folder and indexes, and `sync` / `follow` bring in what the others wrote. Two `Gallery` objects in
one process stand for two replicas: they share nothing but the database and the image directory."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from index import Gallery, GalleryLocked, VersionMoved
from index.engines import Engines, InvalidEngines
from tests.index.engines import create_database


@pytest.fixture(params=["faiss", "pgvector", "milvus"])
def engines(request, postgres_server, tmp_path) -> Callable[[str], Engines]:
    """engines(process) -> the engines a replica (or a one-process tool) opens with: one database, and
    with Milvus a Milvus Lite file each (Lite serves one process per file, as a Milvus server serves
    every replica; closing a client stops its file's server). The one-process tool's Lite file is its
    own, so with Milvus its check covers the database alone."""
    url = create_database(postgres_server)
    return lambda process: Engines(url, request.param, str(tmp_path / f"{process}.milvus.db")
                                   if request.param == "milvus" else None)


def _top(gallery: Gallery, query: np.ndarray, version: str | None = None) -> list[int]:
    return [hit.item.id for hit in gallery.search(query, 3, version=version)[1][0]]


def test_replicas_open_one_gallery_and_see_each_others_writes(tmp_path, engines, new_items,
                                                              unit_vectors) -> None:
    root = tmp_path / "gallery"
    vectors = unit_vectors(7)
    with Gallery.open(root, engines=engines("a"), replica="a") as a:
        first = a.add(new_items(4), {"v1": vectors[:4]})
        with pytest.raises(GalleryLocked):
            Gallery.open(root, engines=engines("a"), replica="a")
        b = Gallery.open(root, engines=engines("b"), replica="b")  # leaves a's index (table) alone
        Gallery.open(tmp_path / "tool", engines=engines("tool")).close()  # as a one-process tool: the same
        assert _top(a, vectors[1:2])[0] == first[1].id
        assert (root / "replicas" / "b" / ".lock").exists() and not (root / ".lock").exists()
        assert _top(b, vectors[2:3])[0] == first[2].id
        assert b.image(first[2].id) == b"img-2"  # the images are shared files
        more = a.add(new_items(1, prefix="more"), {"v1": vectors[6:]})
        assert more[0].id not in _top(b, vectors[6:])  # b's own index, until it catches up
        assert b.sync() == "v1" and _top(b, vectors[6:])[0] == more[0].id
        late = b.add(new_items(2, prefix="late"), {"v1": vectors[4:6]})
        a.delete(first[2].id)
        a.sync()
        b.sync()
        assert _top(a, vectors[5:6])[0] == late[1].id
        assert first[2].id not in _top(b, vectors[2:3])
        assert a.count() == b.count() == 6
        b.close()


def test_a_version_made_live_elsewhere_is_followed_and_stale_adds_are_refused(tmp_path, engines, new_items,
                                                                              unit_vectors) -> None:
    root = tmp_path / "gallery"
    old, new = unit_vectors(4, seed=1), unit_vectors(4, seed=2)
    with Gallery.open(root, engines=engines("a"), replica="a") as a, \
            Gallery.open(root, engines=engines("b"), replica="b") as b:
        items = a.add(new_items(4), {"v1": old})
        b.follow(b.sync())  # b opened on an empty gallery: v1 went live on a
        a.put_vectors("v2", [item.id for item in items], new)
        a.activate("v2")
        assert b.live_version == "v1" and b.sync() == "v2"
        with pytest.raises(VersionMoved):  # b still embeds with v1: the item would lack its v2 vector
            b.add(new_items(1, prefix="stale"), {"v1": old[:1]})
        assert _top(b, old[1:2], version="v1")[0] == items[1].id  # v1 serves until b follows
        b.follow("v2")
        assert b.live_version == "v2" and b.search(new[3:4], 1)[0] == "v2"
        assert _top(b, new[3:4])[0] == items[3].id
        assert b.count() == 4


def test_the_live_version_flips_only_from_the_version_a_replica_serves(tmp_path, engines, new_items,
                                                                        unit_vectors) -> None:
    """A replica that read v1 and has not followed v2 (a replica starting during a promotion, step by step)
    cannot flip the live version back to v1, nor on to v3: the store's compare-and-set refuses it."""
    root = tmp_path / "gallery"
    with Gallery.open(root, engines=engines("a"), replica="a") as a:
        items = a.add(new_items(3), {"v1": unit_vectors(3, seed=1)})
        ids = [item.id for item in items]
        with Gallery.open(root, engines=engines("b"), replica="b") as b:  # b reads v1 as the live version
            a.put_vectors("v2", ids, unit_vectors(3, seed=2))
            a.activate("v2")  # a's promotion, while b starts
            b.put_vectors("v3", ids, unit_vectors(3, seed=3))
            for version in ("v1", "v3"):
                with pytest.raises(VersionMoved, match="'v2' went live on another replica"):
                    b.activate(version)
                assert a.stored_live_version() == "v2" and b.live_version == "v1"
            b.follow(b.sync())
            b.activate("v3")  # from the version it now serves: allowed
            assert a.sync() == "v3"
            b.activate("v3")  # already live: nothing moves
        with pytest.raises(VersionMoved):
            a.activate("v1")  # a still serves v2
        a.follow("v3")
        a.activate("v1")
        assert a.stored_live_version() == "v1"


def test_a_replica_needs_postgresql(tmp_path) -> None:
    with pytest.raises(InvalidEngines, match="CGD_DATABASE_URL"):
        Gallery.open(tmp_path / "gallery", replica="a")
