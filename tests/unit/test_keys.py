"""Object keys: exact strings, round-trips, foreign keys, and the listing marker's order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator.keys import ChunkKey, object_key, offset_marker, parse_key, partition_prefix

MAX_OFFSET = 2**63 - 1  # Kafka offsets are int64
TOPIC_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"

topics = st.text(alphabet=TOPIC_ALPHABET, min_size=1, max_size=40)
partitions = st.integers(min_value=0, max_value=99_999)
offsets = st.integers(min_value=0, max_value=MAX_OFFSET)


# -- exact strings -------------------------------------------------------------------------
def test_object_key_exact_string() -> None:
    assert (
        object_key("snds.prescriptions", 3, 0, 499)
        == "snds.prescriptions/00003/00000000000000000000-00000000000000000499.avro"
    )


def test_object_key_largest_offset_fits_in_twenty_digits() -> None:
    assert (
        object_key("t", 99_999, MAX_OFFSET, MAX_OFFSET)
        == "t/99999/09223372036854775807-09223372036854775807.avro"
    )


def test_chunk_key_str_is_the_object_key() -> None:
    key = ChunkKey("reimbursements-v1", 12, 1_000, 1_999)
    assert str(key) == "reimbursements-v1/00012/00000000000000001000-00000000000000001999.avro"


def test_partition_prefix_exact_string() -> None:
    assert partition_prefix("reimbursements", 7) == "reimbursements/00007/"


def test_offset_marker_exact_string() -> None:
    assert offset_marker("reimbursements", 7, 42) == "reimbursements/00007/00000000000000000042"


def test_single_offset_chunk_is_valid() -> None:
    assert str(ChunkKey("t", 0, 5, 5)) == "t/00000/00000000000000000005-00000000000000000005.avro"


@pytest.mark.parametrize(
    ("partition", "first", "last"),
    [(-1, 0, 0), (0, -1, 0), (0, 10, 9)],
)
def test_chunk_key_rejects_invalid_ranges(partition: int, first: int, last: int) -> None:
    with pytest.raises(ValueError, match="invalid chunk range"):
        ChunkKey("t", partition, first, last)


def test_chunk_keys_order_by_topic_partition_then_offsets() -> None:
    keys = [
        ChunkKey("b", 0, 0, 9),
        ChunkKey("a", 1, 0, 9),
        ChunkKey("a", 0, 10, 19),
        ChunkKey("a", 0, 0, 9),
    ]
    assert sorted(keys) == [
        ChunkKey("a", 0, 0, 9),
        ChunkKey("a", 0, 10, 19),
        ChunkKey("a", 1, 0, 9),
        ChunkKey("b", 0, 0, 9),
    ]


# -- parse_key -----------------------------------------------------------------------------
def test_parse_key_exact_fields() -> None:
    parsed = parse_key("snds.prescriptions/00003/00000000000000000500-00000000000000000999.avro")
    assert parsed == ChunkKey("snds.prescriptions", 3, 500, 999)


@settings(max_examples=200, deadline=None)
@given(topic=topics, partition=partitions, first=offsets, length=offsets)
def test_parse_key_round_trips(topic: str, partition: int, first: int, length: int) -> None:
    last = min(first + length, MAX_OFFSET)
    key = ChunkKey(topic, partition, first, last)
    text = str(key)
    assert text == object_key(topic, partition, first, last)
    assert parse_key(text) == key
    parsed = parse_key(text)
    assert parsed is not None
    assert str(parsed) == text


GOOD = "t/00000/00000000000000000000-00000000000000000009.avro"


@pytest.mark.parametrize(
    "foreign",
    [
        "",
        "t/00000/",
        "t/00000/00000000000000000000",  # an offset marker is not a key
        GOOD[: -len(".avro")],  # no extension
        GOOD.replace(".avro", ".json"),
        GOOD + "\n",  # trailing newline
        GOOD + ".tmp",
        "x/" + GOOD,  # nested under another folder
        "t/0000/00000000000000000000-00000000000000000009.avro",  # 4-digit partition
        "t/000000/00000000000000000000-00000000000000000009.avro",  # 6-digit partition
        "t/00000/0000000000000000000-00000000000000000009.avro",  # 19-digit first
        "t/00000/00000000000000000000-000000000000000000009.avro",  # 21-digit last
        "t/00000/00000000000000000000_00000000000000000009.avro",  # wrong separator
        "t/00000/00000000000000000009-00000000000000000000.avro",  # last < first
        "t p/00000/00000000000000000000-00000000000000000009.avro",  # space in topic
        "/00000/00000000000000000000-00000000000000000009.avro",  # empty topic
        "t/00000/" + "\u0660" * 20 + "-00000000000000000009.avro",  # non-ASCII digits
        "t/\uff10\uff10\uff10\uff10\uff10/00000000000000000000-00000000000000000009.avro",
        "t/00000/+0000000000000000000-00000000000000000009.avro",
        "2026/05/09/events-1715241600-ab12cd.json",  # time + random id naming
    ],
)
def test_foreign_keys_give_none(foreign: str) -> None:
    assert parse_key(foreign) is None


def test_good_key_used_by_foreign_cases_parses() -> None:
    assert parse_key(GOOD) == ChunkKey("t", 0, 0, 9)


# -- offset_marker ordering ----------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(topic=topics, partition=partitions, first=offsets, length=offsets, marker_offset=offsets)
def test_key_sorts_after_marker_iff_first_offset_reaches_it(
    topic: str, partition: int, first: int, length: int, marker_offset: int
) -> None:
    last = min(first + length, MAX_OFFSET)
    key = object_key(topic, partition, first, last)
    marker = offset_marker(topic, partition, marker_offset)
    assert (key > marker) == (first >= marker_offset)


@settings(max_examples=100, deadline=None)
@given(
    topic=topics,
    partition=partitions,
    firsts=st.lists(offsets, min_size=1, max_size=20, unique=True),
    marker_offset=offsets,
)
def test_start_after_marker_lists_exactly_the_keys_from_an_offset(
    topic: str, partition: int, firsts: list[int], marker_offset: int
) -> None:
    """What a store listing with `start_after=offset_marker(...)` returns, in order."""
    keys = sorted(object_key(topic, partition, f, f) for f in firsts)
    marker = offset_marker(topic, partition, marker_offset)
    listed = [k for k in keys if k > marker]
    assert listed == [
        object_key(topic, partition, f, f) for f in sorted(firsts) if f >= marker_offset
    ]


def test_marker_boundaries_exact() -> None:
    marker = offset_marker("t", 0, 100)
    assert object_key("t", 0, 99, 100) < marker
    assert object_key("t", 0, 100, 100) > marker
    assert object_key("t", 0, 100, 200) > marker
    assert object_key("t", 0, 101, 101) > marker
    # keys of a neighbouring partition stay outside the partition's range
    assert object_key("t", 1, 0, 0) > offset_marker("t", 0, MAX_OFFSET)
    assert object_key("t", 1, 0, 0).startswith(partition_prefix("t", 1))
    assert not object_key("t", 1, 0, 0).startswith(partition_prefix("t", 0))
