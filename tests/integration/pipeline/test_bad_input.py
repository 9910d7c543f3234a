"""The bad-input corpus (tests/corpus/cases.py) through the running service (P6): each bad
record reaches the dead-letter topic once with an expected reason and its origin, none reaches
a store, every good record around it (and every near-miss) arrives in both stores, and no NIR
of the corpus appears in the service's log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from replicator.config import Settings
from replicator.devtools.synthetic import SyntheticSource
from replicator.model import TP
from replicator.schemas import SchemaRegistry
from tests.corpus.cases import NEAR_MISSES, VALID_NIRS, Case, cases
from tests.support.checker import (
    azure_objects,
    compare,
    decode_objects,
    md5s,
    read_topic,
    s3_objects,
)
from tests.support.service import Service, wait_committed

pytestmark = pytest.mark.integration

PARTITIONS = 3
MAX_BYTES = 4096
AROUND = 3  # good records before and after each case


def test_the_corpus_reaches_the_dead_letter_topic_and_nothing_else_is_lost(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(max_record_bytes=MAX_BYTES, chunk_max_records=50)
    corpus = cases(MAX_BYTES)
    registry = SchemaRegistry.load(settings.schemas_dir)
    source = SyntheticSource(99, registry, v2_share=0.5)
    topic_of = {registry_topic: t for t, registry_topic in settings.schema_topics.items()}
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
    delivered: dict[int, tuple[TP, int]] = {}
    errors: list[str] = []

    def on_delivery(seq: int) -> Callable[[Any, Any], None]:
        def done(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                delivered[seq] = ((msg.topic(), msg.partition()), msg.offset())

        return done

    seq = 0
    meaning: dict[int, Case | None] = {}  # seq -> the case, or None for a good neighbour
    for i, case in enumerate(corpus):
        topic = topic_of[case.topic]
        partition = i % PARTITIONS
        for j in range(2 * AROUND + 1):
            if j == AROUND:
                producer.produce(
                    topic,
                    value=case.value,
                    key=case.key,
                    partition=partition,
                    headers=list(case.headers) or None,
                    on_delivery=on_delivery(seq),
                )
                meaning[seq] = case
            else:
                key, value, _schema = source.next_wire(case.topic)
                producer.produce(
                    topic, value=value, key=key, partition=partition, on_delivery=on_delivery(seq)
                )
                meaning[seq] = None
            seq += 1
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors[:3]
    assert len(delivered) == seq
    bad = {delivered[s]: c for s, c in meaning.items() if c is not None and c.expect is not None}
    ends: dict[TP, int] = {}
    for tp, offset in delivered.values():
        ends[tp] = max(ends.get(tp, 0), offset + 1)

    service = Service(settings, tmp_path).start()
    try:
        wait_committed(
            settings.kafka_bootstrap,
            [settings.progress_group(s) for s in settings.stores],
            ends,
            120,
            [service],
        )
    finally:
        assert service.stop() == 0

    # The dead-letter topic: each bad record once, with an expected reason and its origin.
    dead = read_topic(settings.kafka_bootstrap, settings.dead_letter_topic, PARTITIONS)
    seen: dict[tuple[TP, int], dict[str, bytes]] = {}
    for records in dead.values():
        for r in records:
            origin = (
                (r.headers["dlq.origin.topic"].decode(), int(r.headers["dlq.origin.partition"])),
                int(r.headers["dlq.origin.offset"]),
            )
            assert origin not in seen, f"dead-lettered twice: {origin}"
            seen[origin] = r.headers
    wrong = {}
    for origin, case in bad.items():
        headers = seen.get(origin)
        if headers is None:
            wrong[case.name] = "not dead-lettered"
            continue
        reason = headers["dlq.reason"].decode()
        assert case.expect is not None
        if reason not in case.expect:
            wrong[case.name] = f"reason {reason}, expected {sorted(case.expect)}"
    assert not wrong, wrong
    extra = set(seen) - set(bad)
    assert not extra, f"good records dead-lettered: {sorted(extra)[:5]}"

    # The stores: every good record (neighbours and near-misses) once, no bad one, same bytes.
    kafka: dict[TP, Any] = {}
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
    near = [s for s, c in meaning.items() if c is not None and c.expect is None]
    assert len(near) >= len(NEAR_MISSES)

    # No NIR of the corpus in the service's own output (details carry positions, not data).
    service_log = service.log_text()
    for nir in VALID_NIRS:
        assert nir not in service_log
