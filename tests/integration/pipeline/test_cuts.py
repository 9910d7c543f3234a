"""Wall-clock cuts against the real servers: a burst's tail is cut at the end of the log
without waiting for the flush interval, and a trickle is still cut by the flush interval
(objects hold what arrived in it, not a record each).

No timed assertion: the first test sets the flush interval to an hour, so only the
end-of-burst cut can commit the tail within the test; the second counts objects."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicator.config import Settings
from replicator.devtools.produce import produce
from replicator.schemas import SchemaRegistry
from tests.integration.pipeline.test_replication import assert_replicated, groups
from tests.support.checker import decode_objects
from tests.support.produce import Produced, produce_records
from tests.support.service import Service, wait_committed

pytestmark = pytest.mark.integration

HOUR = 3600.0


def wait_assigned(service: Service, timeout: float = 60) -> None:
    """Tests act only once the service owns its partitions (the local broker can block a
    group whose member leaves during its join)."""
    deadline = time.monotonic() + timeout
    while '"partition_assigned"' not in service.log_text():
        assert service.alive(), service.log_text()[-3000:]
        assert time.monotonic() < deadline, service.log_text()[-3000:]
        time.sleep(0.1)


def test_a_burst_then_silence_is_committed_without_the_flush_interval(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """A backlog and a live burst, then nothing: with a flush interval of an hour, every
    record still reaches both stores (only the end-of-burst cut can do that), in chunks
    larger than a record, and the two stores hold the same objects."""
    settings = settings_factory(flush_interval_s=HOUR, log_level="INFO")
    env = stack.env()
    backlog = produce_records(settings, count=2000, bad_share=0.0, seed=3)
    service = Service(settings, tmp_path).start()
    try:
        wait_assigned(service)
        wait_committed(settings.kafka_bootstrap, groups(settings), backlog.ends, 120, [service])
        burst = produce_records(settings, count=3000, bad_share=0.01, seed=4)
        ends = {tp: max(backlog.ends.get(tp, 0), end) for tp, end in burst.ends.items()}
        wait_committed(settings.kafka_bootstrap, groups(settings), ends, 120, [service])
    finally:
        code = service.stop()
    assert code == 0, service.log_text()[-2000:]
    s3 = assert_replicated(
        settings,
        env,
        Produced(total=5000, ends=ends, bad=burst.bad | backlog.bad, bad_kinds={}),
    )
    # one object per partition and burst at least; far fewer than records
    ranges = decode_objects(s3).ranges
    assert sum(len(r) for r in ranges.values()) < 5000 // 20


def test_a_trickle_is_cut_by_the_flush_interval_not_per_record(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """Records at 40 a second over six partitions for 9 s: every object holds what its
    partition received during a flush interval, so there are at most a few per partition
    and interval, never one per record."""
    flush = 3.0
    seconds = 9.0
    rate = 40.0
    settings = settings_factory(flush_interval_s=flush, log_level="INFO")
    env = stack.env()
    service = Service(settings, tmp_path).start()
    try:
        wait_assigned(service)
        report = produce(
            settings.kafka_common(),
            settings.topics,
            int(rate * seconds),
            rate,
            5,
            0.0,
            None,
            SchemaRegistry.load(settings.schemas_dir),
            schema_topics=dict(settings.schema_topics),
        )
        assert report.delivered == int(rate * seconds) and report.failed == 0, report
        ends = dict(report.end_offsets)
        wait_committed(settings.kafka_bootstrap, groups(settings), ends, 120, [service])
    finally:
        code = service.stop()
    assert code == 0, service.log_text()[-2000:]
    s3 = assert_replicated(
        settings, env, Produced(total=report.delivered, ends=ends, bad=set(), bad_kinds={})
    )
    objects = sum(len(r) for r in decode_objects(s3).ranges.values())
    partitions = len(ends)
    # each partition: one object per flush interval of the run, one more for the start and
    # the end; a cut per record would make report.delivered objects
    assert objects <= partitions * (seconds / flush + 2) < report.delivered / 4, objects
