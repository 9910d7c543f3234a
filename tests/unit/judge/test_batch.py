"""The batch judge: `judge_items` takes a fast path for well-formed values, and its verdicts
are exactly those of `judge` (decode_wire, then check_record), record by record, whatever
the input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from replicator.config import DEFAULT_SCHEMAS_DIR
from replicator.devtools.synthetic import BAD_KINDS, EXPECTED_REASON, SyntheticSource
from replicator.judge.batch import GOOD, Item, Verdict, judge, judge_items
from replicator.judge.rules import Headers
from replicator.schemas import HEADER_SIZE, REIMBURSEMENTS_TOPIC, SchemaRegistry, encode_wire
from tests.support.nirs import nir_in_text

REGISTRY = SchemaRegistry.load(DEFAULT_SCHEMAS_DIR)
MAX_BYTES = 1 << 20


def _one_by_one(items: list[Item], max_bytes: int) -> list[Verdict]:
    return [
        judge(REGISTRY, topic, value, max_bytes, key, headers)
        for topic, value, _o, _t, key, headers in items
    ]


def _workload(seed: int, count: int) -> tuple[list[Item], list[str]]:
    """Good records of both topics, one in ten bad (every kind in turn), and the reason
    each bad one must get ("" for a good one)."""
    source = SyntheticSource(seed, REGISTRY)
    topics = REGISTRY.topics()
    items: list[Item] = []
    expected: list[str] = []
    for i in range(count):
        topic = topics[i % len(topics)]
        if i % 10 == 0:
            kind = BAD_KINDS[(i // 10) % len(BAD_KINDS)]
            key, value = source.bad_message(kind, topic)
            expected.append(EXPECTED_REASON[kind])
        else:
            key, value, _schema = source.next_wire(topic)
            expected.append(GOOD)
        items.append(
            (topic, value, 1000 + i, 1_700_000_000_000 + 7 * i, key if i % 4 else None, None)
        )
    return items, expected


def test_every_verdict_is_the_one_record_by_record_judging_gives() -> None:
    items, expected = _workload(seed=11, count=3000)
    verdicts = judge_items(REGISTRY, items, MAX_BYTES)
    assert verdicts == _one_by_one(items, MAX_BYTES)
    assert [v[1] for v in verdicts] == expected
    assert sum(v[0] is not None for v in verdicts) == expected.count(GOOD) == 2700


def test_edge_values_take_the_slow_path_and_get_its_reasons() -> None:
    topic = REGISTRY.topics()[0]
    source = SyntheticSource(5, REGISTRY)
    _key, value, schema = source.next_wire(topic)
    other_topic = next(t for t in REGISTRY.topics() if t != topic)
    items: list[Item] = [
        (topic, None, 0, 0, None, None),  # tombstone
        (topic, b"", 1, 0, None, None),
        (topic, value[:HEADER_SIZE], 2, 0, None, None),  # header only
        (topic, value + b"\x00", 3, 0, None, None),  # a byte left over
        (topic, b"\x01" + value[1:], 4, 0, None, None),  # not magic 0
        (other_topic, value, 5, 0, None, None),  # the schema of another topic
        (topic, value, 6, -1, b"", None),  # good: no timestamp, empty key
    ]
    verdicts = judge_items(REGISTRY, items, MAX_BYTES)
    assert verdicts == _one_by_one(items, MAX_BYTES)
    assert [v[1] for v in verdicts] == [
        "not_wire_format",
        "not_wire_format",
        "undecodable",
        "undecodable",
        "not_wire_format",
        "wrong_topic_schema",
        GOOD,
    ]
    assert verdicts[-1][0] == schema.id
    # a limit below the value's size: oversized, on both paths
    small = judge_items(REGISTRY, items[-1:], len(value) - 1)
    assert small == _one_by_one(items[-1:], len(value) - 1)
    assert small[0][1] == "oversized"


@settings(max_examples=300, deadline=None)
@given(case=nir_in_text(), where=st.sampled_from(["key", "header", "header name", "value"]))
def test_a_nir_in_the_key_a_header_or_a_value_is_refused_on_every_path(
    case: tuple[str, str, int], where: str
) -> None:
    """P10: a valid NIR in a random spelling at a random place of the key, of a header (name
    or value) or of a free-text field goes to the dead letters as `direct_identifier`,
    whether the extension, the compiled checks or `judge` decides; good neighbours pass."""
    text, nir, _start = case
    topic = REIMBURSEMENTS_TOPIC  # care_setting is free text
    source = SyntheticSource(31, REGISTRY, v2_share=1.0)
    items: list[Item] = []
    for index in range(3):
        key, value, schema = source.next_wire(topic)
        headers: Headers | None = [("traceparent", b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01")]
        if index == 1:
            if where == "key":
                key = text.encode()
            elif where == "header":
                headers = [("a", b"1"), ("b", text.encode())]
            elif where == "header name":
                headers = [(text, None)]
            else:
                _k, record, schema = source.next(topic)
                value = encode_wire(schema, {**record, "care_setting": text})
        items.append((topic, value, index, 1_700_000_000_000, key, headers))
    verdicts = judge_items(REGISTRY, items, MAX_BYTES)
    assert verdicts == _one_by_one(items, MAX_BYTES)
    assert [v[1] for v in verdicts] == [GOOD, "direct_identifier", GOOD]
    detail = verdicts[1][2]
    assert nir not in detail and "".join(c for c in nir if c.isalnum()) not in detail
    expected_place = {"key": "message key", "header": "header 1", "header name": "name of header 0"}
    assert expected_place.get(where, "characters") in detail
