"""Produce synthetic change events (and a share of bad records) to Kafka.

For the demo, the tests and load runs: records come from ``SyntheticSource``, encoded in
the Confluent wire format, keyed by the beneficiary pseudonym, through an idempotent
producer. Delivery callbacks report where each record landed, so the report lists the
(topic, partition, offset, kind) of every bad record for tests to assert on.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from replicator.devtools.synthetic import BAD_KINDS, BadKind, SyntheticSource
from replicator.errors import ReplicatorError
from replicator.schemas import SchemaRegistry

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int | None], None]
"""Called as ``progress(delivered, count)`` about twice a second and at the end."""

_PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 5,
    "compression.type": "none",
}


class ProduceError(ReplicatorError):
    """The broker is unreachable, a topic is missing, or records could not be delivered."""


@dataclass(frozen=True)
class BadRecordRef:
    """Where a bad record landed and what kind it is (``synthetic.EXPECTED_REASON``)."""

    topic: str
    partition: int
    offset: int
    kind: BadKind


@dataclass
class ProduceReport:
    """What was delivered. Counts only include records the broker acknowledged."""

    per_topic: dict[str, int] = field(default_factory=dict)  # good and bad records
    good_per_schema: dict[int, int] = field(default_factory=dict)
    bad_per_kind: dict[str, int] = field(default_factory=dict)
    bad_records: list[BadRecordRef] = field(default_factory=list)
    # next offset after the last delivered record, per (topic, partition): what a consumer
    # must have read to have seen everything produced
    end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    first_error: str | None = None
    elapsed_s: float = 0.0
    interrupted: bool = False

    @property
    def bad(self) -> int:
        return sum(self.bad_per_kind.values())

    @property
    def good(self) -> int:
        return sum(self.good_per_schema.values())

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON values (`replicator produce --json`)."""
        return {
            "format": "replicator-produce-report",
            "version": 1,
            "sent": self.sent,
            "delivered": self.delivered,
            "failed": self.failed,
            "first_error": self.first_error,
            "elapsed_s": round(self.elapsed_s, 3),
            "interrupted": self.interrupted,
            "per_topic": dict(self.per_topic),
            "good": self.good,
            "good_per_schema": {str(k): v for k, v in sorted(self.good_per_schema.items())},
            "bad": self.bad,
            "bad_per_kind": dict(sorted(self.bad_per_kind.items())),
            "bad_records": [
                {"topic": b.topic, "partition": b.partition, "offset": b.offset, "kind": b.kind}
                for b in self.bad_records
            ],
            "end_offsets": [
                {"topic": t, "partition": p, "end": e}
                for (t, p), e in sorted(self.end_offsets.items())
            ],
        }


def produce(
    settings_kafka_conf: dict[str, Any],
    topics: Sequence[str],
    count: int | None,
    rate: float | None,
    seed: int,
    bad_share: float,
    bad_kinds: Sequence[str] | None,
    registry: SchemaRegistry,
    progress: ProgressCallback | None = None,
    *,
    start_time: datetime | None = None,
    v2_share: float = 0.3,
    schema_topics: Mapping[str, str] | None = None,
    create_partitions: int | None = None,
    connect_timeout_s: float = 10.0,
    flush_timeout_s: float = 60.0,
    stop: threading.Event | None = None,
) -> ProduceReport:
    """Produce ``count`` records (None: until ``stop`` is set or Ctrl-C) to ``topics``.

    ``settings_kafka_conf`` is the librdkafka configuration shared by clients (e.g.
    ``Settings.kafka_common()``); idempotence is always enabled on top of it. ``rate``
    throttles to that many records per second (None: as fast as possible). Each record is
    bad with probability ``bad_share``, of a kind drawn from ``bad_kinds`` (default: all of
    ``synthetic.BAD_KINDS``); the topic of each record is drawn uniformly from ``topics``.
    Event times start at ``start_time`` (default: now) and advance by 1/rate on average.
    ``schema_topics`` maps a Kafka topic to the topic its schemas are registered for when
    the names differ (like ``Settings.schema_topics``).

    Missing topics are created with ``create_partitions`` partitions, or make it fail when
    that is None. Raises ``ProduceError`` if the broker does not answer within
    ``connect_timeout_s``, or if records are still undelivered after ``flush_timeout_s``
    at the end. Delivery failures are counted in the report (``failed``, ``first_error``).
    """
    schema_topic = dict(schema_topics or {})
    kinds = _check_arguments(
        topics,
        [schema_topic.get(t, t) for t in topics],
        count,
        rate,
        bad_share,
        bad_kinds,
        registry,
    )
    conf = {**_PRODUCER_DEFAULTS, **settings_kafka_conf, "enable.idempotence": True}
    conf.setdefault("logger", logging.getLogger("replicator.produce.librdkafka"))
    bootstrap = str(conf.get("bootstrap.servers", "?"))
    producer = Producer(conf)
    _ensure_topics(producer, conf, bootstrap, topics, create_partitions, connect_timeout_s)

    source = SyntheticSource(
        seed,
        registry,
        start_time=start_time or datetime.now(UTC),
        mean_gap_ms=1000.0 / rate if rate else 1.0,
        v2_share=v2_share,
    )
    choices = random.Random(seed * 1_000_003 + 17)  # topic and bad-kind draws
    report = ProduceReport(per_topic=dict.fromkeys(topics, 0))

    def on_delivery(kind: BadKind | None, schema_id: int | None) -> Callable[[Any, Any], None]:
        # librdkafka calls it from poll() / flush(), on this thread
        def callback(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                report.failed += 1
                if report.first_error is None:
                    report.first_error = str(err)
                return
            report.delivered += 1
            topic = msg.topic()
            tp = (topic, msg.partition())
            report.end_offsets[tp] = max(report.end_offsets.get(tp, 0), msg.offset() + 1)
            report.per_topic[topic] = report.per_topic.get(topic, 0) + 1
            if kind is None:
                assert schema_id is not None
                report.good_per_schema[schema_id] = report.good_per_schema.get(schema_id, 0) + 1
            else:
                report.bad_per_kind[kind] = report.bad_per_kind.get(kind, 0) + 1
                report.bad_records.append(BadRecordRef(topic, msg.partition(), msg.offset(), kind))

        return callback

    started = time.monotonic()
    last_progress = started
    try:
        while count is None or report.sent < count:
            if stop is not None and stop.is_set():
                report.interrupted = True
                break
            if rate:
                wait = pacing_wait(started + report.sent / rate - time.monotonic())
                if wait:
                    producer.poll(0)  # serve delivery reports, then sleep for real
                    time.sleep(wait)
                    continue
            topic = choices.choice(topics)
            kind: BadKind | None = None
            schema_id: int | None = None
            if bad_share and choices.random() < bad_share:
                bad_kind = choices.choice(kinds)
                key, value = source.bad_message(bad_kind, schema_topic.get(topic, topic))
                kind = bad_kind
            else:
                key, value, schema = source.next_wire(schema_topic.get(topic, topic))
                schema_id = schema.id
            _send(producer, topic, key, value, on_delivery(kind, schema_id))
            report.sent += 1
            producer.poll(0)
            now = time.monotonic()
            if progress is not None and now - last_progress >= 0.5:
                last_progress = now
                progress(report.delivered, count)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        remaining = producer.flush(flush_timeout_s)
        report.elapsed_s = time.monotonic() - started
    if progress is not None:
        progress(report.delivered, count)
    if remaining:
        raise ProduceError(
            f"{remaining} records still undelivered to {bootstrap} after {flush_timeout_s:g} s"
        )
    return report


# The shortest sleep of a paced run. librdkafka's poll() takes whole milliseconds, so a wait
# under 1 ms became poll(0) and the loop spun a core above about 1,000 records/s. Records due
# within one tick are sent together after it instead: the average rate is exact (each
# record's due time comes from the count sent), the wake-ups are at most 1/tick a second.
PACING_TICK_S = 0.005


def pacing_wait(ahead_s: float, tick_s: float = PACING_TICK_S) -> float:
    """Seconds to sleep before the next record of a paced run that is ``ahead_s`` early
    (negative: late): 0 when it is due (send it now), else at least ``tick_s`` and at most
    0.1 s, so a stop request is seen within 0.1 s."""
    if ahead_s <= 0:
        return 0.0
    return min(max(ahead_s, tick_s), 0.1)


def _check_arguments(
    topics: Sequence[str],
    registry_topics: Sequence[str],
    count: int | None,
    rate: float | None,
    bad_share: float,
    bad_kinds: Sequence[str] | None,
    registry: SchemaRegistry,
) -> tuple[BadKind, ...]:
    if not topics:
        raise ValueError("no topic to produce to")
    unknown_topics = [t for t in registry_topics if not registry.ids_for_topic(t)]
    if unknown_topics:
        raise ValueError(f"no schema registered for topics {', '.join(unknown_topics)}")
    if count is not None and count < 0:
        raise ValueError("count must be >= 0")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0")
    if not 0.0 <= bad_share <= 1.0:
        raise ValueError("bad_share must lie in [0, 1]")
    if bad_kinds is None:
        return BAD_KINDS
    unknown_kinds = [k for k in bad_kinds if k not in BAD_KINDS]
    if unknown_kinds or not bad_kinds:
        raise ValueError(
            f"bad kinds must be among {', '.join(BAD_KINDS)}; got {', '.join(bad_kinds) or 'none'}"
        )
    return tuple(k for k in BAD_KINDS if k in bad_kinds)


def _send(
    producer: Producer, topic: str, key: bytes, value: bytes, callback: Callable[[Any, Any], None]
) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=callback)
            return
        except BufferError:  # local queue full: serve delivery reports, then retry
            producer.poll(0.1)


def _ensure_topics(
    producer: Producer,
    conf: dict[str, Any],
    bootstrap: str,
    topics: Sequence[str],
    create_partitions: int | None,
    timeout_s: float,
) -> None:
    try:
        metadata = producer.list_topics(timeout=timeout_s)
    except KafkaException:
        raise ProduceError(
            f"Kafka broker at {bootstrap} unreachable within {timeout_s:g} s"
        ) from None
    missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error]
    if not missing:
        return
    if create_partitions is None:
        raise ProduceError(f"topics missing on {bootstrap}: {', '.join(missing)}")
    admin_conf = {k: v for k, v in conf.items() if k not in _PRODUCER_ONLY}
    admin = AdminClient(admin_conf)
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=create_partitions) for t in missing],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise ProduceError(f"cannot create topic {topic} on {bootstrap}: {exc}") from None
    log.info("created topics %s with %d partitions", ", ".join(missing), create_partitions)


_PRODUCER_ONLY = frozenset(
    {
        "linger.ms",
        "compression.type",
        "enable.idempotence",
        "acks",
        "batch.num.messages",
        "batch.size",
        "queue.buffering.max.messages",
        "queue.buffering.max.kbytes",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "retries",
        "max.in.flight.requests.per.connection",
        "partitioner",
    }
)
