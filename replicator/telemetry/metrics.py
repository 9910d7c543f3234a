"""Prometheus metrics, on a registry of our own per service instance (tests stay isolated).

Names follow Prometheus conventions: base units, `_total` counters, bounded label values
(store, topic, partition, outcome, reason, kind: all from small fixed sets or the
configuration). docs/metrics.md describes each metric; monitoring/ holds the alert rules and
the Grafana dashboard built on them.

Three writers fill this registry:
- the service loop (replicator/pipeline/): what it writes, dead-letters and sees of the stores;
- the lag monitor (replicator/telemetry/lag.py): each store's durable position and lag,
  read from Kafka;
- the live consumer's statistics callback (replicator/telemetry/kafkastats.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from replicator import __version__
from replicator.errors import StoreErrorKind
from replicator.judge.rules import VIOLATION_REASONS
from replicator.kafka.deadletter import REASON_OVERSIZED, REASON_REFUSED
from replicator.schemas import DECODE_REASONS

# Label values, each from a small fixed set.
OUTCOMES: tuple[str, ...] = ("created", "already_present", "conflict")
DEAD_LETTER_REASONS: tuple[str, ...] = (*DECODE_REASONS, *VIOLATION_REASONS)
# The reason a dead letter sent without its value carries (replicator/kafka/deadletter.py).
DROPPED_VALUE_REASONS: tuple[str, ...] = (REASON_OVERSIZED, REASON_REFUSED)
ERROR_KINDS: tuple[str, ...] = tuple(kind.value for kind in StoreErrorKind)
REBALANCE_EVENTS: tuple[str, ...] = ("assigned", "revoked", "lost")

# No `<counter>_created` series: they double the output and no query here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self, stores: Sequence[str] = (), topics: Sequence[str] = ()) -> None:
        """`stores` and `topics` (the configuration's) create every counter's label set at
        0 up front, so that `increase()` and `rate()` also see a counter's first event."""
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Info("replicator_build", "Build information", registry=r)
        self.build_info.info({"version": __version__})

        # --- the service loop: writes, dead letters, stores -----------------------------
        self.records = Counter(
            "replicator_records_written_total",
            "Records written per store and outcome (created, already_present, conflict)",
            ["store", "outcome"],
            registry=r,
        )
        self.objects = Counter(
            "replicator_objects_written_total",
            "Objects written per store and outcome (created, already_present, conflict)",
            ["store", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "replicator_dead_letter_records_total",
            "Records sent to the dead-letter topic, per origin topic and reason",
            ["topic", "reason"],
            registry=r,
        )
        self.dead_letter_values_dropped = Counter(
            "replicator_dead_letter_values_dropped_total",
            "Dead letters sent without their value (with its size and SHA-256) because the "
            "dead-letter topic does not take them as they are, per origin topic and the "
            "reason they carry (oversized: over the topic's limit; refused: refused for good)",
            ["topic", "reason"],
            registry=r,
        )
        self.schema_registry_up = Gauge(
            "replicator_schema_registry_up",
            "1 when the last lookup of the schema registry server got an answer (or no "
            "lookup failed yet), 0 while it does not answer: the partitions whose next record "
            "has an unknown schema id are held, nothing is dead-lettered",
            registry=r,
        )
        self.schema_registry_errors = Counter(
            "replicator_schema_registry_errors_total",
            "Schema registry lookups without a definite answer (unreachable, timeout, 5xx, "
            "429, ...); each one holds a partition",
            registry=r,
        )
        self.partitions_held = Gauge(
            "replicator_partitions_held",
            "Partitions held because the schema registry did not answer for their next record",
            registry=r,
        )
        self.schemas_added = Counter(
            "replicator_schemas_added_total",
            "Writer schemas first seen at run time (a registry lookup, a reloaded file)",
            registry=r,
        )
        self.dead_letter_undelivered = Gauge(
            "replicator_dead_letter_undelivered_records",
            "Dead letters the dead-letter topic had not acknowledged when a commit last waited "
            "for them (after 5 s in flight, or at a revoke or stop); while above 0 no store's "
            "progress is committed (nothing is lost, the partitions wait)",
            registry=r,
        )
        self.dead_letter_max_bytes = Gauge(
            "replicator_dead_letter_max_message_bytes",
            "The dead-letter topic's limit the service applies (its max.message.bytes, else "
            "the broker's message.max.bytes, else 1000000); larger dead letters go without "
            "their value",
            registry=r,
        )
        self.store_errors = Counter(
            "replicator_store_errors_total",
            "Failed store requests by kind (each retry counts)",
            ["store", "kind"],
            registry=r,
        )
        self.store_up = Gauge(
            "replicator_store_up",
            "1 while the store accepts writes, 0 while it is down",
            ["store"],
            registry=r,
        )
        self.catching_up = Gauge(
            "replicator_store_catching_up",
            "Partitions of this store being caught up from Kafka (0: the store follows the "
            "live stream)",
            ["store"],
            registry=r,
        )
        self.replica_committed = Gauge(
            "replicator_replica_committed_offset",
            "The offset this replica last committed for a store, for the partitions it owns "
            "(lag comes from replicator_store_committed_offset, read from Kafka)",
            ["store", "topic", "partition"],
            registry=r,
        )
        self.put_seconds = Histogram(
            "replicator_put_duration_seconds",
            "Duration of one successful create-if-absent put",
            ["store"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.chunk_records = Histogram(
            "replicator_chunk_records",
            "Offsets covered per chunk (one chunk is one object in each store)",
            registry=r,
            buckets=(1, 10, 100, 1000, 5000, 10000, 25000, 50000, 100000),
        )
        self.chunk_bytes = Histogram(
            "replicator_chunk_size_bytes",
            "Encoded size per chunk",
            registry=r,
            buckets=(1024, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
        )

        self.store_last_put = Gauge(
            "replicator_store_last_put_timestamp_seconds",
            "When a put last succeeded in this store (Unix time; the replica's start until "
            "the first one): time() - this is the store's freshness",
            ["store"],
            registry=r,
        )
        self.store_last_commit = Gauge(
            "replicator_store_last_commit_timestamp_seconds",
            "When this replica last committed the store's progress (Unix time; the "
            "replica's start until the first commit)",
            ["store"],
            registry=r,
        )

        # --- the live consumer: what it reads, its partitions, librdkafka's statistics ----
        self.consumed = Counter(
            "replicator_records_consumed_total",
            "Records the live consumer handed to the judge, per topic (counted per batch)",
            ["topic"],
            registry=r,
        )
        self.rebalances = Counter(
            "replicator_rebalances_total",
            "Rebalance callbacks of the live consumer, by event (assigned, revoked, lost)",
            ["event"],
            registry=r,
        )
        self.assigned = Gauge(
            "replicator_assigned_partitions",
            "Partitions this replica owns in the live consumer group",
            registry=r,
        )
        self.client_lag = Gauge(
            "replicator_kafka_consumer_lag_records",
            "The live consumer's own lag per owned partition (librdkafka statistics: last "
            "stable offset - the position handed to the service, in memory; not what the "
            "stores hold)",
            ["topic", "partition"],
            registry=r,
        )
        self.client_fetchq = Gauge(
            "replicator_kafka_fetch_queue_records",
            "Records fetched and waiting in the client's queue per owned partition "
            "(librdkafka statistics: fetchq_cnt)",
            ["topic", "partition"],
            registry=r,
        )
        self.client_rtt = Gauge(
            "replicator_kafka_broker_rtt_seconds",
            "Average round trip to each broker over the last statistics interval "
            "(librdkafka statistics: rtt.avg)",
            ["broker"],
            registry=r,
        )
        self.client_stats_updated = Gauge(
            "replicator_kafka_statistics_timestamp_seconds",
            "When the live consumer last reported its statistics (Unix time)",
            registry=r,
        )
        self.ready = Gauge(
            "replicator_ready",
            "1 while /readyz answers 200 (broker answers, a store accepts writes), 0 "
            "otherwise, from the process's start",
            registry=r,
        )

        # --- the lag monitor: durable progress read from Kafka ---------------------------
        self.store_committed = Gauge(
            "replicator_store_committed_offset",
            "The store's durable position: the offset committed in its progress group "
            "(the next offset it needs), or the partition's low watermark while none is "
            "committed",
            ["store", "topic", "partition"],
            registry=r,
        )
        self.high_watermark = Gauge(
            "replicator_high_watermark_offset",
            "The partition's high watermark (the offset the next produced record gets)",
            ["topic", "partition"],
            registry=r,
        )
        self.lag_records = Gauge(
            "replicator_store_lag_records",
            "Records not yet in the store: high watermark - committed offset (0 at least)",
            ["store", "topic", "partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "replicator_store_lag_seconds",
            "Age of the oldest record not yet in the store (now - its timestamp); 0 when the "
            "store holds every record",
            ["store", "topic", "partition"],
            registry=r,
        )
        self.lag_updated = Gauge(
            "replicator_lag_last_success_timestamp_seconds",
            "When the lag monitor last read every store's position from Kafka (Unix time)",
            registry=r,
        )
        self.lag_errors = Counter(
            "replicator_lag_check_errors_total",
            "Lag checks that failed (broker unreachable or refusing)",
            registry=r,
        )

        for event in REBALANCE_EVENTS:
            self.rebalances.labels(event)
        self.declare(stores, topics)

    def declare(self, stores: Sequence[str], topics: Sequence[str]) -> None:
        """Create the label sets of these stores and topics at 0 (the constructor does it
        for its own; `run_service` calls it once it knows which stores are not retired)."""
        started = time.time()
        for store in stores:
            self.store_up.labels(store)  # 0 until the service has seen the store answer
            self.catching_up.labels(store)
            self.store_last_put.labels(store).set(started)
            self.store_last_commit.labels(store).set(started)
            for outcome in OUTCOMES:
                self.records.labels(store, outcome)
                self.objects.labels(store, outcome)
            for kind in ERROR_KINDS:
                self.store_errors.labels(store, kind)
        for topic in topics:
            self.consumed.labels(topic)
            for reason in DEAD_LETTER_REASONS:
                self.dead_letters.labels(topic, reason)
            for reason in DROPPED_VALUE_REASONS:
                self.dead_letter_values_dropped.labels(topic, reason)
