"""Produce a workload for a test with the product's own producer, and remember what it sent."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from replicator.config import Settings
from replicator.devtools.produce import produce
from replicator.devtools.synthetic import BAD_KINDS, BadKind, SyntheticSource
from replicator.model import TP
from replicator.schemas import SchemaRegistry
from tests.support.checker import KafkaRecord


@dataclass
class Produced:
    total: int = 0
    ends: dict[TP, int] = field(default_factory=dict)  # next offset after the last record
    bad: set[tuple[TP, int]] = field(default_factory=set)
    bad_kinds: dict[tuple[TP, int], str] = field(default_factory=dict)
    # The producer's own record of every record the broker acknowledged (produce_recorded
    # only): what the stores must hold when the broker itself no longer holds it.
    records: dict[TP, list[KafkaRecord]] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Produced:
        return cls()

    def merge(self, other: Produced) -> Produced:
        ends = dict(self.ends)
        for tp, end in other.ends.items():
            ends[tp] = max(ends.get(tp, 0), end)
        records = {tp: list(recs) for tp, recs in self.records.items()}
        for tp, recs in other.records.items():
            records.setdefault(tp, []).extend(recs)
        return Produced(
            total=self.total + other.total,
            ends=ends,
            bad=self.bad | other.bad,
            bad_kinds={**self.bad_kinds, **other.bad_kinds},
            records=records,
        )

    def only(self, topics: set[str]) -> Produced:
        """What was produced to `topics` only."""
        records = {tp: list(r) for tp, r in self.records.items() if tp[0] in topics}
        return Produced(
            total=sum(len(r) for r in records.values()),
            ends={tp: e for tp, e in self.ends.items() if tp[0] in topics},
            bad={b for b in self.bad if b[0][0] in topics},
            bad_kinds={b: k for b, k in self.bad_kinds.items() if b[0][0] in topics},
            records=records,
        )


def produce_records(
    settings: Settings,
    count: int,
    bad_share: float,
    seed: int,
    bad_kinds: list[str] | None = None,
) -> Produced:
    report = produce(
        settings.kafka_common(),
        settings.topics,
        count,
        None,
        seed,
        bad_share,
        bad_kinds,
        SchemaRegistry.load(settings.schemas_dir),
        schema_topics=dict(settings.schema_topics),
    )
    assert report.delivered == count and report.failed == 0, report
    return Produced(
        total=count,
        ends=dict(report.end_offsets),
        bad={((b.topic, b.partition), b.offset) for b in report.bad_records},
        bad_kinds={((b.topic, b.partition), b.offset): b.kind for b in report.bad_records},
    )


def produce_recorded(settings: Settings, count: int, bad_share: float, seed: int) -> Produced:
    """The same workload as `produce_records` (synthetic events, a share of bad ones, topics
    drawn at random, an idempotent producer), sent by a producer of the test's own that keeps
    the key, value, timestamp and offset of every record the broker acknowledged. Kafka is
    then not needed to know what the stores must hold (a broker that loses its log)."""
    registry = SchemaRegistry.load(settings.schemas_dir)
    schema_topic = dict(settings.schema_topics)
    source = SyntheticSource(seed, registry, start_time=datetime.now(UTC), mean_gap_ms=1.0)
    choices = random.Random(seed * 1_000_003 + 17)
    producer = Producer({**settings.kafka_common(), "linger.ms": 5, "enable.idempotence": True})
    out = Produced()
    errors: list[str] = []

    def on_delivery(kind: BadKind | None) -> Any:
        def callback(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
                return
            tp = (msg.topic(), msg.partition())
            offset = msg.offset()
            out.total += 1
            out.ends[tp] = max(out.ends.get(tp, 0), offset + 1)
            out.records.setdefault(tp, []).append(
                KafkaRecord(offset, msg.key(), msg.value(), msg.timestamp()[1], {})
            )
            if kind is not None:
                out.bad.add((tp, offset))
                out.bad_kinds[(tp, offset)] = kind

        return callback

    for _ in range(count):
        topic = choices.choice(settings.topics)
        kind: BadKind | None = None
        if bad_share and choices.random() < bad_share:
            bad_kind = choices.choice(BAD_KINDS)
            key, value = source.bad_message(bad_kind, schema_topic.get(topic, topic))
            kind = bad_kind
        else:
            key, value, _schema = source.next_wire(schema_topic.get(topic, topic))
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery(kind))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0 and not errors and out.total == count, (remaining, errors[:3])
    for records in out.records.values():
        records.sort(key=lambda r: r.offset)
    return out


def fill_partitions(settings: Settings, ends: dict[TP, int]) -> None:
    """Produce filler records so that the next record of each partition gets offset
    `ends[tp]`: one record a batch, so that even Tansu's high watermark is right."""
    producer = Producer(
        {
            **settings.kafka_common(),
            "linger.ms": 0,
            "batch.num.messages": 1,
            "enable.idempotence": True,
        }
    )
    last: dict[TP, int] = {}
    errors: list[str] = []

    def callback(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            tp = (msg.topic(), msg.partition())
            last[tp] = max(last.get(tp, -1), msg.offset())

    for (topic, partition), end in ends.items():
        for _ in range(end):
            producer.produce(topic, b"filler", b"filler", partition, on_delivery=callback)
            producer.poll(0)
    assert producer.flush(60) == 0 and not errors, errors[:3]
    got = {tp: last.get(tp, -1) + 1 for tp in ends}
    assert got == ends, (got, ends)


def commit_offsets(settings: Settings, groups: list[str], offsets: dict[TP, int]) -> None:
    """Commit `offsets` for each of `groups` without joining them (as an operator would)."""
    for group in groups:
        consumer = Consumer(
            {
                **settings.kafka_common(),
                "group.id": group,
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        finally:
            consumer.close()
