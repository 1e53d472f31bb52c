"""Search endpoints on a real app: label and metadata filters, batch search, embed, query expansion.

The module shares one app; every test uses its own labels and metadata values, so the items other
tests add never match its filters.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.service.routes.queries import search


def test_label_and_metadata_filters(shared_client, add, make_image):
    shops = ["filter-north", "filter-south", "filter-north", "filter-south", "filter-north", "filter-south"]
    items = add(list(range(130, 136)), labels=["filter-cat"] * 3 + ["filter-dog"] * 3,
                metadata=[{"shop": shop, "n": i, "sale": i % 2 == 0} for i, shop in enumerate(shops)])
    ids = [item["id"] for item in items]
    query = make_image(130)

    def found(**form) -> set[int]:
        return {hit["id"] for hit in search(shared_client, query, k="50", **form)}

    assert found(label="filter-dog") == set(ids[3:])
    assert found(metadata=json.dumps({"shop": "filter-north"})) == {ids[0], ids[2], ids[4]}
    assert found(label="filter-dog", metadata=json.dumps({"shop": "filter-north"})) == {ids[4]}
    both = found(metadata=json.dumps({"shop": "filter-south", "sale": False}))
    assert both == {ids[1], ids[3], ids[5]}
    assert found(metadata=json.dumps({"shop": "filter-south", "n": 3})) == {ids[3]}
    assert found(metadata=json.dumps({"shop": "filter-nowhere"})) == set()
    assert found(label="filter-cat")  # a filter keeps k hits when k items match
    assert len(search(shared_client, query, k="2", label="filter-cat")) == 2
    # an empty form field is an absent one: no label filter
    assert found(label="") >= set(ids)  # both labels, not only those of an (empty) label


def test_batch_search_returns_one_list_per_file_in_order(shared_client, add, make_image):
    ids = [item["id"] for item in add([170, 171, 172], labels=["batch"] * 3)]
    order = [2, 0, 1, 2]
    files = [("files", (f"q{i}.png", make_image(170 + i))) for i in order]
    response = shared_client.post("/search/batch", files=files, data={"k": "2", "label": "batch"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(order)
    assert [hits[0]["id"] for hits in results] == [ids[i] for i in order]
    assert all(len(hits) == 2 and hits[0]["score"] > 0.99 for hits in results)
    single = search(shared_client, make_image(170 + order[1]), k="2", label="batch")
    assert [hit["id"] for hit in single] == [hit["id"] for hit in results[1]]


def test_embed_returns_unit_vectors_of_the_serving_model(shared_client, add, make_image):
    files = [("files", (name, make_image(seed))) for name, seed in (("a.png", 180), ("b.png", 181),
                                                                   ("a-again.png", 180))]
    response = shared_client.post("/embed", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    vectors = np.asarray(body["embeddings"], dtype=np.float32)
    assert body["dim"] == 1536 and vectors.shape == (3, 1536)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    assert float(vectors[0] @ vectors[1]) < 0.99
    assert body["model_version"] == shared_client.get("/ready").json()["model_version"]
    # the search score of a stored image is the inner product of the two embeddings
    (stored,) = add([181], labels=["embed"])
    hit = search(shared_client, make_image(180), label="embed")[0]
    assert hit["id"] == stored["id"]
    assert hit["score"] == pytest.approx(float(vectors[0] @ vectors[1]), abs=2e-3)


def test_query_expansion_keeps_results_ordered(shared_client, add, make_image):
    add(list(range(190, 194)), labels=["qe"] * 4)
    hits = search(shared_client, make_image(190), k="4", label="qe", qe_n="2", qe_alpha="3")
    scores = [hit["score"] for hit in hits]
    assert len(hits) == 4 and scores == sorted(scores, reverse=True)


def test_a_bad_filter_is_refused_before_the_upload_is_decoded(shared_client, expect_error):
    """The filter is parsed first: a broken image with a bad filter gets the filter's 422, not a 400."""
    broken = {"file": ("q.png", b"not an image")}
    for bad in ('{"shop": ["a"]}', '{"n": 1000000000000000000000000000000}', '{"": 1}', "[1]"):
        form = {"metadata": bad}
        expect_error(shared_client.post("/search", files=broken, data=form), 422, "invalid_parameter")
        batch = [("files", ("q.png", b"not an image"))]
        expect_error(shared_client.post("/search/batch", files=batch, data=form), 422, "invalid_parameter")
    expect_error(shared_client.post("/search", files=broken, data={"metadata": '{"shop": "x"}'}), 400)
