"""The compiled fast path (`replicator/judge/_fastcheck.c`, programs from `judge/native.py`)
only ever says "good", and only where the Python path says so too.

Differential tests against `judge.batch.judge` (decode_wire, then the specification
`judge.rules.check_record`): synthetic good and bad records,
hypothesis records near every rule's edge, byte-level mutations of good values, hand-made
schemas, and hand-made encodings the extension must leave to Python. The extension must be
built (`make setup`): a missing build fails here instead of silently running slower.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from replicator.container import LEGACY_FORMAT, READABLE_FORMATS, encode_record, zigzag_varint
from replicator.devtools.synthetic import BAD_KINDS, BadKind, SyntheticSource
from replicator.judge.batch import GOOD, Item, judge, judge_items
from replicator.judge.native import compiled, extension, native_programs, program_ops
from replicator.judge.rules import (
    DAY_MS,
    MAX_EVENT_MS,
    MIN_DATE_DAYS,
    MIN_EVENT_MS,
    _year_of_ms,
    _year_start_days,
    check_record,
)
from replicator.model import RawRecord
from replicator.schemas import HEADER_SIZE, RegisteredSchema, encode_wire
from tests.support.nirs import nir_in_text
from tests.unit.judge.test_compiled import (
    FUZZ,
    HAND_MADE,
    REGISTRY,
    SCHEMAS,
    _decode,
    _good,
    _near_good,
    _record_strategy,
    _registered,
)

MAX_BYTES = 1 << 20
NIR = "185057800608491"


def _module() -> ModuleType:
    module = extension()
    assert module is not None, "replicator.judge._fastcheck is not built: run `make setup`"
    return module


PROGRAMS = native_programs(REGISTRY)


def _agree(items: list[Item], programs: dict[int, object] | None = None) -> int:
    """Assert every item the extension accepts is good for the Python path, with the same
    verdict; return how many it accepted."""
    verdicts = _module().accept(programs or PROGRAMS, items, MAX_BYTES)
    assert len(verdicts) == len(items)
    accepted = 0
    for (topic, value, _offset, _timestamp_ms, key, headers), verdict in zip(
        items, verdicts, strict=True
    ):
        if verdict is None:
            continue
        assert value is not None
        if programs is None:
            assert judge(REGISTRY, topic, value, MAX_BYTES, key, headers) == verdict
        assert verdict[1:] == (GOOD, GOOD)
        accepted += 1
    return accepted


def _item(schema: RegisteredSchema, value: bytes, index: int = 0) -> Item:
    key = None if index % 3 == 0 else f"k{index}".encode()
    return (schema.topic, value, 10**index % (1 << 40), 1_700_000_000_000 + index, key, None)


def _wire(schema: RegisteredSchema, record: dict[str, Any]) -> bytes | None:
    """The record's wire value, or None if fastavro does not encode it for this schema."""
    try:
        return encode_wire(schema, record)
    except Exception:
        return None


# --- the extension and its programs -------------------------------------------------------


def test_the_extension_is_built_and_takes_every_project_schema() -> None:
    assert PROGRAMS is not None
    assert sorted(PROGRAMS) == sorted(REGISTRY.ids())  # header bytes 00 00 00 0n


def test_every_good_synthetic_record_is_accepted() -> None:
    source = SyntheticSource(21, REGISTRY, v2_share=0.5)
    items: list[Item] = []
    for index in range(4_000):
        topic = REGISTRY.topics()[index % 2]
        key, value, _schema = source.next_wire(topic)
        # offsets and timestamps of every varint length, including "no timestamp" (-1)
        offset = ((index * 7919) << (index % 40)) % (1 << 63)  # Kafka offsets are int64
        timestamp = -1 if index % 97 == 0 else 1_700_000_000_000 + index
        items.append((topic, value, offset, timestamp, key if index % 4 else None, None))
    assert _agree(items) == len(items)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_synthetic_records_are_left_to_python(kind: BadKind) -> None:
    source = SyntheticSource(22, REGISTRY, v2_share=0.5)
    items: list[Item] = []
    for index in range(300):
        topic = REGISTRY.topics()[index % 2]
        key, value = source.bad_message(kind, topic)
        items.append((topic, value, index, 1_700_000_000_000, key, None))
    assert _agree(items) == 0


def test_judge_items_gives_the_same_verdicts_with_and_without_the_extension(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = SyntheticSource(23, REGISTRY, v2_share=0.5)
    items: list[Item] = []
    for index in range(2_000):
        topic = REGISTRY.topics()[index % 2]
        if index % 5 == 0:
            key, value = source.bad_message(BAD_KINDS[index // 5 % len(BAD_KINDS)], topic)
        else:
            key, value, _schema = source.next_wire(topic)
        items.append((topic, value, index, 1_700_000_000_000 + index, key, None))
    with_extension = judge_items(REGISTRY, items, MAX_BYTES)
    monkeypatch.setattr("replicator.judge.batch.extension", lambda: None)
    monkeypatch.setattr("replicator.judge.batch._programs", lambda registry: None)
    assert judge_items(REGISTRY, items, MAX_BYTES) == with_extension


def _edges(schema: RegisteredSchema) -> list[tuple[dict[str, Any], bool]]:
    """Changes to a good record on both sides of each numeric rule's edge, and whether the
    changed record is good: where the extension models a rule exactly, it must accept the
    good side and leave the other to Python."""
    base = _good(schema)
    day = base["event_time"] // DAY_MS
    cases: list[tuple[dict[str, Any], bool]] = [
        ({"event_time": MAX_EVENT_MS - 1}, True),
        ({"event_time": MAX_EVENT_MS}, False),
        ({"base_amount_cents": 0, "reimbursed_amount_cents": 0}, True),
        ({"base_amount_cents": -1, "reimbursed_amount_cents": -1}, False),
        ({"reimbursed_amount_cents": base["base_amount_cents"]}, True),
        ({"reimbursed_amount_cents": base["base_amount_cents"] + 1}, False),
    ]
    if "birth_year" not in base:
        return [
            *cases,
            ({"dispensing_date": day + 1}, True),
            ({"dispensing_date": day + 2}, False),
            ({"dispensing_date": MIN_DATE_DAYS}, True),
            ({"dispensing_date": MIN_DATE_DAYS - 1}, False),
            ({"quantity": 1}, True),
            ({"quantity": 0}, False),
        ]
    year = _year_of_ms(base["event_time"])
    new_year_ms = _year_start_days(year) * DAY_MS
    new_year = {"care_start_date": new_year_ms // DAY_MS, "settlement_date": new_year_ms // DAY_MS}
    born_1890 = {"birth_year": 1890, "event_time": MIN_EVENT_MS}

    def dates(first: int) -> dict[str, Any]:
        return {"care_start_date": first, "settlement_date": first}

    return [
        *cases,
        ({"birth_year": year, "event_time": new_year_ms, **new_year}, True),
        ({"birth_year": year, "event_time": new_year_ms - 1, **new_year}, False),
        ({**born_1890, **dates(MIN_DATE_DAYS)}, True),
        ({**born_1890, **dates(MIN_DATE_DAYS - 1)}, False),
        ({**born_1890, "birth_year": 1889, **dates(MIN_DATE_DAYS)}, False),
        ({"birth_year": year - 1, **dates(_year_start_days(year - 1))}, True),
        ({"birth_year": year - 1, **dates(_year_start_days(year - 1) - 1)}, False),
        (dates(day + 1), True),
        (dates(day + 2), False),
        ({"settlement_date": base["care_start_date"]}, True),
        ({"settlement_date": base["care_start_date"] - 1}, False),
        ({"reimbursed_amount_cents": base["paid_amount_cents"]}, True),
        ({"reimbursed_amount_cents": base["paid_amount_cents"] + 1}, False),
        ({"sex": 1}, True),
        ({"sex": 2}, True),
        ({"sex": 0}, False),
        ({"sex": 3}, False),
        ({"prestation_nature": 1000}, True),
        ({"prestation_nature": 9999}, True),
        ({"prestation_nature": 999}, False),
        ({"prestation_nature": 10000}, False),
    ]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.file)
def test_numeric_rules_are_exact_on_both_sides_of_each_edge(schema: RegisteredSchema) -> None:
    base = _good(schema)
    for change, good in _edges(schema):
        record = {**base, **change}
        value = encode_wire(schema, record)
        verdict = judge(REGISTRY, schema.topic, value, MAX_BYTES)
        assert (verdict[0] is not None) == good, (change, verdict)
        assert _agree([_item(schema, value)]) == (1 if good else 0), change


# --- hypothesis: records near every rule's edge, and mutated bytes ------------------------


@FUZZ
@given(data=st.data(), schema=st.sampled_from(SCHEMAS))
def test_near_good_records_agree(data: st.DataObject, schema: RegisteredSchema) -> None:
    record = data.draw(_near_good(schema))
    value = _wire(schema, record)
    if value is not None:
        _agree([_item(schema, value)])


@FUZZ
@given(data=st.data(), schema=st.sampled_from(SCHEMAS))
def test_any_encodable_record_agrees(data: st.DataObject, schema: RegisteredSchema) -> None:
    value = _wire(schema, data.draw(_record_strategy(schema)))
    if value is not None:
        _agree([_item(schema, value)])


_MUTATIONS = st.sampled_from(["flip", "set", "cut", "insert", "append"])


@FUZZ
@given(
    schema=st.sampled_from(SCHEMAS),
    seed=st.integers(0, 50),
    edits=st.lists(
        st.tuples(_MUTATIONS, st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=3
    ),
)
def test_mutated_bytes_agree(
    schema: RegisteredSchema, seed: int, edits: list[tuple[str, int, int]]
) -> None:
    value = bytearray(encode_wire(schema, _good(schema, seed)))
    for how, where, byte in edits:
        at = HEADER_SIZE + where % max(len(value) - HEADER_SIZE, 1)
        if at >= len(value):  # everything after the header was cut
            value.append(byte)
        elif how == "flip":
            value[at] ^= 1 << (byte % 8)
        elif how == "set":
            value[at] = byte
        elif how == "cut":
            del value[at:]
        elif how == "insert":
            value.insert(at, byte)
        else:
            value.append(byte)
    _agree([_item(schema, bytes(value))])


# --- hand-made schemas --------------------------------------------------------------------


def _hand_made_programs() -> dict[int, object]:
    module = _module()
    programs = {}
    for schema in HAND_MADE:
        program = compiled(module, schema)
        if program is not None:
            programs[schema.id] = program
    return programs


def test_schemas_the_extension_does_not_walk_have_no_program() -> None:
    walked = {schema.id for schema in HAND_MADE if program_ops(schema) is not None}
    # nested records, arrays, maps, bytes, unions of three: not walked
    not_walked = {schema.id for schema in HAND_MADE} - walked
    assert not_walked and walked
    for schema in HAND_MADE:
        if schema.id in not_walked:
            assert compiled(_module(), schema) is None
    rules_on_other_types = _registered(
        {
            "type": "record",
            "name": "R",
            "fields": [{"name": "sex", "type": "string"}],
        },
        2000,
    )
    assert program_ops(rules_on_other_types) is None


@FUZZ
@given(data=st.data(), schema=st.sampled_from(HAND_MADE))
def test_hand_made_schemas_agree(data: st.DataObject, schema: RegisteredSchema) -> None:
    programs = _hand_made_programs()
    if schema.id not in programs:
        return
    value = _wire(schema, data.draw(_record_strategy(schema)))
    if value is None:
        return
    verdicts = _module().accept(programs, [_item(schema, value)], MAX_BYTES)
    if verdicts[0] is not None:
        record = _decode(schema, value[HEADER_SIZE:])
        assert record is not None
        assert check_record(schema.topic, record) is None
        assert verdicts[0] == (schema.id, GOOD, GOOD)


# --- hand-made encodings ------------------------------------------------------------------


def _body(schema: RegisteredSchema, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, schema.parsed, record)
    return out.getvalue()


def _header(schema: RegisteredSchema) -> bytes:
    return b"\x00" + schema.id.to_bytes(4, "big")


def _all_left_to_python(items: Iterable[Item]) -> None:
    listed = list(items)
    verdicts = _module().accept(PROGRAMS, listed, MAX_BYTES)
    assert verdicts == [None] * len(listed)


def test_unusual_encodings_and_values_are_left_to_python() -> None:
    schema = REGISTRY.get(3)  # reimbursement v2: enum, unions, boolean, strings, ints
    record = _good(schema)
    good = _header(schema) + _body(schema, record)
    assert _agree([_item(schema, good)]) == 1
    event_id = record["event_id"].encode()
    head = _header(schema) + zigzag_varint(len(event_id)) + event_id
    rest = _body(schema, record)[len(head) - HEADER_SIZE :]
    cases = [
        good + b"\x00",  # a trailing byte
        good[:-1],  # one byte short
        head + b"\x01" + rest[1:],  # enum index -1
        head + b"\x06" + rest[1:],  # enum index 3 of 3 symbols
        head + b"\x80" * 10 + b"\x00" + rest[1:],  # an 11-byte varint
        good[: len(head) - 2] + b"\xc3\xa9" + good[len(head) :],  # a non-ASCII character
    ]
    # strings that may hold a NIR token, where the Python path decides
    for text in (NIR, f"x {NIR}", f"-{NIR}-", "1 85 05 78 006 084 91", f"x{NIR}y"):
        cases.append(_header(schema) + _body(schema, {**record, "care_setting": text}))
    # the extension's NIR scan is exact on ASCII: text without a NIR is accepted there
    spread = " ".join(NIR)  # a separator inside a group: not a spelling of a NIR
    for text in ("a" + " " * 20, f"9{NIR}", f"{NIR}9", "0" * 40, spread):
        value = _header(schema) + _body(schema, {**record, "care_setting": text})
        assert _agree([_item(schema, value)]) == 1, text
    # ends with is_correction (a boolean byte), then care_setting's union index 0 (null)
    no_setting = _header(schema) + _body(schema, {**record, "care_setting": None})
    assert _agree([_item(schema, no_setting)]) == 1
    cases.append(no_setting[:-2] + b"\x02\x00")  # a boolean byte other than 0 and 1
    cases.append(no_setting[:-1] + b"\x04")  # union index 2
    cases.append(no_setting[:-1] + b"\x01")  # union index -1
    _all_left_to_python([_item(schema, value) for value in cases])


def test_items_that_do_not_fit_are_left_to_python() -> None:
    schema = REGISTRY.get(1)
    good = encode_wire(schema, _good(schema))
    cases: list[Any] = [
        ("snds.prescriptions", good, 1, 2, None),  # another topic's schema
        (schema.topic, None, 1, 2, None),  # a tombstone
        (schema.topic, b"\x01" + good[1:], 1, 2, None),  # magic byte
        (schema.topic, good[:4], 1, 2, None),  # shorter than the header
        (schema.topic, b"\x00\x00\x00\x00\x63" + good[5:], 1, 2, None),  # unknown schema
        (schema.topic, good, 1 << 70, 2, None),  # an offset past 64 bits
        (schema.topic, good, 1, 2, "key"),  # a key that is not bytes
        (schema.topic, bytearray(good), 1, 2, None),  # not bytes
        (schema.topic, good, 1, 2),  # not an item
    ]
    verdicts = _module().accept(PROGRAMS, cases, MAX_BYTES)
    assert verdicts == [None] * len(cases)
    verdicts = _module().accept(PROGRAMS, [(schema.topic, good, 1, 2, None)], 64)
    assert verdicts == [None]  # longer than max_bytes


# --- envelopes made by the extension for the container -------------------------------------

_HEADERS = st.one_of(
    st.none(),
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(["a", "trace-id", ""]), st.text(max_size=40)),
            st.one_of(st.none(), st.binary(max_size=200)),
        ),
        max_size=8,
    ),
)
_RECORDS = st.builds(
    RawRecord,
    offset=st.integers(0, (1 << 63) - 1),
    timestamp_ms=st.integers(-(1 << 63), (1 << 63) - 1),
    key=st.one_of(st.none(), st.binary(max_size=300)),
    body=st.binary(max_size=300),
    headers=_HEADERS,
)


@FUZZ
@given(
    records=st.lists(st.tuples(_RECORDS, st.integers(0, 63)), min_size=0, max_size=30),
    fmt=st.sampled_from(sorted(READABLE_FORMATS)),
)
def test_envelopes_are_those_of_encode_record(
    records: list[tuple[RawRecord, int]], fmt: str
) -> None:
    """Every branch, key, header list and varint length, in both formats (format 2 leaves
    the headers out). Names that are not valid UTF-8 (lone surrogates) fail alike."""
    chunk = [record for record, _branch in records]
    branches = [branch for _record, branch in records]
    try:
        expected = [
            encode_record(record, branch, fmt)
            for record, branch in zip(chunk, branches, strict=True)
        ]
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            _module().envelopes(chunk, branches, fmt != LEGACY_FORMAT)
        return
    assert _module().envelopes(chunk, branches, fmt != LEGACY_FORMAT) == expected


def test_envelopes_refuse_what_encode_record_cannot_take() -> None:
    record = RawRecord(1, 2, None, b"x")
    with pytest.raises(ValueError, match="one branch per record"):
        _module().envelopes([record], [], True)
    with pytest.raises(ValueError, match="branch out of range"):
        _module().envelopes([record], [64], True)
    with pytest.raises(TypeError):
        _module().envelopes([record._replace(body="x")], [0], True)  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        _module().envelopes([record._replace(offset=1 << 64)], [0], True)
    cases: list[tuple[Any, str]] = [
        ([(b"name", b"v")], "header names must be str"),
        ([("name", "text")], "header values must be bytes or None"),
        ([("name",)], "each header must be a"),
        (7, "headers must be a sequence"),
    ]
    for bad, message in cases:
        with pytest.raises(TypeError, match=message):
            _module().envelopes([record._replace(headers=bad)], [0], True)
        if not isinstance(bad, int):
            with pytest.raises(TypeError, match=message):
                encode_record(record._replace(headers=bad), 0)


_KEY_TEXT = st.one_of(
    nir_in_text().map(lambda case: case[0]),
    st.text(alphabet="0123456789 2ABabcdef_-./\t\n:xg\u00a0", max_size=60),
    st.sampled_from([f"{i:064x}" for i in (0, 1 << 200, 7**90)] + [NIR, f"k-{NIR}"]),
)


@FUZZ
@given(key=_KEY_TEXT, header=_KEY_TEXT, name=_KEY_TEXT, place=st.integers(0, 2))
def test_key_and_headers_are_judged_alike(key: str, header: str, name: str, place: int) -> None:
    """The extension's scan of the key and the headers (names and values) is the
    specification's: it accepts a message only where `judge` finds no NIR in them."""
    schema = REGISTRY.get(3)
    value = _header(schema) + _body(schema, _good(schema))
    headers: list[tuple[str, str | bytes | None]] = [("h", b"1"), ("x", None)]
    headers.insert(place, (name, header.encode()))
    items: list[Item] = [
        (schema.topic, value, 1, 1_700_000_000_000, key.encode(), None),
        (schema.topic, value, 2, 1_700_000_000_000, b"k", headers),
        (schema.topic, value, 3, 1_700_000_000_000, None, [(name, None)]),
    ]
    verdicts = _module().accept(PROGRAMS, items, MAX_BYTES)
    for item, verdict in zip(items, verdicts, strict=True):
        expected = judge(REGISTRY, item[0], item[1], MAX_BYTES, item[4], item[5])
        if verdict is not None:
            assert verdict == expected
        elif all(
            part.isascii() for part in (key, header, name)
        ):  # the scan is exact on ASCII: "not sure" only for a NIR
            assert expected[1] == "direct_identifier"
    _agree(items, None)
