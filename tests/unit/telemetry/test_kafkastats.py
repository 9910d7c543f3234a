"""The live consumer's statistics callback: librdkafka's JSON document -> gauges."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from replicator.telemetry.kafkastats import ClientStatistics
from replicator.telemetry.metrics import Metrics


def partition(desired: bool, lag: int, fetchq: int) -> dict[str, Any]:
    """A partition's statistics with `lag` records between its end and the position handed
    to the application (-1: nothing consumed yet). librdkafka's own consumer_lag counts from
    the committed offset, which the live group never has: -1 always."""
    app = 1000 if lag >= 0 else -1001
    return {
        "desired": desired,
        "hi_offset": app + lag + 3,  # the stable end is below the watermark (open transaction)
        "ls_offset": app + lag if lag >= 0 else 5,
        "app_offset": app,
        "committed_offset": -1001,
        "consumer_lag": -1,
        "fetchq_cnt": fetchq,
        "fetch_state": "active",
    }


def document(
    partitions: dict[tuple[str, int], dict[str, Any]], brokers: dict[str, dict[str, Any]]
) -> str:
    """A document shaped as librdkafka's (the fields read, among many others)."""
    topics: dict[str, Any] = {}
    for (topic, number), fields in partitions.items():
        topics.setdefault(topic, {"topic": topic, "partitions": {}})["partitions"][str(number)] = {
            "partition": number,
            **fields,
        }
    return json.dumps(
        {"name": "c#consumer-1", "type": "consumer", "brokers": brokers, "topics": topics}
    )


def broker(nodeid: int, avg_us: int, count: int) -> dict[str, Any]:
    return {"nodeid": nodeid, "state": "UP", "rtt": {"avg": avg_us, "cnt": count, "max": avg_us}}


def samples(metrics: Metrics, name: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sample.labels.values())] = sample.value
    return out


def test_owned_partitions_and_real_brokers_are_exported() -> None:
    metrics = Metrics()
    stats = ClientStatistics(metrics)
    stats(
        document(
            {
                ("t", 0): partition(True, 12, 300),
                ("t", 1): partition(True, -1, 0),  # lag not known yet
                ("t", 2): partition(False, 5, 0),  # not owned by this replica
                ("t", -1): partition(True, 0, 0),  # the topic's unassigned queue
                ("u", 0): partition(True, 0, 7),
            },
            {
                "k1:9092/1": broker(1, 2500, 10),
                "k2:9092/2": broker(2, 0, 0),  # no request in the window
                "k:9092/bootstrap": broker(-1, 900, 3),
            },
        )
    )
    assert samples(metrics, "replicator_kafka_consumer_lag_records") == {
        ("t", "0"): 12,
        ("u", "0"): 0,
    }
    assert samples(metrics, "replicator_kafka_fetch_queue_records") == {
        ("t", "0"): 300,
        ("t", "1"): 0,
        ("u", "0"): 7,
    }
    assert samples(metrics, "replicator_kafka_broker_rtt_seconds") == {("k1:9092/1",): 0.0025}
    updated = metrics.registry.get_sample_value("replicator_kafka_statistics_timestamp_seconds")
    assert updated is not None and updated > 0


def test_what_leaves_the_document_leaves_the_metrics() -> None:
    metrics = Metrics()
    stats = ClientStatistics(metrics)
    stats(document({("t", 0): partition(True, 1, 1), ("t", 1): partition(True, 2, 2)}, {}))
    stats(
        document(
            {("t", 0): partition(False, 1, 1), ("t", 1): partition(True, -1, 3)},
            {"k1:9092/1": broker(1, 1000, 1)},
        )
    )
    assert samples(metrics, "replicator_kafka_consumer_lag_records") == {}
    assert samples(metrics, "replicator_kafka_fetch_queue_records") == {("t", "1"): 3}
    # a window without a request to the broker keeps its last round trip
    stats(document({("t", 1): partition(True, 0, 3)}, {"k1:9092/1": broker(1, 0, 0)}))
    assert samples(metrics, "replicator_kafka_broker_rtt_seconds") == {("k1:9092/1",): 0.001}
    stats(document({}, {}))
    assert samples(metrics, "replicator_kafka_fetch_queue_records") == {}
    assert samples(metrics, "replicator_kafka_broker_rtt_seconds") == {}


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[]",
        json.dumps({"topics": {"t": {"partitions": {"x": {}}}}}),
        json.dumps({"topics": {"t": {"partitions": {"0": {"desired": True, "app_offset": "?"}}}}}),
        json.dumps({"brokers": {"b": {"nodeid": 1, "rtt": {"cnt": 1}}}}),
    ],
)
def test_an_unreadable_document_never_raises_and_is_logged_once(
    bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    stats = ClientStatistics(Metrics())
    with caplog.at_level(logging.WARNING, logger="replicator.kafkastats"):
        stats(bad)
        stats(bad)
    assert [r.message for r in caplog.records] == ["kafka_statistics_unreadable"]
