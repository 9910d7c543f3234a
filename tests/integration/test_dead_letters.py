"""Bad input never blocks (P6): every bad record reaches the dead-letter topic with its reason
and origin, none reaches a store, and the good records around it all arrive."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from replicator.config import Settings
from replicator.schemas import REIMBURSEMENTS_TOPIC, SchemaRegistry, encode_wire
from replicator.synthetic import BAD_KINDS, EXPECTED_REASON, SyntheticSource
from tests.integration.test_replication import PARTITIONS, assert_replicated, groups
from tests.support.checker import (
    azure_objects,
    compare,
    decode_objects,
    md5s,
    read_topic,
    s3_objects,
)
from tests.support.nirs import random_spelling
from tests.support.produce import produce_records
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
