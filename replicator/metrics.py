"""Prometheus metrics, on a registry of our own per service instance (tests stay isolated).

Names follow Prometheus conventions: base units, `_total` counters, bounded label values
(store, topic, partition, outcome, reason: all from small fixed sets or the configuration).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from replicator import __version__


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.build_info = Info("replicator_build", "Build information", registry=r)
        self.build_info.info({"version": __version__})
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
        self.store_errors = Counter(
            "replicator_store_errors_total", "Store errors by kind", ["store", "kind"], registry=r
        )
        self.store_up = Gauge(
            "replicator_store_up",
            "1 while the store accepts writes, 0 while it is down",
            ["store"],
            registry=r,
        )
        self.catching_up = Gauge(
            "replicator_store_catching_up",
            "Partitions of this store being caught up from Kafka",
            ["store"],
            registry=r,
        )
        self.committed = Gauge(
            "replicator_store_committed_offset",
            "The store's durable position (next offset to write), per partition",
            ["store", "topic", "partition"],
            registry=r,
        )
        self.put_seconds = Histogram(
            "replicator_put_duration_seconds",
            "Duration of one create-if-absent put",
            ["store"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.chunk_records = Histogram(
            "replicator_chunk_records",
            "Offsets covered per chunk",
            registry=r,
            buckets=(1, 10, 100, 1000, 5000, 10000, 25000, 50000, 100000),
        )
        self.chunk_bytes = Histogram(
            "replicator_chunk_size_bytes",
            "Encoded size per chunk",
            registry=r,
            buckets=(1024, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
        )
