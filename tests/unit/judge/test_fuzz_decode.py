"""Fuzzing with hypothesis: decode_wire only ever raises DecodeError, valid records round-trip,
and NIR detection never crashes (and its fast path agrees with the plain one).

Bounded: the whole file runs in a few seconds.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicator.config import DEFAULT_SCHEMAS_DIR
from replicator.devtools.synthetic import SyntheticSource, random_nir
from replicator.judge.rules import (
    _find_nir_fast,
    check_record,
    find_direct_identifier,
    find_nir,
)
from replicator.schemas import DecodeError, SchemaRegistry, decode_wire, encode_wire

REGISTRY = SchemaRegistry.load(DEFAULT_SCHEMAS_DIR)
TOPICS = REGISTRY.topics()
FUZZ = settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_source = SyntheticSource(77, REGISTRY, v2_share=0.5)
VALID_VALUES = [_source.next_wire(TOPICS[i % len(TOPICS)])[1] for i in range(40)]


def _decode_or_reason(topic: str, value: bytes) -> None:
    try:
        decoded = decode_wire(REGISTRY, topic, value, max_bytes=2048)
    except DecodeError as exc:
        assert exc.reason in (
            "not_wire_format",
            "unknown_schema_id",
            "wrong_topic_schema",
            "undecodable",
            "oversized",
        )
        return
    assert decoded.body == value[5:]
    violation = check_record(topic, decoded.record)  # never crashes on what decodes
    assert violation is None or violation.reason in ("direct_identifier", "invalid_value")


@FUZZ
@given(value=st.binary(max_size=3000), topic=st.sampled_from(TOPICS))
def test_random_bytes_only_raise_decode_error(value: bytes, topic: str) -> None:
    _decode_or_reason(topic, value)


@FUZZ
@given(
    schema_id=st.sampled_from([*REGISTRY.ids(), 0, 99]),
    body=st.binary(max_size=400),
    topic=st.sampled_from(TOPICS),
)
def test_wire_header_with_random_body(schema_id: int, body: bytes, topic: str) -> None:
    _decode_or_reason(topic, b"\x00" + schema_id.to_bytes(4, "big") + body)


@st.composite
def _mutated_valid(draw: st.DrawFn) -> bytes:
    value = bytearray(draw(st.sampled_from(VALID_VALUES)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(5, len(value) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if action == "flip":
            value[position] = draw(st.integers(0, 255))
        elif action == "insert":
            value[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del value[position : position + draw(st.integers(1, 8))]
        else:
            del value[position:]
        if len(value) <= 6:
            break
    return bytes(value)


@FUZZ
@given(value=_mutated_valid(), topic=st.sampled_from(TOPICS))
def test_mutated_valid_values_only_raise_decode_error(value: bytes, topic: str) -> None:
    _decode_or_reason(topic, value)


# --- valid records round-trip --------------------------------------------------------------

_INT = st.integers(-(2**31), 2**31 - 1)
_LONG = st.integers(-(2**63), 2**63 - 1)
_TEXT = st.text(max_size=40)


def _strategy(kind: Any) -> st.SearchStrategy[Any]:
    if isinstance(kind, list):
        return st.one_of(*(_strategy(branch) for branch in kind))
    if isinstance(kind, dict):
        if kind["type"] == "enum":
            return st.sampled_from(kind["symbols"])
        return _strategy(kind["type"])
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": _INT,
        "long": _LONG,
        "string": _TEXT,
    }[kind]


def _record_strategy(schema_id: int) -> st.SearchStrategy[dict[str, Any]]:
    fields = REGISTRY.get(schema_id).plain["fields"]
    return st.fixed_dictionaries({f["name"]: _strategy(f["type"]) for f in fields})


@FUZZ
@given(data=st.data(), schema_id=st.sampled_from(REGISTRY.ids()))
def test_any_valid_record_round_trips(data: st.DataObject, schema_id: int) -> None:
    schema = REGISTRY.get(schema_id)
    record = data.draw(_record_strategy(schema_id))
    value = encode_wire(schema, record)
    decoded = decode_wire(REGISTRY, schema.topic, value)
    assert decoded.record == record
    assert decoded.schema.id == schema_id
    violation = check_record(schema.topic, record)
    assert violation is None or violation.reason in ("direct_identifier", "invalid_value")


# --- NIR detection on arbitrary text --------------------------------------------------------

_NIR_ALPHABET = st.sampled_from(list("0123456789 2ABab_-.x\u00a0\u202fé\n"))
_NIR_LIKE = st.text(alphabet=_NIR_ALPHABET, max_size=60)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), _NIR_LIKE))
def test_find_nir_never_crashes_and_the_fast_path_agrees(text: str) -> None:
    match = find_nir(text)
    assert _find_nir_fast(text) == match
    if match is not None:
        assert 15 <= match.end - match.start <= 21
        assert find_direct_identifier({"note": text}) is not None


@FUZZ
@given(
    before=st.text(max_size=30),
    after=st.text(max_size=30),
    seed=st.integers(0, 2**32),
    sep=st.sampled_from([" ", "\n", ";", "_", "(", "-"]),
)
def test_a_nir_standing_alone_is_always_found(before: str, after: str, seed: int, sep: str) -> None:

    nir = random_nir(random.Random(seed))
    text = before + sep + nir + sep + after
    assert find_nir(text) is not None
    assert find_direct_identifier({"note": text}) is not None
