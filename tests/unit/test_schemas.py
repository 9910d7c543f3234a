"""The schema registry and the Confluent wire format (decode_wire / encode_wire)."""

from __future__ import annotations

import io
import json
import shutil
import struct
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from replicator.config import DEFAULT_SCHEMAS_DIR
from replicator.devtools.synthetic import SyntheticSource
from replicator.errors import ConfigError
from replicator.schemas import (
    DECODE_REASONS,
    DEFAULT_MAX_BYTES,
    PRESCRIPTIONS_TOPIC,
    REIMBURSEMENTS_TOPIC,
    DecodeError,
    SchemaRegistry,
    SchemaRegistryError,
    decode_wire,
    encode_wire,
)

TOPICS = (REIMBURSEMENTS_TOPIC, PRESCRIPTIONS_TOPIC)


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load(DEFAULT_SCHEMAS_DIR)


@pytest.fixture
def source(registry: SchemaRegistry) -> SyntheticSource:
    return SyntheticSource(11, registry)


def _reason(registry: SchemaRegistry, topic: str, value: bytes | None, **kw: Any) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_wire(registry, topic, value, **kw)
    assert caught.value.reason in DECODE_REASONS
    return caught.value.reason


# --- the registry ------------------------------------------------------------------------


def test_registry_maps_ids_to_topics_and_versions(registry: SchemaRegistry) -> None:
    assert registry.ids() == (1, 2, 3, 4)
    assert registry.topics() == (PRESCRIPTIONS_TOPIC, REIMBURSEMENTS_TOPIC)
    assert registry.ids_for_topic(REIMBURSEMENTS_TOPIC) == (1, 3)
    assert registry.ids_for_topic(PRESCRIPTIONS_TOPIC) == (2, 4)
    assert registry.ids_for_topic("other") == ()
    assert registry.latest_for_topic(REIMBURSEMENTS_TOPIC).id == 3
    assert registry.latest_for_topic(PRESCRIPTIONS_TOPIC).version == 2
    first = registry.get(1)
    assert (first.subject, first.topic, first.version, first.file) == (
        "snds.reimbursements-value",
        REIMBURSEMENTS_TOPIC,
        1,
        "reimbursement-v1.avsc",
    )
    assert first.name == "fr.hdh.snds.Reimbursement"
    with pytest.raises(KeyError):
        registry.get(99)
    with pytest.raises(KeyError):
        registry.latest_for_topic("other")


def test_evolved_versions_add_one_optional_field(registry: SchemaRegistry) -> None:
    for old_id, new_id, added in ((1, 3, "care_setting"), (2, 4, "substitution")):
        old, new = registry.get(old_id), registry.get(new_id)
        assert new.field_names == (*old.field_names, added)
        assert new.parsed["fields"][-1]["default"] is None
        assert old.name == new.name
        assert old.fingerprint != new.fingerprint


def test_schema_json_is_the_stored_schema_compact_and_deterministic(
    registry: SchemaRegistry,
) -> None:
    again = SchemaRegistry.load(DEFAULT_SCHEMAS_DIR)
    for schema_id in registry.ids():
        schema = registry.get(schema_id)
        stored = json.loads((DEFAULT_SCHEMAS_DIR / schema.file).read_text())
        assert json.loads(schema.schema_json) == stored
        assert schema.schema_json == again.get(schema_id).schema_json
        assert schema.schema_json.isascii() and "\n" not in schema.schema_json
        assert len(schema.fingerprint) == 64


def test_schema_json_is_usable_as_a_container_header(registry: SchemaRegistry) -> None:
    """A container header made from schema_json reads the raw bodies back."""

    schema = registry.get(3)
    parsed = parse_schema(json.loads(schema.schema_json))
    source = SyntheticSource(1, registry, v2_share=1.0)
    records = [source.next(REIMBURSEMENTS_TOPIC)[1] for _ in range(5)]
    out = io.BytesIO()
    fastavro.writer(out, parsed, records, sync_marker=b"0123456789abcdef")
    out.seek(0)
    back = list(fastavro.reader(out))
    assert isinstance(back[0], dict)
    assert [str(r["event_id"]) for r in back] == [r["event_id"] for r in records]  # type: ignore[call-overload,index]


def _copy_schemas(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(DEFAULT_SCHEMAS_DIR, target)
    return target


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: (d / "registry.json").unlink(), "not found"),
        (lambda d: (d / "registry.json").write_text("{nope"), "unreadable"),
        (lambda d: (d / "registry.json").write_text("[]"), "non-empty JSON object"),
        (lambda d: (d / "reimbursement-v2.avsc").unlink(), "not found"),
        (lambda d: (d / "prescription-v1.avsc").write_text('"string"'), "record schema"),
        (
            lambda d: (d / "prescription-v1.avsc").write_text(
                '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}'
            ),
            "not a valid Avro schema",
        ),
        (
            lambda d: _edit_registry(
                d, "3", {"subject": "snds.reimbursements-value", "version": 1}
            ),
            "version 1 twice",
        ),
        (lambda d: _edit_registry(d, "3", {"subject": "snds.reimbursements"}), "subject"),
        (lambda d: _edit_registry(d, "3", {"file": "../registry.avsc"}), "plain"),
        (lambda d: _edit_registry(d, "3", {"version": 0}), "version"),
        (lambda d: _rename_registry_id(d, "3", "x"), "integers"),
        (lambda d: _rename_registry_id(d, "3", "0"), "integers from 1"),
    ],
)
def test_bad_registry_is_a_config_error(tmp_path: Path, change: Any, message: str) -> None:
    directory = _copy_schemas(tmp_path)
    change(directory)
    with pytest.raises(SchemaRegistryError, match=message) as caught:
        SchemaRegistry.load(directory)
    assert isinstance(caught.value, ConfigError)


def _edit_registry(directory: Path, key: str, changes: dict[str, Any]) -> None:
    path = directory / "registry.json"
    entries = json.loads(path.read_text())
    entries[key].update(changes)
    path.write_text(json.dumps(entries))


def _rename_registry_id(directory: Path, key: str, new_key: str) -> None:
    path = directory / "registry.json"
    entries = json.loads(path.read_text())
    entries[new_key] = entries.pop(key)
    path.write_text(json.dumps(entries))


# --- encode / decode ---------------------------------------------------------------------


@pytest.mark.parametrize("topic", TOPICS)
def test_round_trip_and_raw_body(
    registry: SchemaRegistry, source: SyntheticSource, topic: str
) -> None:
    for _ in range(300):
        _, record, schema = source.next(topic)
        value = encode_wire(schema, record)
        assert value[0] == 0
        assert struct.unpack(">I", value[1:5])[0] == schema.id
        decoded = decode_wire(registry, topic, value)
        assert decoded.schema == schema
        assert decoded.record == record
        assert decoded.body == value[5:]
        body = io.BytesIO()
        schemaless_writer(body, schema.parsed, record)
        assert decoded.body == body.getvalue()


@pytest.mark.parametrize(
    ("topic", "added"),
    [(REIMBURSEMENTS_TOPIC, "care_setting"), (PRESCRIPTIONS_TOPIC, "substitution")],
)
def test_v1_and_v2_records_of_one_topic_are_both_decoded(
    registry: SchemaRegistry, topic: str, added: str
) -> None:
    source = SyntheticSource(5, registry, v2_share=0.5)
    seen: dict[int, int] = {}
    for _ in range(400):
        _, record, schema = source.next(topic)
        decoded = decode_wire(registry, topic, encode_wire(schema, record))
        assert decoded.record == record
        seen[decoded.schema.version] = seen.get(decoded.schema.version, 0) + 1
        assert (added in decoded.record) == (decoded.schema.version == 2)
        if decoded.schema.version == 1:
            # the evolved schema reads a version-1 body, the added field taking its default
            latest = registry.latest_for_topic(topic)
            upgraded = schemaless_reader(
                io.BytesIO(decoded.body), decoded.schema.parsed, latest.parsed
            )
            assert isinstance(upgraded, dict)
            assert upgraded[added] is None
    assert seen[1] > 100 and seen[2] > 100


def test_encode_accepts_logical_values(registry: SchemaRegistry, source: SyntheticSource) -> None:
    _, record, schema = source.next(REIMBURSEMENTS_TOPIC)
    logical = dict(record)
    logical["event_time"] = datetime.fromtimestamp(record["event_time"] / 1000, UTC)
    logical["care_start_date"] = date.fromordinal(
        date(1970, 1, 1).toordinal() + record["care_start_date"]
    )
    assert encode_wire(schema, logical) == encode_wire(schema, record)


def test_not_wire_format(registry: SchemaRegistry) -> None:
    topic = REIMBURSEMENTS_TOPIC
    for value in (None, b"", b"\x00", b"\x00\x00\x00\x01", b'{"a": 1}', b"\x01\x00\x00\x00\x01x"):
        assert _reason(registry, topic, value) == "not_wire_format"


def test_unknown_and_wrong_topic_schema_ids(
    registry: SchemaRegistry, source: SyntheticSource
) -> None:
    _, value, _ = source.next_wire(REIMBURSEMENTS_TOPIC)
    for unknown in (0, 5, 2**31, 2**32 - 1):
        forged = b"\x00" + unknown.to_bytes(4, "big") + value[5:]
        assert _reason(registry, REIMBURSEMENTS_TOPIC, forged) == "unknown_schema_id"
    assert _reason(registry, PRESCRIPTIONS_TOPIC, value) == "wrong_topic_schema"
    assert _reason(registry, "another.topic", value) == "wrong_topic_schema"


def test_every_truncation_is_undecodable(registry: SchemaRegistry, source: SyntheticSource) -> None:
    for topic in TOPICS:
        for _ in range(20):
            _, value, _ = source.next_wire(topic)
            for cut in range(5, len(value)):
                assert _reason(registry, topic, value[:cut]) == "undecodable"


def test_left_over_bytes_are_undecodable(registry: SchemaRegistry, source: SyntheticSource) -> None:
    _, value, _ = source.next_wire(PRESCRIPTIONS_TOPIC)
    for extra in (b"\x00", b"\x02abc", value[5:]):
        with pytest.raises(DecodeError) as caught:
            decode_wire(registry, PRESCRIPTIONS_TOPIC, value + extra)
        assert caught.value.reason == "undecodable"
        assert f"{len(extra)} bytes left over" in caught.value.detail


def test_corrupt_bodies_are_undecodable(registry: SchemaRegistry) -> None:
    schema = registry.get(1)
    # event_id: a string whose length says 3 bytes of invalid UTF-8
    bad_utf8 = b"\x00\x00\x00\x00\x01" + b"\x06\xff\xfe\xfd" + b"\x00" * 40
    assert _reason(registry, schema.topic, bad_utf8) == "undecodable"
    # operation: enum index 7 of 3 symbols
    good = encode_wire(
        schema,
        {
            "event_id": "00000000-0000-4000-8000-000000000000",
            "operation": "INSERT",
            "event_time": 0,
            "beneficiary_id": "",
            "birth_year": 0,
            "sex": 0,
            "residence_department": "",
            "care_start_date": 0,
            "settlement_date": 0,
            "prestation_nature": 0,
            "act_code": None,
            "base_amount_cents": 0,
            "paid_amount_cents": 0,
            "reimbursed_amount_cents": 0,
            "prescriber_id": None,
            "executor_id": "",
            "is_correction": False,
        },
    )
    enum_at = 5 + 1 + 36
    assert good[enum_at] == 0
    assert _reason(registry, schema.topic, good[:enum_at] + b"\x0e" + good[enum_at + 1 :]) == (
        "undecodable"
    )
    # union branch 5 of 2
    act_at = enum_at + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1
    assert good[act_at] == 0
    assert _reason(registry, schema.topic, good[:act_at] + b"\x0a" + good[act_at + 1 :]) == (
        "undecodable"
    )


def test_oversized(registry: SchemaRegistry, source: SyntheticSource) -> None:
    _, value, _ = source.next_wire(REIMBURSEMENTS_TOPIC)
    assert _reason(registry, REIMBURSEMENTS_TOPIC, value, max_bytes=len(value) - 1) == "oversized"
    decode_wire(registry, REIMBURSEMENTS_TOPIC, value, max_bytes=len(value))
    huge = b"\x00\x00\x00\x00\x01" + b"x" * DEFAULT_MAX_BYTES
    assert _reason(registry, REIMBURSEMENTS_TOPIC, huge) == "oversized"


def test_details_never_contain_record_contents(registry: SchemaRegistry) -> None:
    source = SyntheticSource(3, registry, v2_share=1.0)
    for topic in TOPICS:
        for _ in range(30):
            _, record, schema = source.next(topic)
            value = encode_wire(schema, record)
            secrets = [v for v in record.values() if isinstance(v, str) and len(v) >= 5]
            attempts: list[bytes | None] = [
                value[: len(value) // 2],
                value + b"\x00trailing",
                value[:5] + b"\xff" * 3 + value[8:],
                b"\x00\x00\x00\x30\x39" + value[5:],
                value[5:],
            ]
            for attempt in attempts:
                for other_topic in TOPICS:
                    try:
                        decode_wire(registry, other_topic, attempt, max_bytes=150)
                    except DecodeError as exc:
                        text = str(exc)
                        for secret in secrets:
                            assert secret not in text
                        if exc.reason == "undecodable":  # fastavro's message is hidden
                            assert exc.__cause__ is None and exc.__suppress_context__
