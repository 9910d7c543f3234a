"""The container file: read back by fastavro (an Avro reader independent of our writer),
byte-for-byte deterministic, with its metadata in the header."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator.container import (
    BLOCK_TARGET_BYTES,
    FORMAT_VERSION,
    MAGIC,
    RawRecord,
    encode_container,
    encode_record,
    envelope_schema,
    sync_marker,
    zigzag_varint,
)

REPO = Path(__file__).resolve().parents[2]
PRESCRIPTION_SCHEMA = (REPO / "schemas" / "prescription-v1.avsc").read_text()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEY = "snds.prescriptions/00003/00000000000000000000-00000000000000000009.avro"
META = {"topic": "snds.prescriptions", "partition": "3", "first_offset": "0"}
CODECS = ["null", "deflate"]


@dataclass(frozen=True)
class Sample:
    """Records of a chunk and what an Avro reader must give back for each one."""

    records: list[RawRecord]
    expected: list[dict[str, Any]]


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def _value(rng: random.Random, i: int) -> dict[str, Any]:
    """A prescription event in the form fastavro reads it back (logical types applied)."""
    return {
        "event_id": uuid.UUID(int=rng.getrandbits(128)),
        "operation": rng.choice(["INSERT", "UPDATE", "DELETE"]),
        "event_time": EPOCH + timedelta(milliseconds=1_767_225_600_000 + i * 1_000),
        "beneficiary_id": _hex(rng, 64),
        "cip13": "34009" + str(rng.randrange(10**8)).zfill(8),
        "atc_code": rng.choice(["N02BE01", "C10AA05", "A10BA02"]),
        "quantity": rng.randint(1, 12),
        "dispensing_date": date(2026, 1, 1) + timedelta(days=i % 365),
        "prescriber_id": _hex(rng, 32),
        "pharmacy_id": _hex(rng, 32),
        "base_amount_cents": rng.randint(0, 10**7),
        "reimbursed_amount_cents": rng.randint(-(10**5), 10**7),
    }


@functools.cache
def _parsed(schema_json: str) -> Any:
    return fastavro.parse_schema(json.loads(schema_json))


def _body(schema_json: str, value: object) -> bytes:
    """The raw Avro body as it sits on the wire after the Confluent header."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, _parsed(schema_json), value)
    return buf.getvalue()


def _key_for(rng: random.Random, i: int) -> bytes | None:
    if i % 3 == 0:
        return None
    if i % 3 == 1:
        return b""
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40)))


def make_sample(count: int, seed: int = 7, first_offset: int = 1_000) -> Sample:
    rng = random.Random(seed)
    records: list[RawRecord] = []
    expected: list[dict[str, Any]] = []
    for i in range(count):
        value = _value(rng, i)
        # Kafka timestamps: -1 (none), epoch, and real ones, not ordered
        timestamp_ms = [-1, 0, 1_767_225_600_123 + rng.randint(-(10**6), 10**6)][min(i, 2)]
        record = RawRecord(
            offset=first_offset + i * 2,  # not contiguous: gaps are normal in a chunk
            timestamp_ms=timestamp_ms,
            key=_key_for(rng, i),
            body=_body(PRESCRIPTION_SCHEMA, value),
        )
        records.append(record)
        expected.append(
            {
                "offset": record.offset,
                "timestamp": EPOCH + timedelta(milliseconds=timestamp_ms),
                "key": record.key,
                "value": value,
            }
        )
    return Sample(records, expected)


def _count_for_blocks(blocks: float) -> int:
    per_record = len(encode_record(make_sample(1).records[0]))
    return int(blocks * BLOCK_TARGET_BYTES / per_record) + 1


SIZES = {"empty": 0, "one": 1, "several_blocks": _count_for_blocks(2.5)}


@pytest.fixture(scope="module")
def samples() -> dict[str, Sample]:
    return {name: make_sample(n) for name, n in SIZES.items()}


def _reader(data: bytes) -> Any:
    """fastavro's container reader (typed loosely: records are plain dicts)."""
    return fastavro.reader(io.BytesIO(data))


def _read(data: bytes) -> tuple[Any, list[Any]]:
    reader = _reader(data)
    return reader, list(reader)


# -- read back by an independent reader ----------------------------------------------------
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("size", list(SIZES))
def test_fastavro_reads_back_every_envelope_field(
    samples: dict[str, Sample], size: str, codec: str
) -> None:
    sample = samples[size]
    data = encode_container(KEY, PRESCRIPTION_SCHEMA, sample.records, META, codec=codec)
    reader, records = _read(data)
    assert reader.codec == codec
    assert len(records) == len(sample.records)
    for got, want in zip(records, sample.expected, strict=True):
        assert got == want
    # the event is decoded with the writer schema of the chunk
    value_schema = reader.writer_schema["fields"][3]["type"]
    assert value_schema["name"] == "fr.hdh.snds.Prescription"


def test_several_blocks_are_cut_by_content(samples: dict[str, Sample]) -> None:
    """Blocks close once their raw bytes reach BLOCK_TARGET_BYTES: the split depends on the
    records only (deterministic), and a large chunk spans several blocks."""
    records = samples["several_blocks"].records
    expected_counts: list[int] = []
    size = count = 0
    for record in records:
        size += len(encode_record(record))
        count += 1
        if size >= BLOCK_TARGET_BYTES:
            expected_counts.append(count)
            size = count = 0
    if count:
        expected_counts.append(count)
    assert len(expected_counts) >= 3
    for codec in CODECS:
        data = encode_container(KEY, PRESCRIPTION_SCHEMA, records, META, codec=codec)
        blocks = list(fastavro.block_reader(io.BytesIO(data)))
        assert [b.num_records for b in blocks] == expected_counts


def test_block_closes_when_its_raw_bytes_reach_the_target_exactly() -> None:
    schema = '{"type":"bytes"}'
    first = RawRecord(0, 0, None, _body(schema, b"a" * 1_000))
    room = BLOCK_TARGET_BYTES - len(encode_record(first)) - 3  # 3: offset, time, key=null
    n = next(n for n in range(room - 10, room) if len(zigzag_varint(n)) + n == room)
    second = RawRecord(1, 0, None, _body(schema, b"b" * n))
    third = RawRecord(2, 0, None, _body(schema, b"c"))
    assert len(encode_record(first)) + len(encode_record(second)) == BLOCK_TARGET_BYTES
    data = encode_container(KEY, schema, [first, second, third], {}, codec="null")
    blocks = list(fastavro.block_reader(io.BytesIO(data)))
    assert [b.num_records for b in blocks] == [2, 1]
    assert [r["value"] for r in _reader(data)] == [
        b"a" * 1_000,
        b"b" * n,
        b"c",
    ]


def test_empty_chunk_without_schema_is_a_valid_file() -> None:
    """A chunk whose offsets were all dead-lettered: no schema, no record, still a file."""
    data = encode_container(KEY, None, [], {"records": "0", "skipped": "10"}, codec="null")
    reader, records = _read(data)
    assert records == []
    assert reader.writer_schema["fields"][3] == {"name": "value", "type": "null"}
    assert reader.metadata["replicator.skipped"] == "10"


def test_key_field_none_empty_and_binary() -> None:
    schema = '{"type":"string"}'
    records = [
        RawRecord(0, 5, None, _body(schema, "a")),
        RawRecord(1, 5, b"", _body(schema, "b")),
        RawRecord(2, 5, bytes(range(256)), _body(schema, "c")),
    ]
    _, got = _read(encode_container(KEY, schema, records, {}, codec="null"))
    assert [(r["offset"], r["key"], r["value"]) for r in got] == [
        (0, None, "a"),
        (1, b"", "b"),
        (2, bytes(range(256)), "c"),
    ]


def test_encode_record_matches_fastavro_encoding_of_the_envelope() -> None:
    """The envelope is built from the raw body without re-encoding: the result is the Avro
    encoding of the whole envelope record, as fastavro itself writes it."""
    schema = fastavro.parse_schema(json.loads(envelope_schema(PRESCRIPTION_SCHEMA)))
    sample = make_sample(30)
    for record, want in zip(sample.records, sample.expected, strict=True):
        buf = io.BytesIO()
        fastavro.schemaless_writer(
            buf, schema, {**want, "timestamp": record.timestamp_ms, "key": record.key}
        )
        assert encode_record(record) == buf.getvalue()


# -- exact bytes, determinism --------------------------------------------------------------
def _independent_container(
    key: str,
    value_schema_json: str,
    records: Sequence[RawRecord],
    metadata: dict[str, str],
    codec: str,
    level: int,
) -> bytes:
    """The Avro 1.11 object container layout, spelled out with fastavro's encoders."""
    envelope: Any = fastavro.parse_schema(json.loads(envelope_schema(value_schema_json)))
    meta = {
        "avro.schema": envelope_schema(value_schema_json).encode(),
        "avro.codec": codec.encode(),
        "replicator.format": FORMAT_VERSION.encode(),
        **{f"replicator.{k}": v.encode() for k, v in metadata.items()},
    }
    header = io.BytesIO()
    fastavro.schemaless_writer(
        header, {"type": "map", "values": "bytes"}, dict(sorted(meta.items()))
    )
    sync = hashlib.md5(key.encode()).digest()

    def blocks() -> Iterator[list[bytes]]:
        block: list[bytes] = []
        for record in records:
            buf = io.BytesIO()
            body = fastavro.schemaless_reader(
                io.BytesIO(record.body), envelope["fields"][3]["type"], None
            )
            fastavro.schemaless_writer(
                buf,
                envelope,
                {
                    "offset": record.offset,
                    "timestamp": record.timestamp_ms,
                    "key": record.key,
                    "value": body,
                },
            )
            block.append(buf.getvalue())
            if sum(map(len, block)) >= BLOCK_TARGET_BYTES:
                yield block
                block = []
        if block:
            yield block

    def long(n: int) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, {"type": "long"}, n)
        return buf.getvalue()

    out = MAGIC + header.getvalue() + sync
    for block in blocks():
        raw = b"".join(block)
        data = raw if codec == "null" else zlib.compress(raw, level, wbits=-15)
        out += long(len(block)) + long(len(data)) + data + sync
    return out


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("count", [0, 1, 25])
def test_exact_bytes_match_the_container_layout(codec: str, count: int) -> None:
    sample = make_sample(count)
    got = encode_container(KEY, PRESCRIPTION_SCHEMA, sample.records, META, codec=codec, level=6)
    assert got == _independent_container(KEY, PRESCRIPTION_SCHEMA, sample.records, META, codec, 6)


def test_exact_bytes_match_the_container_layout_over_several_blocks(
    samples: dict[str, Sample],
) -> None:
    records = samples["several_blocks"].records
    got = encode_container(KEY, PRESCRIPTION_SCHEMA, records, META, codec="null")
    assert got == _independent_container(KEY, PRESCRIPTION_SCHEMA, records, META, "null", 6)


# A fixed chunk encoded with the null codec (no compression library involved): if this
# changes, a replay after an upgrade would meet its own earlier objects with other bytes
# (a conflict), so a change here must be a deliberate format change.
GOLDEN_NULL_MD5 = "dd464af93fd95656f9d397866cc8bc81"


def test_null_codec_bytes_are_pinned() -> None:
    sample = make_sample(5, seed=11)
    data = encode_container(KEY, PRESCRIPTION_SCHEMA, sample.records, META, codec="null")
    assert hashlib.md5(data).hexdigest() == GOLDEN_NULL_MD5


@pytest.mark.parametrize("codec", CODECS)
def test_same_inputs_same_bytes_in_process(samples: dict[str, Sample], codec: str) -> None:
    records = samples["several_blocks"].records
    first = encode_container(KEY, PRESCRIPTION_SCHEMA, records, META, codec=codec)
    again = encode_container(KEY, PRESCRIPTION_SCHEMA, list(records), dict(META), codec=codec)
    assert first == again


_DIGESTS_SCRIPT = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
from tests.unit.test_container import KEY, META, PRESCRIPTION_SCHEMA, make_sample
from replicator.container import encode_container
records = make_sample(200).records
print(json.dumps({
    codec: hashlib.md5(
        encode_container(KEY, PRESCRIPTION_SCHEMA, records, META, codec=codec)
    ).hexdigest()
    for codec in ("null", "deflate")
}))
"""


def test_same_inputs_same_bytes_run_after_run() -> None:
    """Another interpreter (another hash seed) gives byte-identical output."""
    records = make_sample(200).records
    here = {
        codec: hashlib.md5(
            encode_container(KEY, PRESCRIPTION_SCHEMA, records, META, codec=codec)
        ).hexdigest()
        for codec in CODECS
    }
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    run = subprocess.run(
        [sys.executable, "-c", _DIGESTS_SCRIPT, str(REPO)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert json.loads(run.stdout) == here


def test_metadata_order_does_not_change_bytes() -> None:
    sample = make_sample(3)
    forward = encode_container(KEY, PRESCRIPTION_SCHEMA, sample.records, META)
    backward = encode_container(
        KEY, PRESCRIPTION_SCHEMA, sample.records, dict(reversed(list(META.items())))
    )
    assert forward == backward


@pytest.mark.parametrize("codec", CODECS)
def test_different_key_gives_a_different_sync_marker(codec: str) -> None:
    sample = make_sample(3)
    other_key = KEY.replace("-00000000000000000009", "-00000000000000000010")
    a = encode_container(KEY, PRESCRIPTION_SCHEMA, sample.records, META, codec=codec)
    b = encode_container(other_key, PRESCRIPTION_SCHEMA, sample.records, META, codec=codec)
    sync_a = _reader(a)._header["sync"]
    sync_b = _reader(b)._header["sync"]
    assert sync_a == sync_marker(KEY) == hashlib.md5(KEY.encode()).digest()
    assert sync_b == sync_marker(other_key)
    assert sync_a != sync_b
    # the marker is the only difference
    assert a.replace(sync_a, sync_b) == b
    assert len(sync_a) == 16


def test_sync_marker_is_stable_for_a_key() -> None:
    assert sync_marker(KEY) == sync_marker(str(KEY))
    assert sync_marker(KEY).hex() == hashlib.md5(KEY.encode()).hexdigest()


# -- header metadata -----------------------------------------------------------------------
@pytest.mark.parametrize("codec", CODECS)
def test_header_metadata_readable(codec: str) -> None:
    sample = make_sample(2)
    meta = {
        "topic": "snds.prescriptions",
        "partition": "3",
        "first_offset": "1000",
        "last_offset": "1002",
        "records": "2",
        "skipped": "1",
        "schema_id": "42",
    }
    data = encode_container(KEY, PRESCRIPTION_SCHEMA, sample.records, meta, codec=codec)
    reader = _reader(data)
    assert reader.metadata == {
        "avro.codec": codec,
        "avro.schema": envelope_schema(PRESCRIPTION_SCHEMA),
        "replicator.format": FORMAT_VERSION,
        **{f"replicator.{k}": v for k, v in meta.items()},
    }


def test_envelope_schema_text_is_canonical_and_complete() -> None:
    text = envelope_schema(PRESCRIPTION_SCHEMA)
    parsed = json.loads(text)
    assert text == json.dumps(parsed, separators=(",", ":"), sort_keys=True)
    assert parsed == {
        "type": "record",
        "name": "ReplicatedRecord",
        "namespace": "fr.hdh.replicator",
        "fields": [
            {"name": "offset", "type": "long"},
            {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "key", "type": ["null", "bytes"]},
            {"name": "value", "type": json.loads(PRESCRIPTION_SCHEMA)},
        ],
    }
    # the same schema written with other spacing or key order gives the same header text
    reordered = json.dumps(dict(reversed(list(json.loads(PRESCRIPTION_SCHEMA).items()))), indent=4)
    assert envelope_schema(reordered) == text


# -- errors --------------------------------------------------------------------------------
def test_unsupported_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported codec 'snappy'"):
        encode_container(KEY, PRESCRIPTION_SCHEMA, [], {}, codec="snappy")


def test_records_without_a_schema_are_refused() -> None:
    record = RawRecord(0, 0, None, b"\x02a")
    with pytest.raises(ValueError, match="records need a value schema"):
        encode_container(KEY, None, [record], {})


# -- zigzag varint -------------------------------------------------------------------------
def _fastavro_long(value: int) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, {"type": "long"}, value)
    return buf.getvalue()


def _edge_longs() -> list[int]:
    values = set(range(-1_000, 1_001))
    for bit in range(64):
        for v in (2**bit - 1, 2**bit, 2**bit + 1):
            values.update({v, -v})
    values.update({2**62, -(2**62), 2**63 - 1, -(2**63)})
    return sorted(v for v in values if -(2**63) <= v <= 2**63 - 1)


def test_zigzag_varint_matches_fastavro_long_on_edges() -> None:
    values = _edge_longs()
    assert 2**62 in values
    assert -(2**63) in values
    for value in values:
        assert zigzag_varint(value) == _fastavro_long(value), value


def test_zigzag_varint_exact_bytes() -> None:
    assert zigzag_varint(0) == b"\x00"
    assert zigzag_varint(-1) == b"\x01"
    assert zigzag_varint(1) == b"\x02"
    assert zigzag_varint(-64) == b"\x7f"
    assert zigzag_varint(64) == b"\x80\x01"
    assert zigzag_varint(2**63 - 1) == b"\xfe" + b"\xff" * 8 + b"\x01"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_zigzag_varint_matches_fastavro_long(value: int) -> None:
    assert zigzag_varint(value) == _fastavro_long(value)
