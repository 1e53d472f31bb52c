"""index/validation.py: item metadata and metadata filters are refused beyond the store's limits; bad
vectors are refused naming their row."""

from __future__ import annotations

import math

import numpy as np
import pytest

from index import InvalidFilter, InvalidItem, InvalidVectors
from index.validation import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    check_filter,
    check_metadata,
    check_vectors,
)


def nested(depth: int) -> dict:
    """{"a": {"a": ... {"a": 1}}} with `depth` objects (built without recursion)."""
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value  # type: ignore[return-value]


def test_metadata_returns_canonical_json() -> None:
    assert check_metadata({"b": [1, 2.5, None, True], "a": "x"}) == '{"a":"x","b":[1,2.5,null,true]}'


def test_metadata_nesting_is_limited() -> None:
    check_metadata(nested(MAX_METADATA_DEPTH))
    with pytest.raises(InvalidItem, match="nested more than"):
        check_metadata(nested(MAX_METADATA_DEPTH + 1))


def test_metadata_nested_far_beyond_the_stack_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(InvalidItem, match="nested more than"):
        check_metadata(nested(100_000))
    lists: object = 1
    for _ in range(100_000):
        lists = [lists]
    with pytest.raises(InvalidItem, match="nested more than"):
        check_metadata({"a": lists})


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_metadata_integers_must_fit_in_64_bits(value: int) -> None:
    with pytest.raises(InvalidItem, match="64 bits"):
        check_metadata({"n": value})


def test_metadata_64_bit_bounds_are_accepted() -> None:
    assert check_metadata({"hi": 2**63 - 1, "lo": -(2**63)}) == f'{{"hi":{2**63 - 1},"lo":{-(2**63)}}}'


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_metadata_numbers_must_be_finite(value: float) -> None:
    with pytest.raises(InvalidItem, match="not a finite number"):
        check_metadata({"x": [1, {"y": value}]})


def test_metadata_size_is_limited() -> None:
    check_metadata({"s": "x" * (MAX_METADATA_BYTES - 10)})
    with pytest.raises(InvalidItem, match="bytes as JSON"):
        check_metadata({"s": "x" * MAX_METADATA_BYTES})


@pytest.mark.parametrize("metadata", [[1], "x", None, {1: "a"}, {"a": {2: "b"}}, {"a": object()},
                                      {"a": {1, 2}}])
def test_metadata_must_be_a_json_object_with_string_keys(metadata: object) -> None:
    with pytest.raises(InvalidItem):
        check_metadata(metadata)


@pytest.mark.parametrize("value", [10**30, -(2**63) - 1, math.nan, math.inf, {"a": 1}, [1], nested(100_000)])
def test_filter_values_must_be_scalars_the_store_can_compare(value: object) -> None:
    with pytest.raises(InvalidFilter):
        check_filter({"a": value})


def test_filter_accepts_scalars() -> None:
    check_filter({"s": "x", "i": 2**63 - 1, "f": 1.5, "b": True, "n": None})


def test_vector_errors_name_the_first_bad_row_of_the_whole_array() -> None:
    vectors = np.tile(np.float32([0.6, 0.8]), (5, 1))
    assert check_vectors(vectors, unit=True).shape == (5, 2)
    vectors[3, 0] = np.nan
    with pytest.raises(InvalidVectors, match=r"NaN or infinity \(row 103\)"):
        check_vectors(vectors, first_row=100)
    vectors[3] = [0.6, 0.8]
    vectors[2] = [0.3, 0.4]
    with pytest.raises(InvalidVectors, match=r"L2-normalised \(row 2 has norm 0.5;"):
        check_vectors(vectors, unit=True)
