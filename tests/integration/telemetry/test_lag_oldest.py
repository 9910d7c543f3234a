"""The lag monitor's oldest record not yet in each store, against the real broker.

- One check answers for every partition at every store's position, however many partitions
  (the reader's fetches are not held back by its own queue).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from replicator.config import Settings
from replicator.devtools.stack import DEMO_TOPICS
from replicator.kafka.progress import ProgressLog
from replicator.model import TP
from replicator.telemetry.lag import LagMonitor
from replicator.telemetry.metrics import Metrics

pytestmark = pytest.mark.integration


WIDE_PARTITIONS = 24
BATCH = 2_000


def commit_progress(settings: Settings, store: str, offsets: dict[TP, int]) -> None:
    progress = ProgressLog(settings.kafka_common(), settings.progress_group(store))
    try:
        progress.commit(offsets)
    finally:
        progress.close()


def test_one_check_reads_the_oldest_record_of_every_partition_at_every_position(
    stack: Any, settings_factory: Callable[..., Settings], admin: AdminClient
) -> None:
    """24 partitions, the two stores at different offsets of each: 48 first records, all
    read in one check, each the record at the store's offset (its timestamp is unique)."""
    base = settings_factory()
    topic = f"{base.topics[0]}-wide"
    admin.create_topics([NewTopic(topic, WIDE_PARTITIONS, 1)])[topic].result(30)
    settings = base.model_copy(update={"topics": [topic], "schema_topics": {topic: DEMO_TOPICS[0]}})
    # Records in large batches, as producers write them (the reader's fetch at an offset
    # returns its whole batch: thousands of records waiting in the reader's queue).
    producer = Producer(
        {
            **settings.kafka_common(),
            "linger.ms": 200,
            "batch.num.messages": 10_000,
            "batch.size": 4 << 20,
        }
    )
    now_ms = int(time.time() * 1000)
    stamps: dict[tuple[TP, int], int] = {}
    for p in range(WIDE_PARTITIONS):
        for offset in range(BATCH):
            stamps[((topic, p), offset)] = now_ms - 3_600_000 + p * 10_000 + offset
            producer.produce(
                topic, value=bytes(500), partition=p, timestamp=stamps[((topic, p), offset)]
            )
    assert producer.flush(30) == 0
    tps = [(topic, p) for p in range(WIDE_PARTITIONS)]
    positions = {store: {tp: i + 1 for tp in tps} for i, store in enumerate(settings.stores)}
    for store, offsets in positions.items():
        commit_progress(settings, store, offsets)

    monitor = LagMonitor(settings, Metrics(stores=settings.stores))
    try:
        snapshot = monitor.check()
    finally:
        monitor.close()
    for store, offsets in positions.items():
        for tp, offset in offsets.items():
            lag = snapshot.stores[store][tp]
            assert lag.committed == offset
            assert lag.oldest_timestamp_s == stamps[(tp, offset)] / 1000.0, (store, tp)
