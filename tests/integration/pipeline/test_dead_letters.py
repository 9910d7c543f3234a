"""Bad input never blocks (P6): every bad record reaches the dead-letter topic with its reason
and origin, none reaches a store, and the good records around it all arrive; no record of
any size holds the commits."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.cimpl import NewTopic

from replicator.config import Settings
from replicator.devtools.stack import DEMO_TOPICS, LocalStack
from replicator.devtools.synthetic import BAD_KINDS, EXPECTED_REASON, SyntheticSource
from replicator.kafka.deadletter import (
    H_DETAIL,
    H_FIRST_REASON,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TOPIC,
    H_VALUE_SHA256,
    H_VALUE_SIZE,
    DeadLetterWriter,
)
from replicator.schemas import REIMBURSEMENTS_TOPIC, SchemaRegistry, encode_wire
from tests.integration.pipeline.test_replication import PARTITIONS, assert_replicated, groups
from tests.support.checker import (
    azure_objects,
    compare,
    decode_objects,
    md5s,
    read_topic,
    s3_objects,
)
from tests.support.nirs import random_spelling
from tests.support.produce import Produced, produce_records
from tests.support.service import Service, wait_committed

pytestmark = pytest.mark.integration


def test_each_kind_of_bad_record_lands_in_the_dead_letter_topic_with_its_reason(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    produced = produce_records(
        settings, count=2000, bad_share=0.1, seed=5, bad_kinds=list(BAD_KINDS)
    )
    assert set(produced.bad_kinds.values()) == set(BAD_KINDS), (
        "the workload must hold every bad kind"
    )
    service = Service(settings, tmp_path).start()
    try:
        wait_committed(settings.kafka_bootstrap, groups(settings), produced.ends, 120, [service])
    finally:
        assert service.stop() == 0

    dead = read_topic(settings.kafka_bootstrap, settings.dead_letter_topic, PARTITIONS)
    by_origin: dict[tuple[tuple[str, int], int], dict[str, bytes]] = {}
    for records in dead.values():
        for r in records:
            origin = (
                (r.headers["dlq.origin.topic"].decode(), int(r.headers["dlq.origin.partition"])),
                int(r.headers["dlq.origin.offset"]),
            )
            assert origin not in by_origin, f"dead-lettered twice: {origin}"
            by_origin[origin] = r.headers
    assert set(by_origin) == produced.bad
    for origin, headers in by_origin.items():
        kind = produced.bad_kinds[origin]
        expected = {str(k): reason for k, reason in EXPECTED_REASON.items()}[kind]
        assert headers["dlq.reason"].decode() == expected, (origin, kind, headers)
        assert headers["dlq.detail"], origin
    # The original bytes are kept, for forensics and a later fix-and-replay.
    originals = {}
    for topic in settings.topics:
        for tp, records in read_topic(settings.kafka_bootstrap, topic, PARTITIONS).items():
            originals.update({(tp, r.offset): r.value for r in records})
    for records in dead.values():
        for r in records:
            origin = (
                (r.headers["dlq.origin.topic"].decode(), int(r.headers["dlq.origin.partition"])),
                int(r.headers["dlq.origin.offset"]),
            )
            assert r.value == originals[origin]
    # No NIR, no bad record in any store; every good record is there.
    assert_replicated(settings, stack.env(), produced)
    log = service.log_text()
    assert log.count('"dead_lettered"') == len(produced.bad)


# ---------------------------------------------------------------------------- sizes
# The limits, each with records just over it (value sizes, in bytes):
PRODUCER_DEFAULT = 1_000_000  # librdkafka's message.max.bytes when nobody sets it
TOPIC_LIMIT = 2_000_000  # the dead-letter topic's max.message.bytes, set at its creation
MAX_RECORD = 3_000_000  # the service's max_record_bytes

# Tansu 0.6.0 (the local broker) keeps a topic's max.message.bytes given at creation and
# answers it to DescribeConfigs (a topic created without it answers no entry at all, and
# the broker resource answers no message.max.bytes), but it applies no limit itself: it
# accepts a 5 MB record into a topic created with max.message.bytes=2000000. So here the
# limit is applied by the service's own producer, set from the topic's answer; a broker's
# refusal (in a delivery report) is shown with a stand-in producer in
# tests/unit/kafka/test_dead_letter_limits.py.


@dataclass(frozen=True)
class Case:
    size: int  # the value's length
    good: bool  # a valid record (else bytes that are not the wire format)
    stored: bool  # expected in both stores (else dead-lettered)
    reason: str = ""  # the dead letter's dlq.reason
    first_reason: str = ""  # its dlq.original.reason when its value is left out
    with_value: bool = True  # the dead letter carries the original value


CASES = [
    # just over the producer's default: a good one is stored, a bad one keeps its value
    Case(PRODUCER_DEFAULT + 1, good=True, stored=True),
    Case(PRODUCER_DEFAULT + 1, good=False, stored=False, reason="not_wire_format"),
    # the topic limit: a value under it whose record with headers is over it, and just over
    Case(TOPIC_LIMIT - 100, good=False, stored=False, reason="oversized",
         first_reason="not_wire_format", with_value=False),
    Case(TOPIC_LIMIT + 1, good=False, stored=False, reason="oversized",
         first_reason="not_wire_format", with_value=False),
    Case(TOPIC_LIMIT + 1, good=True, stored=True),
    # max_record_bytes: at it a good record is stored, just over it it is dead-lettered
    Case(MAX_RECORD, good=True, stored=True),
    Case(MAX_RECORD + 1, good=True, stored=False, reason="oversized",
         first_reason="oversized", with_value=False),
]  # fmt: skip


def _good_of_size(source: SyntheticSource, registry: SchemaRegistry, size: int) -> bytes:
    """A valid reimbursement (schema v2) whose wire-format value is exactly `size` bytes:
    its free-text `care_setting` padded (letters only: no NIR can appear)."""
    schema = next(s for s in registry.versions_for_topic(DEMO_TOPICS[0]) if s.version == 2)
    _key, record, _schema = source.next(DEMO_TOPICS[0])
    pad = 0
    for _ in range(5):
        value = encode_wire(schema, {**record, "care_setting": "x" * pad})
        if len(value) == size:
            return value
        pad += size - len(value)
    raise AssertionError(f"no record of {size} bytes")


def _create_limited_topic(stack: LocalStack, name: str) -> None:
    futures = stack.admin.create_topics(
        [NewTopic(name, PARTITIONS, 1, config={"max.message.bytes": str(TOPIC_LIMIT)})]
    )
    futures[name].result(timeout=30)


def test_records_just_over_each_limit_are_stored_or_dead_lettered_and_commits_move_on(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """The class of records at each size limit, on every partition among good records:
    every good one in both stores, every bad one in the dead-letter topic with its reason
    (without its value when the topic cannot take it), and each store's progress committed
    to the end of every partition."""
    base = settings_factory()
    dead_letter_topic = base.dead_letter_topic + ".limited"
    _create_limited_topic(stack, dead_letter_topic)
    settings = settings_factory(dead_letter_topic=dead_letter_topic, max_record_bytes=MAX_RECORD)
    topic = settings.topics[0]  # its schemas are the reimbursements'
    registry = SchemaRegistry.load(settings.schemas_dir)
    source = SyntheticSource(11, registry, start_time=datetime.now(UTC), mean_gap_ms=1.0)
    producer = Producer(
        {
            **settings.kafka_common(),
            "message.max.bytes": 10_000_000,
            "enable.idempotence": True,
            "linger.ms": 0,
            "batch.num.messages": 1,  # one record a batch: Tansu's high watermark is right
        }
    )
    produced = Produced()
    sent: dict[tuple[tuple[str, int], int], tuple[Case, bytes, bytes]] = {}
    errors: list[str] = []

    def produce(partition: int, key: bytes, value: bytes, case: Case | None) -> None:
        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
                return
            tp, offset = (msg.topic(), msg.partition()), msg.offset()
            produced.total += 1
            produced.ends[tp] = max(produced.ends.get(tp, 0), offset + 1)
            if case is not None:
                sent[(tp, offset)] = (case, key, value)
                if not case.stored:
                    produced.bad.add((tp, offset))

        producer.produce(topic, value=value, key=key, partition=partition, on_delivery=delivered)
        producer.flush(30)  # in order, one at a time: the offsets follow the table

    # Every partition gets the whole table, rotated, each case between good records.
    for partition in range(PARTITIONS):
        rotated = CASES[partition:] + CASES[:partition]
        for case in rotated:
            for _ in range(5):
                key, value, _schema = source.next_wire(DEMO_TOPICS[0])
                produce(partition, key, value, None)
            key = f"big-{partition}-{case.size}".encode()
            value = _good_of_size(source, registry, case.size) if case.good else b"\xff" * case.size
            assert len(value) == case.size
            produce(partition, key, value, case)
        key, value, _schema = source.next_wire(DEMO_TOPICS[0])
        produce(partition, key, value, None)
    assert not errors, errors[:3]
    assert len(sent) == len(CASES) * PARTITIONS

    service = Service(settings, tmp_path).start()
    try:
        # Every store's progress reaches the end of every partition: no record held it.
        wait_committed(settings.kafka_bootstrap, groups(settings), produced.ends, 180, [service])
    finally:
        assert service.stop() == 0
    log = service.log_text()
    assert '"dead_letter_limit"' in log and f'"max_message_bytes": {TOPIC_LIMIT}' in log, log[:3000]

    # Every good record in both stores, no bad one (the independent checker).
    assert_replicated(settings, stack.env(), produced)

    # Every bad one in the dead-letter topic once, as its case says.
    dead = read_topic(settings.kafka_bootstrap, dead_letter_topic, PARTITIONS)
    by_origin: dict[tuple[tuple[str, int], int], Any] = {}
    for records in dead.values():
        for r in records:
            h = r.headers
            origin = ((h[H_TOPIC].decode(), int(h[H_PARTITION])), int(h[H_OFFSET]))
            assert origin not in by_origin, f"dead-lettered twice: {origin}"
            by_origin[origin] = r
    assert set(by_origin) == produced.bad
    for origin, r in by_origin.items():
        case, key, value = sent[origin]
        h = r.headers
        assert h[H_REASON].decode() == case.reason, (case, h)
        assert r.key == key, case
        if case.with_value:
            assert r.value == value, case
            assert H_VALUE_SIZE not in h, case
        else:
            assert r.value is None, case
            assert h[H_FIRST_REASON].decode() == case.first_reason, (case, h)
            assert h[H_VALUE_SIZE] == str(case.size).encode(), case
            assert h[H_VALUE_SHA256] == hashlib.sha256(value).hexdigest().encode(), case
            assert f"value of {case.size} bytes left out".encode() in h[H_DETAIL], h[H_DETAIL]
    dropped = sum(1 for case, _k, _v in sent.values() if not case.stored and not case.with_value)
    assert log.count('"dead_letter_value_dropped"') == dropped
    assert '"dead_letter_not_acknowledged"' not in log


def test_a_dead_letter_the_producer_refuses_goes_without_its_value(
    stack: Any, settings_factory: Callable[..., Settings]
) -> None:
    """A producer refusing a record the limit let through (as a broker announcing more than
    it takes would) at produce(): the record goes without its value, the others as they are."""
    settings = settings_factory()
    writer = DeadLetterWriter(
        {**settings.kafka_common(), "message.max.bytes": PRODUCER_DEFAULT},
        settings.dead_letter_topic,
        max_message_bytes=10_000_000,
    )
    values = {0: b"small", 1: b"\xff" * (PRODUCER_DEFAULT + 1), 2: b"small too"}
    for offset, value in values.items():
        writer.send(
            topic="src",
            partition=0,
            offset=offset,
            timestamp_ms=0,
            key=b"k",
            value=value,
            reason="undecodable",
            detail="d",
        )
    writer.flush(timeout=30)
    writer.close()
    dead = read_topic(settings.kafka_bootstrap, settings.dead_letter_topic, PARTITIONS)
    got = {int(r.headers[H_OFFSET]): r for records in dead.values() for r in records}
    assert sorted(got) == [0, 1, 2]
    assert got[0].value == values[0] and got[2].value == values[2]
    assert got[1].value is None and got[1].key == b"k"
    assert got[1].headers[H_REASON] == b"oversized"
    assert got[1].headers[H_VALUE_SIZE] == str(PRODUCER_DEFAULT + 1).encode()
    assert b"MSG_SIZE_TOO_LARGE" in got[1].headers[H_DETAIL]


def test_a_nir_in_the_key_a_header_or_a_field_in_any_spelling_is_dead_lettered(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """P10 through the running service: records with a valid NIR in a random spelling in
    the message key, in a header value or name, or in a free-text field, among good records
    keyed and headed like production ones (64-hex keys, traceparent headers), reach the
    dead-letter topic once with reason `direct_identifier` and a detail naming the place by
    position; every good record reaches both stores; no NIR reaches the service's log."""
    settings = settings_factory(chunk_max_records=40)
    registry = SchemaRegistry.load(settings.schemas_dir)
    source = SyntheticSource(77, registry, v2_share=1.0)
    rng = random.Random(77)
    topic_of = {schema_topic: t for t, schema_topic in settings.schema_topics.items()}
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
    delivered: dict[int, tuple[tuple[str, int], int]] = {}
    errors: list[str] = []

    def on_delivery(seq: int) -> Callable[[Any, Any], None]:
        def done(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                delivered[seq] = ((msg.topic(), msg.partition()), msg.offset())

        return done

    places = ("key", "header", "header name", "field")
    expected_place: dict[int, str] = {}  # seq of a bad record -> what its detail names
    nirs: list[str] = []
    for seq in range(400):
        key, record, schema = source.next(REIMBURSEMENTS_TOPIC)
        trace = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01".encode()
        headers: list[tuple[str, str | bytes | None]] = [("traceparent", trace)]
        if seq % 10 == 5:
            nir = random_spelling(rng)
            nirs.append(nir)
            glue = rng.choice(["", "NIR", "x", " ", "id:", "é"])
            text = f"{glue}{nir}{rng.choice(['', '.', ' ok', 'y'])}"
            place = places[seq // 10 % len(places)]
            if place == "key":
                key, expected_place[seq] = text.encode(), "of the message key"
            elif place == "header":
                headers.append(("ref", text.encode()))
                expected_place[seq] = "of the value of header 1"
            elif place == "header name":
                headers.append((text, b"1"))
                expected_place[seq] = "of the name of header 1"
            else:
                record = {**record, "care_setting": text}
                expected_place[seq] = "-character value"
        producer.produce(
            topic_of[REIMBURSEMENTS_TOPIC],
            value=encode_wire(schema, record),
            key=key,
            partition=seq % PARTITIONS,
            headers=headers,
            on_delivery=on_delivery(seq),
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors[:3]
    assert len(delivered) == 400
    bad = {delivered[seq]: place for seq, place in expected_place.items()}
    ends: dict[tuple[str, int], int] = {}
    for tp, offset in delivered.values():
        ends[tp] = max(ends.get(tp, 0), offset + 1)

    service = Service(settings, tmp_path).start()
    try:
        wait_committed(settings.kafka_bootstrap, groups(settings), ends, 120, [service])
    finally:
        assert service.stop() == 0

    dead = read_topic(settings.kafka_bootstrap, settings.dead_letter_topic, PARTITIONS)
    seen: dict[tuple[tuple[str, int], int], dict[str, bytes]] = {}
    for records in dead.values():
        for r in records:
            origin = (
                (r.headers["dlq.origin.topic"].decode(), int(r.headers["dlq.origin.partition"])),
                int(r.headers["dlq.origin.offset"]),
            )
            assert origin not in seen, f"dead-lettered twice: {origin}"
            seen[origin] = r.headers
    assert set(seen) == set(bad)
    for origin, place in bad.items():
        assert seen[origin]["dlq.reason"] == b"direct_identifier", origin
        detail = seen[origin]["dlq.detail"].decode()
        assert place in detail, (origin, detail)
    kafka: dict[tuple[str, int], Any] = {}
    for topic in settings.topics:
        kafka.update(read_topic(settings.kafka_bootstrap, topic, PARTITIONS))
    env = stack.env()
    assert settings.s3_bucket is not None and settings.azure_container is not None
    s3 = s3_objects(env, settings.s3_bucket)
    az = azure_objects(env, settings.azure_container)
    assert md5s(s3) == md5s(az)
    verdict = compare(kafka, decode_objects(s3), set(bad))
    assert verdict.lost == [] and verdict.doubled == [] and verdict.altered == []
    assert verdict.unexpected == [], verdict.unexpected[:5]
    log = service.log_text()
    for nir in nirs:
        assert nir not in log and "".join(c for c in nir if c.isalnum()) not in log
