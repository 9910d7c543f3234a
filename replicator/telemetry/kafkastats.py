"""The live consumer's own statistics, as metrics.

librdkafka emits a JSON document every `statistics.interval.ms` (the setting
`kafka_statistics_interval_ms`, default 15 s; 0 turns it off) through the `stats_cb`
callback, which runs inside the consumer's `consume()` on the service loop's thread. The
document is a few kilobytes per broker and partition: parsing it every 15 s costs a
fraction of a millisecond, and nothing here runs per record.

Exported from it (docs/metrics.md):

    replicator_kafka_consumer_lag_records{topic, partition}   high watermark - position
    replicator_kafka_fetch_queue_records{topic, partition}    fetchq_cnt
    replicator_kafka_broker_rtt_seconds{broker}               rtt.avg (microseconds -> s)
    replicator_kafka_statistics_timestamp_seconds             when the last one came

Only partitions the consumer owns (librdkafka's `desired`) and real brokers (node id >= 0,
at least one round trip in the window) are exported; a partition or broker that leaves the
document leaves the metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from replicator.logs import fields
from replicator.telemetry.metrics import Metrics

log = logging.getLogger("replicator.kafkastats")

_PARSE_ERRORS = (ValueError, TypeError, KeyError, AttributeError)


class ClientStatistics:
    """The `stats_cb` of the live consumer: parses each document and sets the gauges."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._partitions: set[tuple[str, str]] = set()
        self._brokers: set[str] = set()
        self._failing = False

    def __call__(self, document: str) -> None:
        # An exception raised here would come out of the consumer's consume(): never raise.
        try:
            self.update(json.loads(document))
        except _PARSE_ERRORS as exc:
            if not self._failing:
                log.warning("kafka_statistics_unreadable", extra=fields(error=repr(exc)))
            self._failing = True
        else:
            self._failing = False

    def update(self, stats: dict[str, Any]) -> None:
        m = self.metrics
        partitions: set[tuple[str, str]] = set()
        for topic, per_topic in (stats.get("topics") or {}).items():
            for key, part in (per_topic.get("partitions") or {}).items():
                if int(key) < 0 or not part.get("desired", False):
                    continue  # -1: the topic's unassigned messages; not desired: not owned
                labels = (str(topic), str(int(key)))
                lag = int(part.get("consumer_lag", -1))
                if lag >= 0:
                    m.client_lag.labels(*labels).set(lag)
                else:  # not known yet (no fetch since the assignment)
                    with contextlib.suppress(KeyError):
                        m.client_lag.remove(*labels)
                m.client_fetchq.labels(*labels).set(int(part.get("fetchq_cnt", 0)))
                partitions.add(labels)
        brokers: set[str] = set()
        for name, broker in (stats.get("brokers") or {}).items():
            rtt = broker.get("rtt") or {}
            if int(broker.get("nodeid", -1)) < 0 or int(rtt.get("cnt", 0)) <= 0:
                continue  # a bootstrap placeholder, or no request in the window
            m.client_rtt.labels(str(name)).set(float(rtt["avg"]) / 1e6)
            brokers.add(str(name))
        for labels in self._partitions - partitions:
            for gauge in (m.client_lag, m.client_fetchq):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        for name in self._brokers - brokers:
            with contextlib.suppress(KeyError):
                m.client_rtt.remove(name)
        self._partitions, self._brokers = partitions, brokers
        m.client_stats_updated.set(time.time())
