"""Index kinds: the inverted-list rules, canonical names, and what a kind needs to be trained."""

from __future__ import annotations

import faiss
import pytest

from index.errors import InvalidIndexKind
from index.kinds import MIN_TRAINING_POINTS, IndexSpec, auto_nlist, default_nprobe, training_points_needed


def test_nlist_is_the_power_of_two_nearest_the_square_root_within_bounds():
    assert [auto_nlist(n) for n in (0, 1, 100, 10_000, 1_000_000, 10**12)] == [16, 16, 16, 128, 1024, 65536]
    assert [default_nprobe(nlist) for nlist in (8, 16, 256, 1024)] == [8, 16, 16, 64]


def test_names_are_canonical_and_prefix_kinds_search_their_coarse_kind():
    assert IndexSpec.parse("  hnsw-SQ8 ").name == "HNSW-SQ8"
    assert IndexSpec.parse("HNSW-SQ8").factory(64, 10) == "HNSW32,SQ8"
    spec = IndexSpec.parse("PREFIX: ivf-flat", nprobe=4, k_factor=8)
    assert (spec.name, spec.prefix, spec.k_factor) == ("prefix:IVF-Flat", True, 8)
    assert spec.coarse() == IndexSpec.parse("IVF-Flat", nprobe=4)  # the factor is not passed on
    assert spec.factory(64, 10_000) == "IVF128,Flat"
    assert IndexSpec.parse("IVF-PQ").factory(30, 10) == "IVF16,PQ6x4fs,Refine(SQ8)"  # a divisor of 30


@pytest.mark.parametrize("kind", ["", "   ", "IDMap2,Flat", "IVF{nlist},Flat", "prefix:",
                                  "prefix:prefix:Flat"])
def test_malformed_kinds_are_refused(kind):
    with pytest.raises(InvalidIndexKind):
        IndexSpec.parse(kind)


def test_a_kind_faiss_cannot_build_is_refused_when_validated():
    spec = IndexSpec.parse("PQ7")  # 7 sub-quantizers do not divide 64 dimensions
    with pytest.raises(InvalidIndexKind, match="FAISS cannot build"):
        spec.validate(64)
    IndexSpec.parse("PQ8").validate(64)


@pytest.mark.parametrize(("kind", "n", "needed"), [
    ("Flat", 10_000, 0),
    ("HNSW", 10_000, 0),
    ("SQ8", 10_000, MIN_TRAINING_POINTS),  # SQ8 trains its ranges
    ("IVF-Flat", 1_000_000, 39 * 1024),  # 39 points per centroid
    ("IVF-PQ", 1_000_000, 39 * 1024),  # through the Refine wrapper
    ("PQ8", 100, 39 * 256),  # 8-bit PQ codes: 256 centroids per sub-quantizer
])
def test_training_points_needed(kind, n, needed):
    assert training_points_needed(IndexSpec.parse(kind).create(64, n)) == needed


def test_an_untrained_kind_is_trained_once_it_has_enough_points(unit_vectors):
    index = IndexSpec.parse("IVF-Flat").create(32, 2000)
    needed = training_points_needed(index)
    index.train(unit_vectors(needed, 32))
    assert training_points_needed(index) == 0 and isinstance(faiss.extract_index_ivf(index), faiss.IndexIVF)
