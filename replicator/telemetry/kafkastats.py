"""The live consumer's own statistics, as metrics.

librdkafka emits a JSON document every `statistics.interval.ms` (the setting
`kafka_statistics_interval_ms`, default 15 s; 0 turns it off) through the `stats_cb`
callback, which runs inside the consumer's `consume()` on the service loop's thread. The
document is a few kilobytes per broker and partition: parsing it every 15 s costs a
fraction of a millisecond, and nothing here runs per record.

Exported from it (docs/metrics.md):

    replicator_kafka_consumer_lag_records{topic, partition}   end offset - position
    replicator_kafka_fetch_queue_records{topic, partition}    fetchq_cnt
    replicator_kafka_broker_rtt_seconds{broker}               rtt.avg (microseconds -> s)
    replicator_kafka_statistics_timestamp_seconds             when the last one came

Only partitions the consumer owns (librdkafka's `desired`) and real brokers (node id >= 0)
are exported; a broker's round trip keeps its last figure through a window without a
request; a partition or broker that leaves the document leaves the metrics.
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
                # librdkafka's own `consumer_lag` counts from the live group's committed
                # offset, which the service never commits (each store commits its own
                # group): the lag here counts from the position handed to the service.
                end = int(part.get("ls_offset", -1))
                end = end if end >= 0 else int(part.get("hi_offset", -1))
                position = int(part.get("app_offset", -1))
                if end >= 0 and position >= 0:
                    m.client_lag.labels(*labels).set(max(end - position, 0))
                else:  # not known yet (nothing consumed since the assignment)
                    with contextlib.suppress(KeyError):
                        m.client_lag.remove(*labels)
                m.client_fetchq.labels(*labels).set(int(part.get("fetchq_cnt", 0)))
                partitions.add(labels)
        brokers: set[str] = set()
        for name, broker in (stats.get("brokers") or {}).items():
            if int(broker.get("nodeid", -1)) < 0:
                continue  # a bootstrap or coordinator placeholder, not a broker
            brokers.add(str(name))
            rtt = broker.get("rtt") or {}
            if int(rtt.get("cnt", 0)) > 0:  # no request in the window: keep the last figure
                m.client_rtt.labels(str(name)).set(float(rtt["avg"]) / 1e6)
        for labels in self._partitions - partitions:
            for gauge in (m.client_lag, m.client_fetchq):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        for name in self._brokers - brokers:
            with contextlib.suppress(KeyError):
                m.client_rtt.remove(name)
        self._partitions, self._brokers = partitions, brokers
        m.client_stats_updated.set(time.time())
