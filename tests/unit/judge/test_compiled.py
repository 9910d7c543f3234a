"""`judge.compiled.checker_for(schema)` returns exactly what `judge.rules.check_record` returns.

Differential tests: synthetic good and bad records of the four project schemas, hypothesis
records (typed as decoded, mutated near every rule's boundary, or of unexpected types), and
hand-made schemas with nested records, arrays, maps, bytes and fields no rule knows.
Bounded: the whole file runs in a few seconds.
"""

from __future__ import annotations

import builtins
import hashlib
import inspect
import io
import itertools
import json
import keyword
import random
import re
import tokenize
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicator.config import DEFAULT_SCHEMAS_DIR
from replicator.devtools.synthetic import (
    BAD_KINDS,
    EXPECTED_REASON,
    BadKind,
    SyntheticSource,
    cip13,
    random_nir,
)
from replicator.judge import rules as validation
from replicator.judge.compiled import DEPARTMENTS, _build, checker_for, checker_source
from replicator.judge.rules import (
    _DEPARTMENT_RE,
    _LOWER_HEX,
    DAY_MS,
    MAX_EVENT_MS,
    MIN_DATE_DAYS,
    MIN_EVENT_MS,
    Violation,
    _year_of_ms,
    _year_start_days,
    check_record,
)
from replicator.schemas import (
    HEADER_SIZE,
    RegisteredSchema,
    SchemaRegistry,
    _without_logical_types,
)
from tests.support.nirs import nir_in_text

REGISTRY = SchemaRegistry.load(DEFAULT_SCHEMAS_DIR)
SCHEMAS = [REGISTRY.get(schema_id) for schema_id in REGISTRY.ids()]
CHECKERS = {schema.id: checker_for(schema) for schema in SCHEMAS}
FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_EPOCH = date(1970, 1, 1).toordinal()


def _decode(schema: RegisteredSchema, body: bytes) -> dict[str, Any] | None:
    """The record as the service decodes it, or None if the body does not decode exactly."""
    stream = io.BytesIO(body)
    try:
        record = schemaless_reader(stream, schema.plain)
    except Exception:
        return None
    return record if stream.tell() == len(body) and isinstance(record, dict) else None


def _round_trip(schema: RegisteredSchema, record: Mapping[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    schemaless_writer(buffer, schema.parsed, dict(record))
    decoded = _decode(schema, buffer.getvalue())
    assert decoded is not None
    return decoded


def _same(schema: RegisteredSchema, record: Mapping[str, Any]) -> Violation | None:
    """Assert the compiled checker agrees with the reference; return the verdict."""
    expected = check_record(schema.topic, record)
    checker = CHECKERS.get(schema.id)
    if checker is None:
        checker = CHECKERS[schema.id] = checker_for(schema)
    assert checker(record) == expected
    return expected


class _Str(str):
    """A str subclass: the reference's ``type(value) is str`` refuses it."""

    __slots__ = ()


class _Int(int):
    """An int subclass: the reference's ``type(value) is int`` refuses it."""


# --- the project schemas: synthetic records -------------------------------------------------


def test_good_synthetic_records_take_the_fast_path() -> None:
    """Every good synthetic record is judged by the generated code alone: the reference is
    never called (so the speed-up is real), and nothing is refused."""
    calls: list[Mapping[str, Any]] = []

    def counting(record: Mapping[str, Any]) -> Violation | None:
        calls.append(record)
        return check_record("unused", record)

    fast = {schema.id: _build(schema, counting) for schema in SCHEMAS}
    source = SyntheticSource(11, REGISTRY, v2_share=0.5)
    seen = set()
    for index in range(4_000):
        _, value, schema = source.next_wire(REGISTRY.topics()[index % 2])
        record = _decode(schema, value[HEADER_SIZE:])
        assert record is not None
        seen.add(schema.id)
        assert fast[schema.id](record) is None
    assert calls == []
    assert seen == set(REGISTRY.ids())


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_synthetic_bad_records_get_the_reference_verdict(kind: BadKind) -> None:
    source = SyntheticSource(12, REGISTRY, v2_share=0.5)
    refused = 0
    for index in range(300):
        topic = REGISTRY.topics()[index % 2]
        _, value = source.bad_message(kind, topic)
        schema = REGISTRY.by_header().get(value[1:HEADER_SIZE])
        if schema is None or value[0] != 0:
            continue
        record = _decode(schema, value[HEADER_SIZE:])
        if record is None:
            continue
        violation = _same(schema, record)
        if kind in ("invalid_value", "direct_identifier"):
            assert violation is not None
            assert violation.reason == EXPECTED_REASON[kind]
            refused += 1
    if kind in ("invalid_value", "direct_identifier"):
        assert refused == 300


def test_many_good_synthetic_records_agree() -> None:
    source = SyntheticSource(13, REGISTRY, v2_share=0.5)
    for index in range(3_000):
        _, record, schema = source.next(REGISTRY.topics()[index % 2])
        assert _same(schema, record) is None


# --- hand-picked violations, each at a rule's edge -------------------------------------------


def _good(schema: RegisteredSchema, seed: int = 3) -> dict[str, Any]:
    version_2 = 1.0 if schema.version == 2 else 0.0
    source = SyntheticSource(
        seed, REGISTRY, v2_share=version_2, beneficiaries=50, professionals=20, pharmacies=10
    )
    _, record, got = source.next(schema.topic)
    assert got.id == schema.id
    return record


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.file)
def test_edges_of_every_rule(schema: RegisteredSchema) -> None:
    base = _good(schema)
    event_ms = base["event_time"]
    event_day = event_ms // DAY_MS
    event_year = _year_of_ms(event_ms)
    nir = "185057800608491"
    changes: list[dict[str, Any]] = [
        {"event_time": MIN_EVENT_MS - 1},
        {"event_time": MAX_EVENT_MS},
        {"event_time": MAX_EVENT_MS - 1},
        {"event_id": base["event_id"].upper()},
        {"event_id": base["event_id"][:-1]},
        {"beneficiary_id": base["beneficiary_id"].upper()},
        {"beneficiary_id": base["beneficiary_id"][:-1] + "g"},
        {"beneficiary_id": base["beneficiary_id"][:-1] + "\u00e9"},
        {"beneficiary_id": nir},
        {"prescriber_id": None},
        {"prescriber_id": "0" * 32},
        {"prescriber_id": "0" * 31 + "\x00"},
        {"operation": nir},
        {"is_correction": nir},  # a str where a boolean is declared: still scanned
        {"substitution": f"x {nir}"},
        {"substitution": 1.5},
        {"base_amount_cents": 0, "reimbursed_amount_cents": 0, "paid_amount_cents": 0},
        {"base_amount_cents": -1},
        {"reimbursed_amount_cents": base["base_amount_cents"] + 1},
    ]
    if "birth_year" in base:
        start = _year_start_days(event_year) * DAY_MS
        changes += [
            {"birth_year": event_year},
            {"birth_year": event_year + 1},
            {"birth_year": 1890},
            {"birth_year": 1889},
            {"birth_year": 2000, "event_time": start - 1},
            {"birth_year": event_year, "event_time": start},
            {"birth_year": event_year, "event_time": start - 1},
            {"birth_year": True},
            {"sex": 3},
            {"sex": True},  # the reference accepts True (True == 1)
            {"sex": 1.0},
            {"residence_department": "20"},
            {"residence_department": "2A"},
            {"residence_department": "976"},
            {"residence_department": "977"},
            {"care_start_date": event_day + 1, "settlement_date": event_day + 1},
            {"care_start_date": event_day + 2, "settlement_date": event_day + 2},
            {"settlement_date": base["care_start_date"] - 1},
            {"care_start_date": MIN_DATE_DAYS, "birth_year": 1890},
            {"care_start_date": MIN_DATE_DAYS - 1, "birth_year": 1890},
            {"care_start_date": _year_start_days(1990), "birth_year": 1990},
            {"care_start_date": _year_start_days(1990) - 1, "birth_year": 1990},
            {"prestation_nature": 999},
            {"prestation_nature": 9999},
            {"prestation_nature": 10000},
            {"prestation_nature": 1000},
            {"birth_year": _Int(1980)},
            {"sex": _Int(1)},
            {
                "birth_year": event_year,
                "event_time": start - 1,
                "care_start_date": start // DAY_MS,
                "settlement_date": start // DAY_MS,
            },
            {
                "birth_year": event_year,
                "event_time": start,
                "care_start_date": start // DAY_MS,
                "settlement_date": start // DAY_MS,
            },
            {"act_code": "DEQP003"},
            {"act_code": "DEQP03"},
            {"paid_amount_cents": base["reimbursed_amount_cents"] - 1},
            {"care_setting": f"chez {nir}"} if "care_setting" in base else {},
        ]
    else:
        changes += [
            {"dispensing_date": event_day + 1},
            {"dispensing_date": event_day + 2},
            {"dispensing_date": MIN_DATE_DAYS - 1},
            {"dispensing_date": MIN_DATE_DAYS},
            {"cip13": cip13(1234567)},
            {"cip13": cip13(1234567)[:-1] + str((int(cip13(1234567)[-1]) + 1) % 10)},
            {"cip13": "3400" + "0" * 8 + "\uff10"},
            {"atc_code": "N02BE1"},
            {"quantity": 0},
            {"quantity": 1},
            {"quantity": _Int(2)},
            {"event_id": _Str(base["event_id"])},
            {"cip13": _Str(base["cip13"])},
            {"pharmacy_id": base["pharmacy_id"] + "0"},
        ]
    outcomes = set()
    for change in changes:
        record = {**base, **{k: v for k, v in change.items() if k in base}}
        violation = _same(schema, record)
        outcomes.add(None if violation is None else violation.field)
    assert None in outcomes and len(outcomes) > 5  # both verdicts were exercised


def test_records_with_logical_types_applied() -> None:
    schema = REGISTRY.get(3)
    record = _good(schema)
    logical = dict(
        record,
        event_time=datetime.fromtimestamp(record["event_time"] / 1000, UTC),
        care_start_date=date.fromordinal(_EPOCH + record["care_start_date"]),
        settlement_date=date.fromordinal(_EPOCH + record["settlement_date"]),
    )
    assert _same(schema, logical) is None
    assert _same(schema, dict(logical, care_start_date=date(1899, 12, 31))) is not None
    wrong = dict(logical, care_start_date=datetime(2020, 1, 1, tzinfo=UTC))
    assert _same(schema, wrong) is not None
    assert _same(schema, dict(record, event_time=datetime(2026, 1, 1))) is not None


def test_records_that_do_not_look_decoded() -> None:
    schema = REGISTRY.get(1)
    record = _good(schema)
    reordered = dict(reversed(list(record.items())))
    nir = "185057800608491"
    cases: list[tuple[Mapping[str, Any], str | None]] = [
        (reordered, None),
        # the first NIR in record order (schema order would name prescriber_id)
        ({**reordered, "executor_id": nir, "prescriber_id": nir}, "executor_id"),
        ({**record, "note": nir}, "note"),  # an extra field
        ({**record, "copay_amount_cents": -1}, "copay_amount_cents"),
        ({k: v for k, v in record.items() if k != "sex"}, None),  # a missing field
        ({**{k: v for k, v in record.items() if k != "sex"}, "note": nir}, "note"),  # same size
        ({}, None),
        ({"event_time": 0}, "event_time"),
        (_MappingView(record), None),
        (_MappingView({**record, "quantity": 0}), "quantity"),
    ]
    for case, field in cases:
        violation = _same(schema, case)
        assert (None if violation is None else violation.field) == field


class _MappingView(Mapping[str, Any]):
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


# good records to start from, by schema id
_POOL = {schema.id: [_good(schema, seed) for seed in range(20)] for schema in SCHEMAS}


# --- building blocks: the department set, the hex test ------------------------------------------


def test_department_set_is_the_reference_regex() -> None:
    alphabet = "0123456789ABab \n"
    count = 0
    for length in range(5):
        for chars in itertools.product(alphabet, repeat=length):
            text = "".join(chars)
            assert (text in DEPARTMENTS) == bool(_DEPARTMENT_RE.fullmatch(text)), text
            count += text in DEPARTMENTS
    assert count == len(DEPARTMENTS) == 103


_HEXISH = st.text(
    alphabet=st.sampled_from(list("0123456789abcdefABG- \x00\u00e9\uff10")), max_size=70
)


@FUZZ
@given(text=st.one_of(_HEXISH, st.text(max_size=70)), fit=st.booleans())
def test_pseudonym_check_is_the_reference_regex(text: str, fit: bool) -> None:
    """The generated pseudonym test (no regex) accepts exactly what the reference's does."""
    schema = REGISTRY.get(2)
    record = _POOL[schema.id][0]
    for field, length in (("beneficiary_id", 64), ("pharmacy_id", 32)):
        # `fit`: repeated or cut to the right length, so that the characters decide
        value = (text * length)[:length] if fit else text
        verdict = _same(schema, {**record, field: value})
        expected_ok = len(value) == length and _LOWER_HEX.fullmatch(value) is not None
        assert (verdict is None) == expected_ok


# --- hypothesis: records of the project schemas ----------------------------------------------

_NIRS = [random_nir(random.Random(seed)) for seed in range(20)]
_SHAPED_TEXT = st.one_of(
    st.text(max_size=30),
    nir_in_text().map(lambda case: case[0]),
    st.sampled_from(
        [
            *_NIRS,
            *(f"vu le 3 mars, {nir}." for nir in _NIRS[:5]),
            "3f1d2c4e-9a8b-4c7d-8e6f-0123456789ab",
            "3F1D2C4E-9A8B-4C7D-8E6F-0123456789AB",
            "a" * 64,
            "0" * 32,
            "75",
            "2B",
            "974",
            "20",
            "DEQP003",
            "N02BE01",
            cip13(3595583),
            "hospital_outpatient",
            "1 85 05 78 006 084 36",
            "",
        ]
    ),
    st.integers(0, 2**256).map(lambda n: f"{n:064x}"),
    st.integers(0, 2**128).map(lambda n: f"{n:032x}"),
)
_EDGE_INTS = [-1, 0, 1, 2, 3, 999, 1000, 9999, 10000, 1889, 1890, 1899, 1900, 2026, 2099, 2100]
_EDGE_INTS += [MIN_DATE_DAYS - 1, MIN_DATE_DAYS, 2**31 - 1, -(2**31)]
_EDGE_LONGS = [MIN_EVENT_MS - 1, MIN_EVENT_MS, MAX_EVENT_MS - 1, MAX_EVENT_MS]
_INT = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from(_EDGE_INTS))
_LONG = st.one_of(st.integers(-(2**63), 2**63 - 1), _INT, st.sampled_from(_EDGE_LONGS))


def _strategy(kind: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of an Avro type, in the form `schemaless_writer` accepts."""
    if isinstance(kind, list):
        return st.one_of(*(_strategy(branch, named) for branch in kind))
    if isinstance(kind, str) and kind in named:
        return _strategy(named[kind], named)
    if isinstance(kind, dict):
        avro = kind["type"]
        if avro == "enum":
            return st.sampled_from(kind["symbols"])
        if avro == "fixed":
            return st.binary(min_size=kind["size"], max_size=kind["size"])
        if avro == "array":
            return st.lists(_strategy(kind["items"], named), max_size=3)
        if avro == "map":
            return st.dictionaries(_SHAPED_TEXT, _strategy(kind["values"], named), max_size=3)
        if avro == "record":
            return st.fixed_dictionaries(
                {f["name"]: _strategy(f["type"], named) for f in kind["fields"]}
            )
        return _strategy(avro, named)
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": _INT,
        "long": _LONG,
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "string": _SHAPED_TEXT,
        "bytes": st.one_of(st.binary(max_size=30), st.sampled_from(_NIRS).map(str.encode)),
    }[kind]


def _record_strategy(schema: RegisteredSchema) -> st.SearchStrategy[dict[str, Any]]:
    named = schema.plain.get("__named_schemas", {})
    return st.fixed_dictionaries(
        {f["name"]: _strategy(f["type"], named) for f in schema.plain["fields"]}
    )


@FUZZ
@given(data=st.data(), schema=st.sampled_from(SCHEMAS))
def test_any_decodable_record_agrees(data: st.DataObject, schema: RegisteredSchema) -> None:
    record = _round_trip(schema, data.draw(_record_strategy(schema)))
    _same(schema, record)


@st.composite
def _near_good(draw: st.DrawFn, schema: RegisteredSchema) -> dict[str, Any]:
    """A good synthetic record with one to three fields changed to a typed value, often one
    at a rule's edge relative to the record's own event time and birth year."""
    record = dict(draw(st.sampled_from(_POOL[schema.id])))
    fields = {f["name"]: f["type"] for f in schema.plain["fields"]}
    named = schema.plain.get("__named_schemas", {})
    for name in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3)):
        event_ms = record["event_time"]
        birth = record.get("birth_year")
        offset = draw(st.integers(-2, 2))
        edges: list[int] = [MIN_DATE_DAYS + offset]
        if isinstance(event_ms, int) and MIN_EVENT_MS <= event_ms < MAX_EVENT_MS:
            edges += [event_ms // DAY_MS + 1 + offset, _year_of_ms(event_ms) + offset]
        if isinstance(birth, int) and 1890 <= birth <= 2100:
            edges += [
                _year_start_days(birth) + offset,
                _year_start_days(birth) * DAY_MS + offset,
            ]
        if isinstance(record.get("base_amount_cents"), int):
            edges.append(record["base_amount_cents"] + offset)
        typed = _strategy(fields[name], named)
        if _holds_integers(fields[name]):
            # fastavro checks the range of an int only in a union: keep the edges that fit
            fitting = [e for e in edges if _INT_RANGE[0] <= e <= _INT_RANGE[1]]
            typed = st.one_of(
                typed, st.sampled_from(edges if "long" in str(fields[name]) else fitting or [0])
            )
        record[name] = draw(typed)
    return _round_trip(schema, record)


_INT_RANGE = (-(2**31), 2**31 - 1)


def _holds_integers(kind: Any) -> bool:
    if isinstance(kind, list):
        return any(_holds_integers(branch) for branch in kind)
    if isinstance(kind, dict):
        return _holds_integers(kind["type"])
    return kind in ("int", "long")


@FUZZ
@given(data=st.data(), schema=st.sampled_from(SCHEMAS))
def test_near_good_records_agree(data: st.DataObject, schema: RegisteredSchema) -> None:
    _same(schema, data.draw(_near_good(schema)))


_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    _LONG,
    st.floats(allow_nan=False),
    _SHAPED_TEXT,
    _SHAPED_TEXT.map(_Str),
    _LONG.map(_Int),
    st.binary(max_size=20),
    st.sampled_from(_NIRS).map(lambda nir: bytearray(nir.encode())),
    st.datetimes(
        min_value=datetime(1999, 1, 1), max_value=datetime(2101, 1, 1), timezones=st.just(UTC)
    ),
    st.datetimes(min_value=datetime(1999, 1, 1), max_value=datetime(2101, 1, 1)),
    st.dates(min_value=date(1880, 1, 1), max_value=date(2101, 1, 1)),
    st.lists(_SHAPED_TEXT, max_size=2),
    st.dictionaries(_SHAPED_TEXT, _SHAPED_TEXT, max_size=2),
)


@FUZZ
@given(data=st.data(), schema=st.sampled_from(SCHEMAS))
def test_values_of_unexpected_types_agree(data: st.DataObject, schema: RegisteredSchema) -> None:
    record = dict(data.draw(st.sampled_from(_POOL[schema.id])))
    names = [f["name"] for f in schema.plain["fields"]]
    for name in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3)):
        record[name] = data.draw(_ANY_VALUE)
    _same(schema, record)


# --- hand-made schemas: what the registry may hold in production ------------------------------


def _registered(raw: dict[str, Any], schema_id: int) -> RegisteredSchema:
    parsed, plain = parse_schema(raw), parse_schema(_without_logical_types(raw))
    assert isinstance(parsed, dict) and isinstance(plain, dict)
    return RegisteredSchema(
        id=schema_id,
        subject="test.other-value",
        topic="test.other",
        version=1,
        file="other.avsc",
        parsed=parsed,
        plain=plain,
        schema_json=json.dumps(raw),
        fingerprint=str(schema_id),
    )


_UUID = {"type": "string", "logicalType": "uuid"}
_TS = {"type": "long", "logicalType": "timestamp-millis"}
_DATE = {"type": "int", "logicalType": "date"}
_HAND_MADE_RAW: list[dict[str, Any]] = [
    {  # nested, arrays, maps, bytes, fixed, floats, named references, unknown fields
        "type": "record",
        "name": "Everything",
        "namespace": "test",
        "fields": [
            {"name": "event_id", "type": _UUID},
            {"name": "event_time", "type": ["null", _TS]},
            {"name": "note", "type": ["null", "string"]},
            {
                "name": "kind",
                "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]},
            },
            {"name": "kind_again", "type": "Kind"},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {
                "name": "extras",
                "type": {"type": "map", "values": ["null", "string", "long"]},
            },
            {"name": "blob", "type": "bytes"},
            {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 15}},
            {"name": "score", "type": "double"},
            {"name": "ratio", "type": ["null", "float", "int"]},
            {"name": "mixed", "type": ["null", "string", "int"]},
            {
                "name": "person",
                "type": [
                    "null",
                    {
                        "type": "record",
                        "name": "Person",
                        "fields": [
                            {"name": "sex", "type": "string"},
                            {"name": "names", "type": {"type": "array", "items": "string"}},
                            {"name": "kind", "type": "Kind"},
                        ],
                    },
                ],
            },
            {"name": "birth_year", "type": ["null", "int"]},
            {"name": "sex", "type": ["null", "int"]},
            {"name": "care_start_date", "type": ["null", _DATE]},
            {"name": "settlement_date", "type": _DATE},
            {"name": "copay_amount_cents", "type": ["null", "long"]},
            {"name": "reimbursed_amount_cents", "type": ["null", "long"]},
            {"name": "paid_amount_cents", "type": "long"},
            {"name": "flag", "type": "boolean"},
        ],
    },
    {  # dates without event_time, and rule fields of unexpected types
        "type": "record",
        "name": "NoEvent",
        "namespace": "test",
        "fields": [
            {"name": "birth_year", "type": "int"},
            {"name": "dispensing_date", "type": _DATE},
            {"name": "sex", "type": "string"},
            {"name": "quantity", "type": ["null", "int", "string"]},
            {"name": "act_code", "type": ["null", "string", "bytes"]},
            {"name": "reimbursed_amount_cents", "type": "long"},
            {"name": "pharmacy_id", "type": ["null", "string"]},
            {"name": "residence_department", "type": ["null", "string"]},
            {"name": "cip13", "type": ["null", "string"]},
            {"name": "atc_code", "type": ["null", "string"]},
            {"name": "prestation_nature", "type": ["null", "int"]},
            {"name": "event_id", "type": ["null", "string"]},
        ],
    },
    {  # names that are not Python identifiers (fastavro accepts them)
        "type": "record",
        "name": "OddNames",
        "fields": [
            {"name": 'x"\nimport os  # ', "type": "string"},
            {"name": "1 bad-name", "type": ["null", "string"]},
            {"name": "event_time", "type": "long"},
            {"name": "é_amount_cents", "type": "long"},
        ],
    },
    {"type": "record", "name": "One", "fields": [{"name": "only", "type": "string"}]},
    {"type": "record", "name": "Empty", "fields": []},
]
HAND_MADE = [_registered(raw, 1000 + index) for index, raw in enumerate(_HAND_MADE_RAW)]


@FUZZ
@given(data=st.data())
def test_near_good_hand_made_records_agree(data: st.DataObject) -> None:
    _same(HAND_MADE[0], data.draw(_near_good(HAND_MADE[0])))


@FUZZ
@given(data=st.data(), schema=st.sampled_from(HAND_MADE))
def test_hand_made_schemas_agree(data: st.DataObject, schema: RegisteredSchema) -> None:
    record = _round_trip(schema, data.draw(_record_strategy(schema)))
    _same(schema, record)


_EVENT_MS = 1_793_000_000_000  # 2026-10-26T...Z
_EVENT_DAY = _EVENT_MS // DAY_MS
# a good record of HAND_MADE[0] with its optional fields null, and one with them all set
_HAND_GOOD: dict[str, Any] = {
    "event_id": "3f1d2c4e-9a8b-4c7d-8e6f-0123456789ab",
    "event_time": None,
    "note": None,
    "kind": "A",
    "kind_again": "B",
    "tags": ["a", "b"],
    "extras": {"k": 3, "l": None},
    "blob": b"\x00\x01",
    "digest": b"0" * 15,
    "score": 1.5,
    "ratio": None,
    "mixed": 3,
    "person": {"sex": "F", "names": ["Jeanne"], "kind": "A"},
    "birth_year": None,
    "sex": None,
    "care_start_date": None,
    "settlement_date": 0,
    "copay_amount_cents": 0,
    "reimbursed_amount_cents": None,
    "paid_amount_cents": 10,
    "flag": True,
}
_HAND_FULL: dict[str, Any] = {
    **_HAND_GOOD,
    "event_time": _EVENT_MS,
    "note": "rien",
    "ratio": 0.5,
    "birth_year": 1980,
    "sex": 2,
    "care_start_date": _EVENT_DAY - 3,
    "settlement_date": _EVENT_DAY - 1,
    "reimbursed_amount_cents": 10,
}
_POOL[HAND_MADE[0].id] = [_HAND_GOOD, _HAND_FULL]


def test_hand_made_edges() -> None:
    """The rules around event time, birth year and dates when those fields are optional."""
    schema = HAND_MADE[0]
    year = _year_of_ms(_EVENT_MS)
    start_day = _year_start_days(year)
    changes: list[dict[str, Any]] = [
        {"care_start_date": _EVENT_DAY + 1, "settlement_date": _EVENT_DAY + 1},
        {"care_start_date": _EVENT_DAY + 2, "settlement_date": _EVENT_DAY + 2},
        {"settlement_date": _EVENT_DAY + 2},
        {"settlement_date": _EVENT_DAY + 1, "event_time": None},
        {"settlement_date": _EVENT_DAY + 2, "event_time": None},
        {"care_start_date": None, "settlement_date": _EVENT_DAY + 2},
        {"birth_year": year, "care_start_date": start_day, "settlement_date": start_day},
        {"birth_year": year + 1, "care_start_date": None, "settlement_date": start_day},
        {"birth_year": year + 1, "event_time": None},
        {"birth_year": 2099, "event_time": None, "care_start_date": None, "settlement_date": 0},
        {"birth_year": 2099, "event_time": None, "settlement_date": _year_start_days(2099)},
        {"birth_year": 2100, "event_time": None, "settlement_date": _year_start_days(2100)},
        {"birth_year": 1990, "care_start_date": _year_start_days(1990) - 1},
        {"birth_year": None, "care_start_date": MIN_DATE_DAYS - 1},
        {"birth_year": None, "care_start_date": MIN_DATE_DAYS, "settlement_date": MIN_DATE_DAYS},
        {"settlement_date": _EVENT_DAY - 4},
        {"reimbursed_amount_cents": 11},
        {"reimbursed_amount_cents": 10, "paid_amount_cents": 10},
        {"copay_amount_cents": -1},
        {"copay_amount_cents": None},
        {"sex": 0},
        {"sex": None},
    ]
    verdicts = set()
    for base in (_HAND_GOOD, _HAND_FULL):
        for change in changes:
            record = _round_trip(schema, {**base, **change})
            verdict = _same(schema, record)
            verdicts.add(None if verdict is None else verdict.field)
    assert {None, "settlement_date", "birth_year", "care_start_date"} <= verdicts


def test_nested_identifiers_are_found_with_their_path() -> None:
    schema = HAND_MADE[0]
    good = _HAND_GOOD
    assert _same(schema, _round_trip(schema, good)) is None
    assert _same(schema, _round_trip(schema, _HAND_FULL)) is None
    nir = _NIRS[0]
    cases: dict[str, dict[str, Any]] = {
        "tags[1]": {"tags": ["a", f"x {nir}"]},
        "extras{0}:key": {"extras": {nir: None}},
        "person{1}[0]": {"person": {"sex": "F", "names": [nir], "kind": "A"}},
        "digest": {"digest": nir.replace(" ", "").encode()},
        "mixed": {"mixed": nir},
    }
    for path, change in cases.items():
        violation = _same(schema, _round_trip(schema, {**good, **change}))
        assert violation is not None and violation.field == path
    violation = _same(schema, _round_trip(schema, {**good, "copay_amount_cents": -1}))
    assert violation == Violation("invalid_value", "copay_amount_cents", "negative amount")


_KNOWN_NAMES = {
    *("check", "record", "lowest", "latest", "isascii", "encode", "translate"),
    *dir(builtins),
    *keyword.kwlist,
}


def test_generated_code_holds_no_text_from_the_schema() -> None:
    """Only fixed names, v<i> for values, namespace constants (_X) and numbers: no string
    literal, and a field name only in a comment, only when it is a plain identifier."""
    for schema in [*SCHEMAS, *HAND_MADE]:
        source = checker_source(schema)
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.NAME:
                assert re.fullmatch(r"v[0-9]+|_[A-Za-z0-9_]+", token.string) or (
                    token.string in _KNOWN_NAMES
                ), token.string
            elif token.type == tokenize.COMMENT:
                assert re.fullmatch(r"# ([A-Za-z_][A-Za-z0-9_]*|field [0-9]+)", token.string)
            else:
                assert token.type != tokenize.STRING
    odd = checker_source(HAND_MADE[2])
    assert "import os" not in odd and "bad-name" not in odd and "# field 1" in odd


def test_edge_cases_without_event_time_and_with_wrong_rule_types() -> None:
    schema = HAND_MADE[1]
    record = {
        "birth_year": 2099,
        "dispensing_date": _year_start_days(2099),
        "sex": "1",
        "quantity": None,
        "act_code": None,
        "reimbursed_amount_cents": 5,
        "pharmacy_id": None,
        "residence_department": None,
        "cip13": None,
        "atc_code": None,
        "prestation_nature": None,
        "event_id": None,
    }
    assert _same(schema, record) is not None  # sex "1" is not 1 or 2
    record["sex"] = "x" * 20
    _same(schema, record)
    del record["sex"]
    assert _same(schema, record) is None  # a missing field: the reference decides
    for year, day in ((2099, 0), (2099, -1), (2100, 0), (1890, 0)):
        _same(schema, {**record, "sex": "", "birth_year": year, "dispensing_date": day})
    base = {**record, "sex": ""}
    for change in ({"quantity": "1"}, {"quantity": 0}, {"act_code": b"DEQP003"}):
        _same(schema, {**base, **change})
    future = datetime(2099, 1, 1, tzinfo=UTC) + timedelta(days=1)
    _same(schema, {**base, "dispensing_date": future.date()})


def test_a_name_used_twice_always_goes_to_the_reference() -> None:
    raw = {
        "type": "record",
        "name": "Twice",
        "fields": [{"name": "a", "type": "string"}, {"name": "a", "type": "int"}],
    }
    schema = _registered(raw, 2000)
    assert "_values" not in checker_source(schema)
    for record in ({"a": _NIRS[0]}, {"a": 1}, {"a": "x", "quantity": 0}, {}):
        _same(schema, record)


@FUZZ
@given(data=st.data(), schema=st.sampled_from(SCHEMAS), case=nir_in_text())
def test_a_nir_in_any_spelling_in_any_string_field_is_refused_alike(
    data: st.DataObject, schema: RegisteredSchema, case: tuple[str, str, int]
) -> None:
    """P10: a valid NIR in a random spelling at a random place of a random string, in any
    string field of a decoded record: the compiled checker and the specification both
    refuse it as a direct identifier."""
    record = _good(schema)
    fields = [name for name, value in record.items() if isinstance(value, str)]
    field = data.draw(st.sampled_from(fields))
    verdict = _same(schema, {**record, field: case[0]})
    assert verdict is not None and verdict.reason == "direct_identifier"
    assert verdict.field == field


# --- a tripwire: the fast path mirrors the rules as they are written today -------------------

_REFERENCE_FINGERPRINT = "5eed783e4ba9d401719bed24eaaf5ffaa8f0f0c2d586be0f868ec37f9b0b8dab"


def test_the_reference_rules_are_those_the_fast_path_mirrors() -> None:
    """The generated fast path restates the rules of `judge/rules.py` (a stricter or new rule
    there would not be seen by it), and so does the compiled extension (`_fastcheck.c`,
    programs from `judge/native.py`). When this fails, a rule's code changed: bring
    `judge/compiled.py`, `_fastcheck.c`, `judge/native.py` and their tests in line with
    it, then update the fingerprint."""
    functions = (
        validation.check_record,
        validation.find_direct_identifier,
        validation._scan_value,
        validation._find_nir_fast,
        validation.find_nir,
        validation.find_nir_in_bytes,
        validation.find_identifier_in_message,
        validation._exempt,
        validation._run,
        validation.nir_key_is_valid,
        validation.find_invalid_value,
        validation._days,
        validation._millis,
        validation._int,
        validation._amount_fields,
        validation._year_of_ms,
        validation.ean13_is_valid,
    )
    patterns = (
        validation._NIR_RE,
        validation._HEX_RUN_RE,
        validation._HEX_ID_RE,
        validation._UUID_RE,
        validation._LOWER_HEX,
        validation._DEPARTMENT_RE,
        validation._CCAM_RE,
        validation._ATC_RE,
        validation._CIP13_RE,
    )
    constants = (
        validation._NIR_MIN_LENGTH,
        validation._HASH_MIN_LENGTH,
        sorted(validation.SEPARATOR_CHARS),
        validation._HEX_FIELDS,
        validation._DATE_FIELDS,
        validation._AMOUNT_SUFFIX,
        validation.MIN_EVENT_MS,
        validation.MAX_EVENT_MS,
        validation.MIN_DATE_DAYS,
        validation.MIN_BIRTH_YEAR,
        validation._FIRST_YEAR,
        validation._LAST_YEAR,
    )
    text = "\n".join(
        [inspect.getsource(function) for function in functions]
        + [pattern.pattern for pattern in patterns]
        + [repr(constants)]
    )
    assert hashlib.sha256(text.encode()).hexdigest() == _REFERENCE_FINGERPRINT
