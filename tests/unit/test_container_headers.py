"""Format 3: the envelope keeps each record's Kafka headers (an array of {key: string,
value: [null, bytes]}, in order, repeated names and null values included), and format 2
(the envelope without headers, as the previous version wrote it) is still read. An object
of format 2 holding the records a format-3 object holds is the same chunk
(`same_chunk`): that is what makes the switch raise no conflict."""

from __future__ import annotations

import io
import json
from typing import Any, cast

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator.container import (
    FORMAT_VERSION,
    LEGACY_FORMAT,
    READABLE_FORMATS,
    _read_headers,
    encode_container,
    encode_headers,
    encode_record,
    envelope_schema,
    normalized_headers,
    object_metadata,
    read_container,
    same_chunk,
    stored_records,
    zigzag_varint,
)
from replicator.model import RawRecord, RecordHeaders

SCHEMA = json.dumps({"type": "record", "name": "T", "namespace": "x", "fields": [
    {"name": "n", "type": "string"},
]})  # fmt: skip
SCHEMAS = {7: SCHEMA}
KEY = "t/00001/00000000000000000000-00000000000000000099.avro"
META = {"topic": "t", "partition": "1", "first_offset": "0", "last_offset": "99"}


def _body(text: str) -> bytes:
    return zigzag_varint(len(text.encode())) + text.encode()


HEADERS = st.one_of(
    st.none(),
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(["dup", "traceparent", ""]), st.text(max_size=20)),
            st.one_of(st.none(), st.binary(max_size=60)),
        ),
        max_size=6,
    ),
).filter(lambda hs: all(_utf8(name) for name, _v in hs or []))


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: no Kafka header name is one
        return False
    return True


RECORDS = st.lists(
    st.builds(
        lambda i, key, headers, text: (i, key, headers, text),
        st.integers(0, 3),
        st.one_of(st.none(), st.binary(max_size=20)),
        HEADERS,
        st.text(max_size=30),
    ),
    max_size=25,
)


def _records(drawn: list[tuple[int, bytes | None, RecordHeaders | None, str]]) -> list[RawRecord]:
    out = []
    offset = 0
    for gap, key, headers, text in drawn:
        offset += gap
        out.append(RawRecord(offset, 1_700_000_000_000 + offset, key, _body(text), headers))
        offset += 1
    return out


def _container(records: list[RawRecord], fmt: str, codec: str = "deflate") -> bytes:
    return encode_container(
        KEY, SCHEMAS, records, [7] * len(records), META, codec=codec, format_version=fmt
    )


@settings(max_examples=150)
@given(drawn=RECORDS, codec=st.sampled_from(["null", "deflate"]))
def test_headers_read_back_exactly_by_our_reader_and_by_fastavro(
    drawn: list[Any], codec: str
) -> None:
    records = _records(drawn)
    data = _container(records, FORMAT_VERSION, codec)
    contents = read_container(data)
    assert contents.format == FORMAT_VERSION and contents.has_headers
    stored = stored_records(contents)
    assert [(r.offset, r.timestamp_ms, r.key, r.schema_id, r.body) for r in stored] == [
        (r.offset, r.timestamp_ms, r.key, 7, r.body) for r in records
    ]
    assert [r.headers for r in stored] == [tuple(r.headers or ()) for r in records]
    # an independent reader
    read = [cast(dict[str, Any], item) for item in fastavro.reader(io.BytesIO(data))]
    assert [[(h["key"], h["value"]) for h in item["headers"]] for item in read] == [
        list(r.headers or []) for r in records
    ]
    assert [normalized_headers(item["headers"]) for item in read] == [r.headers for r in stored]
    assert [item["value"] for item in read] == [{"n": _text(r.body)} for r in records]


def _text(body: bytes) -> str:
    value = fastavro.schemaless_reader(io.BytesIO(body), json.loads(SCHEMA), None)
    return str(cast(dict[str, Any], value)["n"])


@settings(max_examples=150)
@given(records=st.builds(_records, RECORDS), fmt=st.sampled_from(sorted(READABLE_FORMATS)))
def test_each_envelope_is_fastavros_encoding_of_it(records: list[RawRecord], fmt: str) -> None:
    """encode_record's bytes are what fastavro writes for the same envelope, in each
    format (format 2: no headers field, whatever the record carries)."""
    envelope = fastavro.parse_schema(json.loads(envelope_schema(SCHEMAS, fmt)))
    for record in records:
        item: dict[str, Any] = {
            "offset": record.offset,
            "timestamp": record.timestamp_ms,
            "key": record.key,
            "value": {"n": _text(record.body)},
        }
        if fmt != LEGACY_FORMAT:
            item["headers"] = [{"key": k, "value": v} for k, v in record.headers or []]
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, envelope, item)
        assert encode_record(record, 0, fmt) == buf.getvalue()


def test_header_bytes_exactly() -> None:
    assert encode_headers(None) == encode_headers([]) == b"\x00"
    assert encode_headers([("a", None)]) == b"\x02" + b"\x02a" + b"\x00" + b"\x00"
    assert encode_headers([("a", b""), ("a", b"\xff")]) == (
        b"\x04" + b"\x02a\x02\x00" + b"\x02a\x02\x02\xff" + b"\x00"
    )
    assert encode_headers([("é", b"v")]) == b"\x02" + b"\x04\xc3\xa9" + b"\x02\x02v" + b"\x00"
    # a record without headers costs one byte over format 2
    record = RawRecord(3, 1, b"k", b"\x02a")
    assert encode_record(record, 0) == b"\x06\x02\x02\x02k" + b"\x00" + b"\x00\x02a"
    assert encode_record(record, 0, LEGACY_FORMAT) == b"\x06\x02\x02\x02k" + b"\x00\x02a"


@given(headers=HEADERS, split=st.integers(0, 6), sized=st.booleans())
def test_any_block_layout_avro_allows_reads_back(
    headers: RecordHeaders | None, split: int, sized: bool
) -> None:
    """Our writer makes one block; a reader must take any (Avro allows several, and a
    negative count followed by the block's size in bytes)."""
    items = list(headers or [])
    blocks = [items[:split], items[split:]] if items else []
    data = b""
    for block in blocks:
        if not block:
            continue
        body = encode_headers(block)[len(zigzag_varint(len(block))) : -1]
        if sized:
            data += zigzag_varint(-len(block)) + zigzag_varint(len(body)) + body
        else:
            data += zigzag_varint(len(block)) + body
    data += b"\x00" + b"rest"
    got, pos = _read_headers(data, 0)
    assert got == tuple(items) and data[pos:] == b"rest"


@settings(max_examples=100)
@given(records=st.builds(_records, RECORDS))
def test_format_2_reads_back_without_headers(records: list[RawRecord]) -> None:
    data = _container(records, LEGACY_FORMAT)
    contents = read_container(data)
    assert contents.format == LEGACY_FORMAT and not contents.has_headers
    stored = stored_records(contents)
    assert all(r.headers is None for r in stored)
    assert [(r.offset, r.key, r.body) for r in stored] == [
        (r.offset, r.key, r.body) for r in records
    ]
    assert "headers" not in json.dumps(contents.writer_schema)
    assert object_metadata(data) == object_metadata(_container(records, FORMAT_VERSION))


@settings(max_examples=100)
@given(records=st.builds(_records, RECORDS), codec=st.sampled_from(["null", "deflate"]))
def test_a_format_2_object_of_the_same_records_is_the_same_chunk(
    records: list[RawRecord], codec: str
) -> None:
    old = _container(records, LEGACY_FORMAT, codec)
    new = _container(records, FORMAT_VERSION)
    assert same_chunk(old, new)
    # never the other way round, never within one format (the stores compare bytes there)
    assert not same_chunk(new, old)
    assert not same_chunk(new, new) and not same_chunk(old, old)


@settings(max_examples=100)
@given(records=st.builds(_records, RECORDS.filter(bool)), which=st.integers(0, 5), data=st.data())
def test_a_format_2_object_of_other_records_is_a_conflict(
    records: list[RawRecord], which: int, data: st.DataObject
) -> None:
    new = _container(records, FORMAT_VERSION)
    i = data.draw(st.integers(0, len(records) - 1))
    r = records[i]
    changed = [
        r._replace(timestamp_ms=r.timestamp_ms + 1),
        r._replace(key=(r.key or b"") + b"x"),
        r._replace(body=_body("other" + _text(r.body))),
        r._replace(offset=r.offset + 100),
    ]
    if which < len(changed):
        other = [*records[:i], changed[which], *records[i + 1 :]]
        assert not same_chunk(_container(other, LEGACY_FORMAT), new)
    elif which == len(changed):
        assert not same_chunk(_container(records[:i] + records[i + 1 :], LEGACY_FORMAT), new)
    else:
        meta = {**META, "skipped": "1"}
        old = encode_container(
            KEY, SCHEMAS, records, [7] * len(records), meta, format_version=LEGACY_FORMAT
        )
        assert not same_chunk(old, new)


def test_unknown_formats_are_refused_by_the_reader_and_the_writer() -> None:
    record = RawRecord(0, 0, None, _body("a"))
    with pytest.raises(ValueError, match="unsupported format"):
        encode_container(KEY, SCHEMAS, [record], [7], META, format_version="4")
    data = _container([record], FORMAT_VERSION).replace(b"\x023", b"\x029", 1)
    with pytest.raises(ValueError, match=r"unknown replicator\.format '9'"):
        read_container(data)
    assert not same_chunk(data, _container([record], FORMAT_VERSION))
    assert not same_chunk(b"not avro", _container([record], FORMAT_VERSION))


def test_format_versions() -> None:
    assert (LEGACY_FORMAT, FORMAT_VERSION) == ("2", "3")
    assert read_container(_container([], FORMAT_VERSION)).metadata["replicator.format"] == "3"
