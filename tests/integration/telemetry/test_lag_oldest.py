"""The lag monitor's oldest record not yet in each store, against the real broker.

- One check answers for every partition at every store's position, however many partitions
  (the reader's fetches are not held back by its own queue).
- The service answers for the partitions it owns (replicator.telemetry.firsts): for every
  chunk start of a run its answer is the broker's, and the monitor then asks the broker only
  where the service has no answer. The family: every chunk start of a run over records with
  dead letters (a chunk may open with one) and transaction markers (offsets without a record:
  a chunk may open on one), each store's progress committed at each of those starts in turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from replicator.config import Settings
from replicator.devtools.stack import DEMO_TOPICS
from replicator.kafka.progress import ProgressLog
from replicator.keys import parse_key
from replicator.model import TP
from replicator.pipeline.service import Replicator
from replicator.schemas import SchemaRegistry
from replicator.stores.factory import build_stores
from replicator.telemetry.firsts import FirstRecords
from replicator.telemetry.lag import LagMonitor
from replicator.telemetry.metrics import Metrics
from tests.integration.pipeline.test_replication import PARTITIONS
from tests.support.checker import read_topic
from tests.support.ops import keys, ops
from tests.support.produce import produce_records

pytestmark = pytest.mark.integration


def replicate_noting(settings: Settings, ends: dict[TP, int]) -> dict[tuple[TP, int], float]:
    """Run the service in this process until every store has committed `ends`; returns every
    note its chunkers made on the way (the service forgets them as the stores pass them)."""
    service = Replicator(
        settings, build_stores(settings), SchemaRegistry.load(settings.schemas_dir)
    )
    seen: dict[tuple[TP, int], float] = {}
    started = time.monotonic()
    done: list[bool] = []

    def until(s: Replicator) -> bool:
        for key, noted in s.state.firsts.items():
            assert seen.setdefault(key, noted) == noted, f"{key} noted twice, differently"
        if s.caught_up(ends):
            done.append(True)
        return bool(done) or time.monotonic() - started > 90

    service.run(until=until)  # (its committed offsets are forgotten once it stops)
    assert done, "not caught up after 90 s"
    return seen


def one_record_transactions(
    settings: Settings, values: list[tuple[bytes | None, bytes | None]]
) -> None:
    """A committed transaction per record, over the first topic's partitions in turn: each
    leaves a commit marker (an offset without a record) right after its record."""
    producer = Producer(
        {**settings.kafka_common(), "transactional.id": f"{settings.group_id}.tx", "linger.ms": 0}
    )
    producer.init_transactions(10)
    for i, (key, value) in enumerate(values):
        producer.begin_transaction()
        producer.produce(settings.topics[0], value=value, key=key, partition=i % PARTITIONS)
        producer.commit_transaction(10)


class AskingMonitor(LagMonitor):
    """The lag monitor, keeping every position it asked the broker for."""

    asked: set[tuple[TP, int]]

    def _read_oldest(
        self, reader: Consumer, wanted: set[tuple[TP, int]], now: float
    ) -> set[tuple[TP, int]]:
        self.asked = getattr(self, "asked", set()) | wanted
        return super()._read_oldest(reader, wanted, now)


def first_at_or_after(records: list[tuple[int, int]], offset: int) -> tuple[int, int] | None:
    """(offset, timestamp ms) of the first record at or after `offset`."""
    return next((r for r in records if r[0] >= offset), None)


def test_the_services_answers_are_the_brokers_for_every_chunk_start(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(chunk_max_records=3)
    produced = produce_records(settings, count=150, bad_share=0.2, seed=17)
    topic = settings.topics[0]
    log = read_topic(settings.kafka_bootstrap, topic, PARTITIONS, idle_s=1.0)
    good = [
        (r.key, r.value)
        for tp, recs in log.items()
        for r in recs
        if (tp, r.offset) not in produced.bad
    ]
    one_record_transactions(settings, good[:30])
    tps = [(t, p) for t in settings.topics for p in range(PARTITIONS)]
    records: dict[TP, list[tuple[int, int]]] = {}
    for t in settings.topics:
        for tp, recs in read_topic(settings.kafka_bootstrap, t, PARTITIONS, idle_s=1.0).items():
            records[tp] = [(r.offset, r.timestamp_ms) for r in recs]
    ends = {tp: recs[-1][0] + 1 for tp, recs in records.items()}
    for p in range(PARTITIONS):  # 10 markers in each partition of the first topic, the last
        held = {r[0] for r in records[(topic, p)]}  # one after its last record
        assert sum(1 for o in range(ends[(topic, p)]) if o not in held) == 9

    noted = replicate_noting(settings, ends)

    # Every note is the broker's answer; every chunk start is noted unless its first record
    # is a dead letter.
    starts: dict[TP, list[int]] = {}
    with ops(settings) as ctx:
        for tp in tps:
            parsed = [parse_key(k) for k in keys(ctx, "s3", tp)]
            starts[tp] = sorted(k.first for k in parsed if k is not None)
    for (tp, start), at in noted.items():
        first = first_at_or_after(records[tp], start)
        assert first is not None and at == first[1] / 1000.0, (tp, start, at, first)
    opened_by: dict[str, int] = {"dead letter": 0, "marker": 0, "record": 0}
    for tp, tp_starts in starts.items():
        for start in tp_starts:
            first = first_at_or_after(records[tp], start)
            assert first is not None
            if (tp, first[0]) in produced.bad:
                opened_by["dead letter"] += 1
                assert (tp, start) not in noted
            else:
                opened_by["marker" if first[0] != start else "record"] += 1
                assert (tp, start) in noted, (tp, start)
    assert min(opened_by.values()) > 0, opened_by  # the whole family is there

    # The monitor, each store committed at each chunk start in turn (another group: the run's
    # own progress is at the end): its lag with the service's answers is the one it reads
    # from the broker alone, and it asked the broker only where the service had no answer.
    firsts = FirstRecords()
    for (tp, start), at in noted.items():
        firsts.partition(tp)[start] = at
    probe = settings.model_copy(update={"group_id": f"{settings.group_id}-probe"})
    most = max(len(s) for s in starts.values())
    half = (most + 1) // 2
    for round_ in range(half):  # the first store at one half of the starts, the other at the rest
        positions = {
            store: {tp: s[(round_ + shift) % len(s)] for tp, s in starts.items() if s}
            for store, shift in zip(probe.stores, (0, half), strict=False)
        }
        for store, offsets in positions.items():
            commit_progress(probe, store, offsets)
        with_firsts = AskingMonitor(probe, Metrics(stores=probe.stores), firsts=firsts)
        broker_only = LagMonitor(probe, Metrics(stores=probe.stores))
        try:
            ours, theirs = with_firsts.check(), broker_only.check()
        finally:
            with_firsts.close()
            broker_only.close()
        for store, per_tp in positions.items():
            for tp, pos in per_tp.items():
                assert ours.stores[store][tp].committed == pos
                mine = ours.stores[store][tp].oldest_timestamp_s
                assert mine == theirs.stores[store][tp].oldest_timestamp_s, (store, tp, pos)
                assert mine is not None
        wanted = {(tp, pos) for per_tp in positions.values() for tp, pos in per_tp.items()}
        assert with_firsts.asked == {key for key in wanted if key not in noted}


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
