"""The container file: read back by fastavro (an Avro reader independent of our writer),
byte-for-byte deterministic, with its metadata in the header. A chunk may mix records of
several writer schemas: the envelope's value is a union of them, ordered by schema id, each
branch's named types moved to the namespace `<ns>.s<id>`.

This module pins format 2 (the envelope without headers, byte for byte as the previous
version wrote it): the encoder still writes it on request, which is how the tests make the
objects an earlier version left in the stores. Format 3 (with the record headers) is pinned
in test_container_headers.py."""

from __future__ import annotations

import copy
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import SchemaParseException
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator import container
from replicator.container import (
    BLOCK_TARGET_BYTES,
    LEGACY_FORMAT,
    MAGIC,
    namespaced,
    sync_marker,
    zigzag_varint,
)
from replicator.model import RawRecord

FORMAT_VERSION = LEGACY_FORMAT


def encode_container(*args: Any, **kw: Any) -> bytes:
    """The container encoder, writing format 2."""
    kw.setdefault("format_version", LEGACY_FORMAT)
    return container.encode_container(*args, **kw)


def encode_record(record: RawRecord, branch: int) -> bytes:
    return container.encode_record(record, branch, LEGACY_FORMAT)


def envelope_schema(value_schemas: Mapping[int, str]) -> str:
    return container.envelope_schema(value_schemas, LEGACY_FORMAT)


REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
REGISTRY: dict[str, dict[str, Any]] = json.loads((SCHEMAS / "registry.json").read_text())


def _registered(file: str) -> tuple[int, str]:
    """(schema id, schema JSON) of a schema file of the project's registry."""
    (sid,) = [int(k) for k, v in REGISTRY.items() if v["file"] == file]
    return sid, (SCHEMAS / file).read_text()


PRESCRIPTION_ID, PRESCRIPTION_SCHEMA = _registered("prescription-v1.avsc")
REIMBURSEMENT_V1_ID, REIMBURSEMENT_V1 = _registered("reimbursement-v1.avsc")
REIMBURSEMENT_V2_ID, REIMBURSEMENT_V2 = _registered("reimbursement-v2.avsc")
PRESCRIPTIONS = {PRESCRIPTION_ID: PRESCRIPTION_SCHEMA}
REIMBURSEMENTS = {REIMBURSEMENT_V1_ID: REIMBURSEMENT_V1, REIMBURSEMENT_V2_ID: REIMBURSEMENT_V2}
V1_FIELDS = [f["name"] for f in json.loads(REIMBURSEMENT_V1)["fields"]]
V2_FIELDS = [f["name"] for f in json.loads(REIMBURSEMENT_V2)["fields"]]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEY = "snds.prescriptions/00003/00000000000000000000-00000000000000000009.avro"
META = {"topic": "snds.prescriptions", "partition": "3", "first_offset": "0"}
CODECS = ["null", "deflate"]


@dataclass(frozen=True)
class Sample:
    """Records of a chunk, their writer schema ids, and what an Avro reader must give back
    for each one."""

    schemas: dict[int, str]
    records: list[RawRecord]
    schema_ids: list[int]
    expected: list[dict[str, Any]]

    def encode(self, key: str = KEY, meta: Mapping[str, str] = META, **kw: Any) -> bytes:
        return encode_container(key, self.schemas, self.records, self.schema_ids, meta, **kw)


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def _prescription(rng: random.Random, i: int) -> dict[str, Any]:
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


def _reimbursement(rng: random.Random, i: int, version: int) -> dict[str, Any]:
    """A reimbursement event of schema version 1 or 2, as fastavro reads it back."""
    value: dict[str, Any] = {
        "event_id": uuid.UUID(int=rng.getrandbits(128)),
        "operation": rng.choice(["INSERT", "UPDATE", "DELETE"]),
        "event_time": EPOCH + timedelta(milliseconds=1_767_225_600_000 + i * 1_000),
        "beneficiary_id": _hex(rng, 64),
        "birth_year": rng.randint(1920, 2025),
        "sex": rng.choice([1, 2]),
        "residence_department": rng.choice(["01", "2A", "75", "974"]),
        "care_start_date": date(2026, 1, 1) + timedelta(days=i % 365),
        "settlement_date": date(2026, 1, 9) + timedelta(days=i % 365),
        "prestation_nature": rng.randint(1000, 9999),
        "act_code": rng.choice([None, "DEQP003"]),
        "base_amount_cents": rng.randint(0, 10**7),
        "paid_amount_cents": rng.randint(0, 10**7),
        "reimbursed_amount_cents": rng.randint(0, 10**7),
        "prescriber_id": rng.choice([None, _hex(rng, 32)]),
        "executor_id": _hex(rng, 32),
        "is_correction": rng.random() < 0.1,
    }
    if version == 2:
        value["care_setting"] = rng.choice([None, "home", "teleconsultation"])
    return value


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


def _timestamp(rng: random.Random, i: int) -> int:
    # Kafka timestamps: -1 (none), epoch, and real ones, not ordered
    return [-1, 0, 1_767_225_600_123 + rng.randint(-(10**6), 10**6)][min(i, 2)]


def _expected(record: RawRecord, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "offset": record.offset,
        "timestamp": EPOCH + timedelta(milliseconds=record.timestamp_ms),
        "key": record.key,
        "value": value,
    }


def make_sample(count: int, seed: int = 7, first_offset: int = 1_000) -> Sample:
    """Prescriptions, all of one writer schema."""
    rng = random.Random(seed)
    records: list[RawRecord] = []
    expected: list[dict[str, Any]] = []
    for i in range(count):
        value = _prescription(rng, i)
        record = RawRecord(
            offset=first_offset + i * 2,  # not contiguous: gaps are normal in a chunk
            timestamp_ms=_timestamp(rng, i),
            key=_key_for(rng, i),
            body=_body(PRESCRIPTION_SCHEMA, value),
        )
        records.append(record)
        expected.append(_expected(record, value))
    return Sample(dict(PRESCRIPTIONS), records, [PRESCRIPTION_ID] * count, expected)


def make_mixed_sample(count: int, seed: int = 5, first_offset: int = 500) -> Sample:
    """Reimbursements during a rolling deploy: v1 only, then v1 and v2 interleaved, then v2
    only (when count allows)."""
    rng = random.Random(seed)
    records: list[RawRecord] = []
    ids: list[int] = []
    expected: list[dict[str, Any]] = []
    for i in range(count):
        if 3 * i < count:
            version = 1
        elif 3 * i < 2 * count:
            version = rng.choice([1, 2])
        else:
            version = 2
        sid, schema = (
            (REIMBURSEMENT_V1_ID, REIMBURSEMENT_V1)
            if version == 1
            else (REIMBURSEMENT_V2_ID, REIMBURSEMENT_V2)
        )
        value = _reimbursement(rng, i, version)
        record = RawRecord(
            offset=first_offset + i + i // 4,
            timestamp_ms=_timestamp(rng, i),
            key=_key_for(rng, i),
            body=_body(schema, value),
        )
        records.append(record)
        ids.append(sid)
        expected.append(_expected(record, value))
    return Sample(dict(REIMBURSEMENTS), records, ids, expected)


def _count_for_blocks(blocks: float, per_record: int) -> int:
    return int(blocks * BLOCK_TARGET_BYTES / per_record) + 1


SIZES = {
    "empty": 0,
    "one": 1,
    "several_blocks": _count_for_blocks(2.5, len(encode_record(make_sample(1).records[0], 0))),
}
MIXED_SIZES = {
    "two": 2,  # one of each version
    "mixed": 60,
    "several_blocks": _count_for_blocks(
        2.5, len(encode_record(make_mixed_sample(1).records[0], 0))
    ),
}


@pytest.fixture(scope="module")
def samples() -> dict[str, Sample]:
    return {name: make_sample(n) for name, n in SIZES.items()}


@pytest.fixture(scope="module")
def mixed_samples() -> dict[str, Sample]:
    out = {name: make_mixed_sample(n) for name, n in MIXED_SIZES.items() if name != "two"}
    v1 = make_mixed_sample(1)
    assert v1.schema_ids == [REIMBURSEMENT_V1_ID]
    v2_value = _reimbursement(random.Random(0), 1, 2)
    v2_record = RawRecord(501, 7, b"k", _body(REIMBURSEMENT_V2, v2_value))
    out["two"] = Sample(
        dict(REIMBURSEMENTS),
        [v1.records[0], v2_record],
        [REIMBURSEMENT_V1_ID, REIMBURSEMENT_V2_ID],
        [v1.expected[0], _expected(v2_record, v2_value)],
    )
    return out


def _reader(data: bytes) -> Any:
    """fastavro's container reader (typed loosely: records are plain dicts)."""
    return fastavro.reader(io.BytesIO(data))


def _read(data: bytes) -> tuple[Any, list[Any]]:
    reader = _reader(data)
    return reader, list(reader)


# -- the envelope schema, spelled out independently -----------------------------------------
def _expected_branch(schema_json: str, sid: int) -> dict[str, Any]:
    """A flat record schema (named types only at the top and as field types, as the
    project's schemas are) with its named types moved to `<ns>.s<sid>`."""
    schema = json.loads(schema_json)
    assert schema["type"] == "record"
    assert "." not in schema["name"]
    assert "aliases" not in schema
    ns = f"{schema['namespace']}.s{sid}"
    fields = []
    for field in schema["fields"]:
        t = field["type"]
        if isinstance(t, dict) and t["type"] in ("enum", "fixed"):
            assert "namespace" not in t
            assert "." not in t["name"]
            t = {**t, "namespace": ns}
        else:
            assert not (isinstance(t, dict) and t["type"] == "record")
        fields.append({**field, "type": t})
    return {**schema, "namespace": ns, "fields": fields}


def _expected_envelope(value_schemas: Mapping[int, str]) -> dict[str, Any]:
    value: Any = (
        [_expected_branch(value_schemas[sid], sid) for sid in sorted(value_schemas)]
        if value_schemas
        else "null"
    )
    return {
        "type": "record",
        "name": "ReplicatedRecord",
        "namespace": "fr.hdh.replicator",
        "fields": [
            {"name": "offset", "type": "long"},
            {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "key", "type": ["null", "bytes"]},
            {"name": "value", "type": value},
        ],
    }


def _branch_name(schema_json: str, sid: int) -> str:
    schema = json.loads(schema_json)
    return f"{schema['namespace']}.s{sid}.{schema['name']}"


def _envelope_bytes(
    envelope: Any, record: RawRecord, value_schemas: Mapping[int, str], sid: int
) -> bytes:
    """fastavro's own encoding of one envelope record: the body decoded with its writer
    schema, then written into the branch picked by name (fastavro's tuple notation)."""
    value = fastavro.schemaless_reader(io.BytesIO(record.body), _parsed(value_schemas[sid]), None)
    buf = io.BytesIO()
    fastavro.schemaless_writer(
        buf,
        envelope,
        {
            "offset": record.offset,
            "timestamp": record.timestamp_ms,
            "key": record.key,
            "value": (_branch_name(value_schemas[sid], sid), value),
        },
    )
    return buf.getvalue()


# -- read back by an independent reader ----------------------------------------------------
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("size", list(SIZES))
def test_fastavro_reads_back_every_envelope_field(
    samples: dict[str, Sample], size: str, codec: str
) -> None:
    sample = samples[size]
    data = sample.encode(codec=codec)
    reader, records = _read(data)
    assert reader.codec == codec
    assert len(records) == len(sample.records)
    for got, want in zip(records, sample.expected, strict=True):
        assert got == want
    # the event is decoded with the writer schema of the chunk, the only union branch
    (value_schema,) = reader.writer_schema["fields"][3]["type"]
    assert value_schema["name"] == f"fr.hdh.snds.s{PRESCRIPTION_ID}.Prescription"
    assert reader.metadata["replicator.schema_ids"] == str(PRESCRIPTION_ID)


def test_the_project_registry_gives_reimbursement_v1_and_v2_ids_1_and_3() -> None:
    assert (REIMBURSEMENT_V1_ID, REIMBURSEMENT_V2_ID) == (1, 3)
    assert [*V1_FIELDS, "care_setting"] == V2_FIELDS


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("size", list(MIXED_SIZES))
def test_fastavro_reads_back_a_chunk_mixing_reimbursement_v1_and_v2(
    mixed_samples: dict[str, Sample], size: str, codec: str
) -> None:
    """Each record comes back decoded with its own writer schema: a v1 record has exactly
    the v1 fields (no care_setting), a v2 record the v2 fields."""
    sample = mixed_samples[size]
    assert set(sample.schema_ids) == {1, 3}
    reader, records = _read(sample.encode(codec=codec))
    assert reader.codec == codec
    assert len(records) == len(sample.records)
    for got, want, sid in zip(records, sample.expected, sample.schema_ids, strict=True):
        assert got == want
        assert list(got["value"]) == (V1_FIELDS if sid == 1 else V2_FIELDS)
    branches = reader.writer_schema["fields"][3]["type"]
    assert [b["name"] for b in branches] == [
        "fr.hdh.snds.s1.Reimbursement",
        "fr.hdh.snds.s3.Reimbursement",
    ]
    assert reader.metadata["replicator.schema_ids"] == "1,3"


def test_mixed_records_keep_their_branch_in_the_bytes(mixed_samples: dict[str, Sample]) -> None:
    """Branch 0 is schema 1 and branch 1 schema 3, whatever order the records come in."""
    sample = mixed_samples["mixed"]
    raw = b"".join(
        encode_record(r, {1: 0, 3: 1}[sid])
        for r, sid in zip(sample.records, sample.schema_ids, strict=True)
    )
    assert len(raw) < BLOCK_TARGET_BYTES  # one block, stored as is by the null codec
    block = zigzag_varint(len(sample.records)) + zigzag_varint(len(raw)) + raw + sync_marker(KEY)
    assert sample.encode(codec="null").endswith(block)


def test_several_blocks_are_cut_by_content(
    samples: dict[str, Sample], mixed_samples: dict[str, Sample]
) -> None:
    """Blocks close once their raw bytes reach BLOCK_TARGET_BYTES: the split depends on the
    records only (deterministic), and a large chunk spans several blocks."""
    for sample in (samples["several_blocks"], mixed_samples["several_blocks"]):
        branches = {sid: i for i, sid in enumerate(sorted(sample.schemas))}
        expected_counts: list[int] = []
        size = count = 0
        for record, sid in zip(sample.records, sample.schema_ids, strict=True):
            size += len(encode_record(record, branches[sid]))
            count += 1
            if size >= BLOCK_TARGET_BYTES:
                expected_counts.append(count)
                size = count = 0
        if count:
            expected_counts.append(count)
        assert len(expected_counts) >= 3
        for codec in CODECS:
            data = sample.encode(codec=codec)
            blocks = list(fastavro.block_reader(io.BytesIO(data)))
            assert [b.num_records for b in blocks] == expected_counts


def test_block_closes_when_its_raw_bytes_reach_the_target_exactly() -> None:
    schema = '{"type":"bytes"}'
    first = RawRecord(0, 0, None, _body(schema, b"a" * 1_000))
    room = BLOCK_TARGET_BYTES - len(encode_record(first, 0)) - 4  # offset, time, key, branch
    n = next(n for n in range(room - 10, room) if len(zigzag_varint(n)) + n == room)
    second = RawRecord(1, 0, None, _body(schema, b"b" * n))
    third = RawRecord(2, 0, None, _body(schema, b"c"))
    assert len(encode_record(first, 0)) + len(encode_record(second, 0)) == BLOCK_TARGET_BYTES
    data = encode_container(KEY, {5: schema}, [first, second, third], [5, 5, 5], {}, codec="null")
    blocks = list(fastavro.block_reader(io.BytesIO(data)))
    assert [b.num_records for b in blocks] == [2, 1]
    assert [r["value"] for r in _reader(data)] == [
        b"a" * 1_000,
        b"b" * n,
        b"c",
    ]


def test_empty_chunk_without_schema_is_a_valid_file() -> None:
    """A chunk whose offsets were all dead-lettered: no schema, no record, still a file."""
    data = encode_container(KEY, {}, [], [], {"records": "0", "skipped": "10"}, codec="null")
    reader, records = _read(data)
    assert records == []
    assert reader.writer_schema["fields"][3] == {"name": "value", "type": "null"}
    assert reader.metadata["replicator.skipped"] == "10"
    assert reader.metadata["replicator.schema_ids"] == ""


def test_key_field_none_empty_and_binary() -> None:
    schema = '{"type":"string"}'
    records = [
        RawRecord(0, 5, None, _body(schema, "a")),
        RawRecord(1, 5, b"", _body(schema, "b")),
        RawRecord(2, 5, bytes(range(256)), _body(schema, "c")),
    ]
    _, got = _read(encode_container(KEY, {1: schema}, records, [1, 1, 1], {}, codec="null"))
    assert [(r["offset"], r["key"], r["value"]) for r in got] == [
        (0, None, "a"),
        (1, b"", "b"),
        (2, bytes(range(256)), "c"),
    ]


def test_encode_record_matches_fastavro_encoding_of_the_envelope(
    mixed_samples: dict[str, Sample],
) -> None:
    """The envelope is built from the raw body without re-encoding: the result is the Avro
    encoding of the whole envelope record, as fastavro itself writes it."""
    for sample in (make_sample(30), mixed_samples["mixed"]):
        envelope = fastavro.parse_schema(_expected_envelope(sample.schemas))
        branches = {sid: i for i, sid in enumerate(sorted(sample.schemas))}
        for record, sid in zip(sample.records, sample.schema_ids, strict=True):
            assert encode_record(record, branches[sid]) == _envelope_bytes(
                envelope, record, sample.schemas, sid
            )


def test_encode_record_exact_bytes() -> None:
    record = RawRecord(offset=3, timestamp_ms=-1, key=b"k", body=b"\x02a")
    # offset 3, timestamp -1, key branch 1 + bytes "k", value branch, body
    assert encode_record(record, 0) == b"\x06" + b"\x01" + b"\x02\x02k" + b"\x00" + b"\x02a"
    assert encode_record(record, 1) == b"\x06\x01\x02\x02k\x02\x02a"
    assert encode_record(record, 64) == b"\x06\x01\x02\x02k\x80\x01\x02a"
    no_key = RawRecord(offset=0, timestamp_ms=0, key=None, body=b"")
    assert encode_record(no_key, 2) == b"\x00\x00\x00\x04"


def _numbered_schema(field_type: str) -> str:
    return json.dumps(
        {
            "type": "record",
            "name": "T",
            "namespace": "x",
            "fields": [{"name": "n", "type": field_type}],
        }
    )


def test_branch_follows_schema_id_order_not_arrival_order() -> None:
    schemas = {9: _numbered_schema("string"), 4: _numbered_schema("long")}
    records = [
        RawRecord(0, 0, None, _body(schemas[9], {"n": "nine"})),
        RawRecord(1, 0, None, _body(schemas[4], {"n": 4})),
        RawRecord(2, 0, None, _body(schemas[9], {"n": "again"})),
    ]
    data = encode_container(KEY, schemas, records, [9, 4, 9], {}, codec="null")
    reader, got = _read(data)
    assert [r["value"] for r in got] == [{"n": "nine"}, {"n": 4}, {"n": "again"}]
    assert [b["name"] for b in reader.writer_schema["fields"][3]["type"]] == ["x.s4.T", "x.s9.T"]
    assert reader.metadata["replicator.schema_ids"] == "4,9"
    assert data.count(encode_record(records[0], 1)) == 1
    assert data.count(encode_record(records[1], 0)) == 1
    assert data == _independent_container(KEY, schemas, records, [9, 4, 9], {}, "null", 6)


def test_many_versions_of_one_record_in_one_chunk() -> None:
    """70 versions of `x.T` (branch indexes past 63 take two bytes): each gets its own
    namespace, and every record reads back from its own branch."""
    ids = list(range(100, 170))
    schemas = {sid: _numbered_schema("long") for sid in ids}
    order = [*reversed(ids), 100, 169]
    records = [
        RawRecord(i, i, None, _body(schemas[sid], {"n": sid})) for i, sid in enumerate(order)
    ]
    data = encode_container(KEY, schemas, records, order, {})
    reader, got = _read(data)
    assert [r["value"]["n"] for r in got] == order
    names = [b["name"] for b in reader.writer_schema["fields"][3]["type"]]
    assert names == [f"x.s{sid}.T" for sid in ids]
    assert reader.metadata["replicator.schema_ids"] == ",".join(map(str, ids))
    assert len(encode_record(records[0], 69)) == len(encode_record(records[0], 63)) + 1
    assert data == _independent_container(KEY, schemas, records, order, {}, "deflate", 6)


# -- namespaced ----------------------------------------------------------------------------
# Every kind of named type: records, enums, fixed, nested, with and without an explicit
# namespace, names given as fullnames, references by simple and by full name later on
# (inside unions, arrays, maps), recursion, and aliases.
RICH_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Event",
    "namespace": "org.ex",
    "aliases": ["OldEvent"],
    "doc": "kept",
    "fields": [
        {
            "name": "kind",
            "aliases": ["k"],
            "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"], "aliases": ["K0"]},
        },
        {
            "name": "digest",
            "type": {
                "type": "fixed",
                "name": "org.other.Digest",
                "namespace": "ignored.because.fullname",
                "size": 4,
            },
        },
        {
            "name": "meta",
            "type": {
                "type": "record",
                "name": "Meta",
                "namespace": "org.meta",
                "fields": [
                    {
                        "name": "level",
                        "type": {"type": "enum", "name": "Level", "symbols": ["LO", "HI"]},
                    },
                    {"name": "again", "type": ["null", "Level"]},
                    {"name": "outer", "type": ["null", "org.ex.Kind"]},
                ],
            },
        },
        {"name": "kinds", "type": {"type": "array", "items": "Kind"}},
        {"name": "digests", "type": {"type": "map", "values": "org.other.Digest"}},
        {"name": "level", "type": "org.meta.Level"},
        {"name": "next", "type": ["null", "Event"], "default": None},
        {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
        {
            "name": "bare",
            "type": {
                "type": "record",
                "name": "Bare",
                "namespace": "",
                "fields": [
                    {"name": "x", "type": "int"},
                    {"name": "self", "type": ["null", "Bare"]},
                    {
                        "name": "pair",
                        "type": {
                            "type": "record",
                            "name": "Pair",
                            "fields": [
                                {"name": "p", "type": {"type": "fixed", "name": "Two", "size": 2}}
                            ],
                        },
                    },
                    {"name": "two", "type": "Two"},
                ],
            },
        },
    ],
}
RICH_NAMED = {
    "org.ex.Event",
    "org.ex.Kind",
    "org.other.Digest",
    "org.meta.Meta",
    "org.meta.Level",
    "Bare",
    "Pair",
    "Two",
}
_SIMPLE = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _moved(fullname: str, sid: int) -> str:
    ns, _, name = fullname.rpartition(".")
    return f"{ns}.s{sid}.{name}" if ns else f"s{sid}.{name}"


def _named_and_references(schema: Any) -> tuple[list[str], list[str], int]:
    """(fullnames defined, names referenced, aliases seen) in a schema whose named types all
    carry an explicit namespace (as `namespaced` writes them)."""
    defined: list[str] = []
    refs: list[str] = []
    aliases = 0

    def walk(node: Any) -> None:
        nonlocal aliases
        if isinstance(node, str):
            if node not in _SIMPLE:
                refs.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            aliases += "aliases" in node
            kind = node["type"]
            if kind in ("record", "enum", "fixed"):
                assert "." not in node["name"]
                ns = node["namespace"]
                defined.append(f"{ns}.{node['name']}" if ns else node["name"])
                for field in node.get("fields", []):
                    aliases += "aliases" in field
                    walk(field["type"])
            elif kind == "array":
                walk(node["items"])
            elif kind == "map":
                walk(node["values"])
            else:
                walk(kind)

    walk(schema)
    return defined, refs, aliases


def test_namespaced_moves_every_named_type_and_rewrites_references() -> None:
    original = copy.deepcopy(RICH_SCHEMA)
    out: Any = namespaced(RICH_SCHEMA, "s7")
    assert original == RICH_SCHEMA  # a copy: the input is untouched
    defined, refs, aliases = _named_and_references(out)
    assert sorted(defined) == sorted(_moved(n, 7) for n in RICH_NAMED)
    assert sorted(set(refs)) == sorted(
        _moved(n, 7)
        for n in (
            "org.meta.Level",
            "org.ex.Kind",
            "org.other.Digest",
            "org.ex.Event",
            "Bare",
            "Two",
        )
    )
    assert set(refs) <= set(defined)
    assert aliases == 0
    fastavro.parse_schema(out)


def test_namespaced_output_exactly() -> None:
    out: Any = namespaced(RICH_SCHEMA, "s7")
    fields = {f["name"]: f for f in out["fields"]}
    assert {k: v for k, v in out.items() if k != "fields"} == {
        "type": "record",
        "name": "Event",
        "namespace": "org.ex.s7",
        "doc": "kept",
    }
    assert fields["kind"] == {
        "name": "kind",
        "type": {"type": "enum", "name": "Kind", "namespace": "org.ex.s7", "symbols": ["A", "B"]},
    }
    assert fields["digest"]["type"] == {
        "type": "fixed",
        "name": "Digest",
        "namespace": "org.other.s7",
        "size": 4,
    }
    assert fields["meta"]["type"] == {
        "type": "record",
        "name": "Meta",
        "namespace": "org.meta.s7",
        "fields": [
            {
                "name": "level",
                "type": {
                    "type": "enum",
                    "name": "Level",
                    "namespace": "org.meta.s7",
                    "symbols": ["LO", "HI"],
                },
            },
            {"name": "again", "type": ["null", "org.meta.s7.Level"]},
            {"name": "outer", "type": ["null", "org.ex.s7.Kind"]},
        ],
    }
    assert fields["kinds"]["type"] == {"type": "array", "items": "org.ex.s7.Kind"}
    assert fields["digests"]["type"] == {"type": "map", "values": "org.other.s7.Digest"}
    assert fields["level"]["type"] == "org.meta.s7.Level"
    assert fields["next"] == {"name": "next", "type": ["null", "org.ex.s7.Event"], "default": None}
    assert fields["uid"]["type"] == {"type": "string", "logicalType": "uuid"}
    bare = fields["bare"]["type"]
    assert (bare["name"], bare["namespace"]) == ("Bare", "s7")
    assert bare["fields"][1]["type"] == ["null", "s7.Bare"]
    pair = bare["fields"][2]["type"]
    assert (pair["name"], pair["namespace"]) == ("Pair", "s7")  # inherits the null namespace
    assert pair["fields"][0]["type"] == {
        "type": "fixed",
        "name": "Two",
        "namespace": "s7",
        "size": 2,
    }
    assert bare["fields"][3] == {"name": "two", "type": "s7.Two"}


def test_namespaced_rewrites_a_reference_wrapped_in_an_object() -> None:
    """`{"type": "<name>"}` names a type too (Java's parser accepts it; fastavro does not)."""
    schema = {
        "type": "record",
        "name": "R",
        "namespace": "n",
        "fields": [
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X"]}},
            {"name": "f", "type": {"type": "E"}},
            {"name": "g", "type": {"type": "array", "items": {"type": "n.E"}}},
        ],
    }
    out: Any = namespaced(schema, "s4")
    assert [f["type"] for f in out["fields"][1:]] == [
        {"type": "n.s4.E"},
        {"type": "array", "items": {"type": "n.s4.E"}},
    ]


def test_namespaced_schema_without_any_namespace() -> None:
    schema = {
        "type": "record",
        "name": "Top",
        "fields": [
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X"]}},
            {"name": "again", "type": "E"},
        ],
    }
    assert namespaced(schema, "s2") == {
        "type": "record",
        "name": "Top",
        "namespace": "s2",
        "fields": [
            {
                "name": "e",
                "type": {"type": "enum", "name": "E", "namespace": "s2", "symbols": ["X"]},
            },
            {"name": "again", "type": "s2.E"},
        ],
    }


@pytest.mark.parametrize(
    "schema",
    [
        "string",
        {"type": "long", "logicalType": "timestamp-millis"},
        {"type": "array", "items": "int"},
        {"type": "map", "values": ["null", "double"]},
        ["null", "bytes"],
    ],
)
def test_namespaced_leaves_unnamed_schemas_alone(schema: Any) -> None:
    assert namespaced(schema, "s1") == schema


def _rich_value(rng: random.Random, version: int, depth: int = 1) -> dict[str, Any]:
    def meta() -> dict[str, Any]:
        return {"level": rng.choice(["LO", "HI"]), "again": None, "outer": rng.choice([None, "B"])}

    value: dict[str, Any] = {
        "kind": rng.choice(["A", "B"]),
        "digest": rng.randbytes(4),
        "meta": meta(),
        "kinds": [rng.choice(["A", "B"]) for _ in range(rng.randint(0, 3))],
        "digests": {str(i): rng.randbytes(4) for i in range(rng.randint(0, 2))},
        "level": "HI",
        "next": _rich_value(rng, version, depth - 1) if depth > 0 else None,
        "uid": uuid.UUID(int=rng.getrandbits(128)),
        "bare": {
            "x": rng.randint(-5, 5),
            "self": rng.choice([None, {"x": 1, "self": None, "pair": {"p": b"pp"}, "two": b"22"}]),
            "pair": {"p": rng.randbytes(2)},
            "two": rng.randbytes(2),
        },
    }
    if version == 2:
        value["note"] = rng.choice([None, "n"])
    return value


def _rich_v2() -> dict[str, Any]:
    """A second version of RICH_SCHEMA: one more field, the same named types."""
    v2 = copy.deepcopy(RICH_SCHEMA)
    v2["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    return v2


def test_two_versions_sharing_named_types_make_a_valid_envelope() -> None:
    """Without namespacing, the union would define each named type twice: Avro (and fastavro)
    refuse that. Namespaced, the envelope parses and every record reads back."""
    v1, v2 = json.dumps(RICH_SCHEMA), json.dumps(_rich_v2())
    raw_union = json.loads(envelope_schema({1: v1}))
    raw_union["fields"][3]["type"] = [RICH_SCHEMA, _rich_v2()]
    with pytest.raises(SchemaParseException, match="redefined named type"):
        fastavro.parse_schema(raw_union)
    fastavro.parse_schema(json.loads(envelope_schema({1: v1, 2: v2})))

    rng = random.Random(3)
    schemas = {1: v1, 2: v2}
    ids = [2, 1, 1, 2, 1, 2, 2]
    values = [_rich_value(rng, sid) for sid in ids]
    records = [
        RawRecord(i, i, None, _body(schemas[sid], value))
        for i, (sid, value) in enumerate(zip(ids, values, strict=True))
    ]
    reader, got = _read(encode_container(KEY, schemas, records, ids, {}))
    assert [r["value"] for r in got] == values
    assert [b["name"] for b in reader.writer_schema["fields"][3]["type"]] == [
        "org.ex.s1.Event",
        "org.ex.s2.Event",
    ]


def test_reimbursement_v1_and_v2_share_the_operation_enum() -> None:
    """The project's two versions both define fr.hdh.snds.Operation (and Reimbursement)."""
    raw = json.loads(envelope_schema({1: REIMBURSEMENT_V1}))
    raw["fields"][3]["type"] = [json.loads(REIMBURSEMENT_V1), json.loads(REIMBURSEMENT_V2)]
    with pytest.raises(SchemaParseException, match="redefined named type"):
        fastavro.parse_schema(raw)
    envelope = json.loads(envelope_schema(REIMBURSEMENTS))
    fastavro.parse_schema(envelope)
    ops = [
        (
            b["name"],
            b["namespace"],
            b["fields"][1]["type"]["name"],
            b["fields"][1]["type"]["namespace"],
        )
        for b in envelope["fields"][3]["type"]
    ]
    assert ops == [
        ("Reimbursement", "fr.hdh.snds.s1", "Operation", "fr.hdh.snds.s1"),
        ("Reimbursement", "fr.hdh.snds.s3", "Operation", "fr.hdh.snds.s3"),
    ]


# -- exact bytes, determinism --------------------------------------------------------------
def _independent_container(
    key: str,
    value_schemas: Mapping[int, str],
    records: Sequence[RawRecord],
    schema_ids: Sequence[int],
    metadata: dict[str, str],
    codec: str,
    level: int,
) -> bytes:
    """The Avro 1.11 object container layout, spelled out with fastavro's encoders, and the
    envelope schema spelled out by hand."""
    envelope_json = _expected_envelope(value_schemas)
    envelope: Any = fastavro.parse_schema(envelope_json)
    meta = {
        "avro.schema": json.dumps(envelope_json, separators=(",", ":"), sort_keys=True).encode(),
        "avro.codec": codec.encode(),
        "replicator.format": FORMAT_VERSION.encode(),
        "replicator.schema_ids": ",".join(str(i) for i in sorted(value_schemas)).encode(),
        **{f"replicator.{k}": v.encode() for k, v in metadata.items()},
    }
    header = io.BytesIO()
    fastavro.schemaless_writer(
        header, {"type": "map", "values": "bytes"}, dict(sorted(meta.items()))
    )
    sync = hashlib.md5(key.encode()).digest()

    def blocks() -> Iterator[list[bytes]]:
        block: list[bytes] = []
        for record, sid in zip(records, schema_ids, strict=True):
            block.append(_envelope_bytes(envelope, record, value_schemas, sid))
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


def _independent(sample: Sample, codec: str, level: int = 6) -> bytes:
    return _independent_container(
        KEY, sample.schemas, sample.records, sample.schema_ids, META, codec, level
    )


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("count", [0, 1, 25])
def test_exact_bytes_match_the_container_layout(codec: str, count: int) -> None:
    sample = make_sample(count)
    assert sample.encode(codec=codec, level=6) == _independent(sample, codec, 6)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("size", ["two", "mixed"])
def test_exact_bytes_match_the_container_layout_for_mixed_schemas(
    mixed_samples: dict[str, Sample], codec: str, size: str
) -> None:
    sample = mixed_samples[size]
    assert sample.encode(codec=codec, level=1) == _independent(sample, codec, 1)


def test_exact_bytes_of_an_empty_chunk() -> None:
    empty = Sample({}, [], [], [])
    assert empty.encode(codec="null") == _independent(empty, "null")


def test_exact_bytes_match_the_container_layout_over_several_blocks(
    samples: dict[str, Sample], mixed_samples: dict[str, Sample]
) -> None:
    for sample in (samples["several_blocks"], mixed_samples["several_blocks"]):
        assert sample.encode(codec="null") == _independent(sample, "null")


def test_a_schema_id_without_its_schema_is_refused() -> None:
    schema = '{"type":"bytes"}'
    body = _body(schema, b"x")
    record = RawRecord(0, 0, None, body)
    with pytest.raises(ValueError, match="no schema given for schema id 6"):
        encode_container(KEY, {5: schema}, [record, record], [5, 6], {}, codec="null")


# A fixed chunk encoded with the null codec (no compression library involved): if this
# changes, a replay after an upgrade would meet its own earlier objects with other bytes
# (a conflict), so a change here must be a deliberate format change (format "2": the value
# is a union of the writer schemas, and the header lists their ids).
GOLDEN_NULL_MD5 = "ccaa67753712f7f59836e26c51d7ab45"
GOLDEN_MIXED_NULL_MD5 = "f0a6287e3d9a52e2a2706a54662304c8"


def test_null_codec_bytes_are_pinned() -> None:
    assert FORMAT_VERSION == "2"
    one, mixed = make_sample(5, seed=11), make_mixed_sample(9, seed=11)
    assert set(mixed.schema_ids) == {1, 3}
    for sample, golden in ((one, GOLDEN_NULL_MD5), (mixed, GOLDEN_MIXED_NULL_MD5)):
        data = sample.encode(codec="null")
        assert data == _independent(sample, "null")  # the pinned bytes are the right ones
        assert hashlib.md5(data).hexdigest() == golden


@pytest.mark.parametrize("codec", CODECS)
def test_same_inputs_same_bytes_in_process(
    samples: dict[str, Sample], mixed_samples: dict[str, Sample], codec: str
) -> None:
    for s in (samples["several_blocks"], mixed_samples["several_blocks"]):
        first = s.encode(codec=codec)
        again = encode_container(
            KEY, dict(s.schemas), list(s.records), list(s.schema_ids), dict(META), codec=codec
        )
        assert first == again


_DIGESTS_SCRIPT = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
from tests.unit.test_container import make_mixed_sample, make_sample
print(json.dumps({
    f"{name}/{codec}": hashlib.md5(sample.encode(codec=codec)).hexdigest()
    for name, sample in (("one", make_sample(200)), ("mixed", make_mixed_sample(200)))
    for codec in ("null", "deflate")
}))
"""


def test_same_inputs_same_bytes_run_after_run() -> None:
    """Another interpreter (another hash seed) gives byte-identical output."""
    here = {
        f"{name}/{codec}": hashlib.md5(sample.encode(codec=codec)).hexdigest()
        for name, sample in (("one", make_sample(200)), ("mixed", make_mixed_sample(200)))
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
    forward = sample.encode()
    backward = sample.encode(meta=dict(reversed(list(META.items()))))
    assert forward == backward


def test_schema_mapping_order_does_not_change_bytes(mixed_samples: dict[str, Sample]) -> None:
    s = mixed_samples["mixed"]
    backward = dict(reversed(list(s.schemas.items())))
    assert list(backward) == [3, 1]
    assert encode_container(KEY, backward, s.records, s.schema_ids, META) == s.encode()


@pytest.mark.parametrize("codec", CODECS)
def test_different_key_gives_a_different_sync_marker(codec: str) -> None:
    sample = make_sample(3)
    other_key = KEY.replace("-00000000000000000009", "-00000000000000000010")
    a = sample.encode(codec=codec)
    b = sample.encode(key=other_key, codec=codec)
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
def test_header_metadata_readable(codec: str, mixed_samples: dict[str, Sample]) -> None:
    sample = mixed_samples["two"]
    meta = {
        "topic": "snds.reimbursements",
        "partition": "3",
        "first_offset": "500",
        "last_offset": "501",
        "records": "2",
        "skipped": "0",
    }
    data = sample.encode(meta=meta, codec=codec)
    reader = _reader(data)
    assert reader.metadata == {
        "avro.codec": codec,
        "avro.schema": envelope_schema(REIMBURSEMENTS),
        "replicator.format": "2",
        "replicator.schema_ids": "1,3",
        **{f"replicator.{k}": v for k, v in meta.items()},
    }


def test_envelope_schema_text_is_canonical_and_complete() -> None:
    for schemas in (PRESCRIPTIONS, REIMBURSEMENTS, {}):
        text = envelope_schema(schemas)
        parsed = json.loads(text)
        assert text == json.dumps(parsed, separators=(",", ":"), sort_keys=True)
        assert parsed == _expected_envelope(schemas)
    assert json.loads(envelope_schema({}))["fields"][3] == {"name": "value", "type": "null"}
    # the same schema written with other spacing or key order gives the same header text
    text = envelope_schema(PRESCRIPTIONS)
    reordered = json.dumps(dict(reversed(list(json.loads(PRESCRIPTION_SCHEMA).items()))), indent=4)
    assert envelope_schema({PRESCRIPTION_ID: reordered}) == text
    # and the order of the mapping does not matter: branches follow the schema ids
    assert envelope_schema({3: REIMBURSEMENT_V2, 1: REIMBURSEMENT_V1}) == envelope_schema(
        REIMBURSEMENTS
    )


# -- errors --------------------------------------------------------------------------------
def test_unsupported_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported codec 'snappy'"):
        encode_container(KEY, PRESCRIPTIONS, [], [], {}, codec="snappy")


def test_records_without_a_schema_are_refused() -> None:
    record = RawRecord(0, 0, None, b"\x02a")
    with pytest.raises(ValueError, match="no schema given for schema id 1"):
        encode_container(KEY, {}, [record], [1], {})
    with pytest.raises(ValueError, match="no schema given for schema id 3"):
        encode_container(KEY, {1: REIMBURSEMENT_V1}, [record, record], [1, 3], {})


@pytest.mark.parametrize("ids", [[], [1], [1, 1, 1]])
def test_one_schema_id_per_record(ids: list[int]) -> None:
    record = RawRecord(0, 0, None, b"\x02a")
    with pytest.raises(ValueError, match="one schema id per record"):
        encode_container(KEY, {1: REIMBURSEMENT_V1}, [record, record], ids, {})


# -- property: any interleaving of v1 and v2 reads back record for record ------------------
@settings(max_examples=40, deadline=None)
@given(
    versions=st.lists(st.sampled_from([1, 2]), max_size=25),
    seed=st.integers(0, 2**32),
    codec=st.sampled_from(CODECS),
)
def test_any_mix_of_v1_and_v2_reads_back_record_for_record(
    versions: list[int], seed: int, codec: str
) -> None:
    rng = random.Random(seed)
    records: list[RawRecord] = []
    values: list[dict[str, Any]] = []
    for i, version in enumerate(versions):
        values.append(_reimbursement(rng, i, version))
        schema = REIMBURSEMENT_V1 if version == 1 else REIMBURSEMENT_V2
        records.append(
            RawRecord(i, _timestamp(rng, i), _key_for(rng, i), _body(schema, values[-1]))
        )
    ids = [REIMBURSEMENT_V1_ID if v == 1 else REIMBURSEMENT_V2_ID for v in versions]
    used = {sid: REIMBURSEMENTS[sid] for sid in ids}
    reader, got = _read(encode_container(KEY, used, records, ids, META, codec=codec))
    assert [r["value"] for r in got] == values
    assert [r["offset"] for r in got] == list(range(len(versions)))
    assert reader.metadata["replicator.schema_ids"] == ",".join(map(str, sorted(used)))


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
