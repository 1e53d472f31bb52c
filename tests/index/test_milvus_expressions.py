"""Filters as Milvus expressions: what a collection holds of an item, the expression of each filter, and
string literals that a real Milvus Lite reads back as exactly the text they quote (no injection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from index.filters import ItemFilter, MetadataFilter
from index.milvus_expressions import UnsupportedFilter, expression, held_attributes, quoted
from index.records import Item

NASTY = ['plain', 'say "hi"', "back\\slash", "ends with \\", "line\nbreak", "cr\rlf", "tab\t", "bell\x07\x00",
         "naïve 中文 😀", "it's", 'x" or label != "', "x\\\" or id >= 0 or label == \"", "", "{v}"]


def item(label: str | None, metadata: dict) -> Item:
    return Item(1, None, label, metadata, "", 0.0)


def test_metadata_is_held_by_type_and_only_what_a_filter_can_match() -> None:
    label, meta, partial = held_attributes(item("cat", {"n": 1, "f": 1.5, "b": True, "s": "1", "z": None,
                                                         "big": 2**60, "nested": {"a": 1}, "list": [1]}))
    assert (label, partial) == ("cat", False)
    assert meta == {"n": {"n": 1, "f": 1.5}, "b": {"b": True}, "s": {"s": "1"}, "z": {"z": True}}
    assert held_attributes(None) == (None, {}, False)
    assert held_attributes(item("x" * 70_000, {"a": 1})) == (None, {}, True)
    assert held_attributes(item(None, {f"k{i}": "v" * 100 for i in range(700)}))[2]


def test_each_filter_term_compares_within_its_type() -> None:
    where = ItemFilter('a"b', MetadataFilter.of({"n": 1, "b": False, "s": "1", "z": None, "f": -0.5}))
    assert expression(where) == ('label == "a\\"b" and meta["b"]["b"] == false and '
                                 'meta["n"]["f"] == -0.5 and meta["n"]["n"] == 1 and '
                                 'meta["s"]["s"] == "1" and meta["z"]["z"] == true')
    with pytest.raises(UnsupportedFilter, match="2\\^53"):
        expression(ItemFilter(None, MetadataFilter.of({"n": 2**53 + 1})))
    with pytest.raises(UnsupportedFilter):
        expression(ItemFilter("x" * 70_000))


def test_quoted_strings_read_back_as_exactly_their_text_in_milvus_lite(tmp_path: Path) -> None:
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(str(tmp_path / "quoting.db"))
    try:
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
        schema.add_field("label", DataType.VARCHAR, max_length=256)
        params = client.prepare_index_params()
        params.add_index("vector", index_type="FLAT", metric_type="IP")
        client.create_collection("quoting", schema=schema, index_params=params, consistency_level="Strong")
        client.insert("quoting", [{"id": i, "vector": [1.0, 0.0], "label": text}
                                  for i, text in enumerate(NASTY)])
        for i, text in enumerate(NASTY):
            rows = client.query("quoting", filter=f"label == {quoted(text)}", output_fields=["id"])
            assert [row["id"] for row in rows] == [i], text
    finally:
        client.close()
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(tmp_path / "quoting.db"))
