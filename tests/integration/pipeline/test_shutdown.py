"""Shutdown: bounded whatever a store does, and a replica stopped while it joins the group
does not block the next one.

A hung store is a real server process stopped with SIGSTOP (its port still accepts
connections, nothing answers), at two moments: while the service lists the stores for a new
assignment, and in steady state under load with puts under way. The bound checked is the
product's promise (exit within `shutdown_timeout_s` plus a small constant), then the store
is resumed, the service started again, and an independent reader (tests/support/checker.py)
counts records lost, doubled or different between the stores.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from replicator.config import Settings
from replicator.devtools.stack import LocalStack
from replicator.pipeline.service import live_consumer_config
from tests.integration.pipeline.test_faults import PARTITIONS, Load, Run, count, events, wait_events
from tests.support.produce import produce_records
from tests.support.service import Service, frozen, wait_committed

pytestmark = pytest.mark.integration

SHUTDOWN_S = 5.0
# What the shutdown may take past shutdown_timeout_s: the final commits and the consumer's
# leave, against a broker that answers (the Helm chart's grace adds 15 s to the setting).
MARGIN_S = 5.0


def stop_timed(svc: Service) -> tuple[float, int]:
    """SIGTERM; (seconds until the process exited, exit code)."""
    assert svc.proc is not None
    started = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    code = svc.proc.wait(timeout=SHUTDOWN_S + 120)
    return time.monotonic() - started, code


@pytest.mark.parametrize("moment", ["assigning", "steady"])
@pytest.mark.parametrize("store", ["s3", "azure"])
def test_shutdown_is_bounded_when_a_store_hangs(
    store: str,
    moment: str,
    stack: LocalStack,
    settings_factory: Any,
    tmp_path: Path,
) -> None:
    settings: Settings = settings_factory(
        chunk_max_records=100, flush_interval_s=0.5, shutdown_timeout_s=SHUTDOWN_S
    )
    run = Run(stack, settings, tmp_path, random.Random(f"{store}/{moment}"), 0)
    svc = run.service("a")
    with Load(settings, 150, 0.2, seed=len(store) + len(moment)) as load:
        svc.start()
        if moment == "assigning":
            # The stores are probed before the group join; the first store call after it is
            # the listing of each assigned partition.
            wait_events(svc, "joining_group")
            with frozen(stack, store):
                wait_events(svc, "partitions_assigning")
                time.sleep(1.0)  # into the listing of the frozen store
                took, code = stop_timed(svc)
        else:
            wait_events(svc, "partition_assigned", 2 * PARTITIONS)
            time.sleep(2.0)  # objects written and committed in both stores
            with frozen(stack, store):
                time.sleep(2.0)  # puts to the frozen store under way, none answered
                took, code = stop_timed(svc)
    print(f"{store} {moment}: SIGTERM to exit {took:.1f}s (shutdown_timeout_s={SHUTDOWN_S:g})")
    assert code == 0, svc.log_text()[-3000:]
    assert took <= SHUTDOWN_S + MARGIN_S, f"exit took {took:.1f}s\n{svc.log_text()[-3000:]}"
    if moment == "assigning":
        # The stop came while the stores were listed: no partition was taken further.
        assert events(svc, "assignment_abandoned"), svc.log_text()[-3000:]
    else:
        # The drain waited for puts that never ended: they were given up, uncommitted.
        abandoned = events(svc, "puts_abandoned")
        assert abandoned and store in abandoned[-1]["stores"], svc.log_text()[-3000:]
    produced = load.produced
    try:
        run.finish(produced, [svc])  # started again, with the store answering again
    finally:
        run.close()
    got = count(run, produced)
    assert (got.lost, got.doubled, got.divergent) == (0, 0, 0), got
    assert run.conflicts() == 0
    assert not run.problems, run.problems


def test_a_replica_stopped_while_it_joins_does_not_block_the_next_one(
    stack: LocalStack, admin: AdminClient, settings_factory: Any, tmp_path: Path
) -> None:
    settings: Settings = settings_factory()
    produced = produce_records(settings, 300, 0.0, seed=6)

    # The client side: the live consumer's own settings, closed while its JoinGroup is
    # pending, sends LeaveGroup with its member id and the broker accepts it.
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("test_shutdown.rdkafka")
    logger.addHandler(Capture())
    logger.setLevel(logging.DEBUG)
    conf = {**live_consumer_config(settings), "debug": "cgrp", "group.id": f"{settings.group_id}.p"}
    probe = Consumer(conf, logger=logger)
    probe.subscribe(settings.topics, on_assign=lambda *_: lines.append("ASSIGNED"))
    deadline = time.monotonic() + 30
    while not any(
        "JoinGroup response" in line and "needs a valid member ID" in line for line in lines
    ):
        assert time.monotonic() < deadline, "\n".join(lines[-20:])
        probe.poll(0.05)
    probe.close()
    assert "ASSIGNED" not in lines  # closed while joining
    assert any("leave (in state up)" in line for line in lines), "\n".join(lines[-40:])
    assert any("LeaveGroup response received" in line for line in lines), "\n".join(lines[-40:])
    assert not any("LeaveGroup response error" in line for line in lines)

    # The service: SIGTERM inside its join (Tansu answers a join after about half of
    # session_timeout_ms, 3 s here); it exits 0 at once, having taken no partition.
    a = Service(settings, tmp_path, "a").start()
    wait_events(a, "joining_group")
    assert a.stop(timeout=30) == 0, a.log_text()[-3000:]
    assert not events(a, "partition_assigned"), a.log_text()[-3000:]
    assert events(a, "stopped"), a.log_text()[-3000:]  # logged once the consumer is closed

    # Tansu's quirk (not Kafka's): a member whose LeaveGroup arrives while its JoinGroup is
    # pending stays in the group as its leader, and every later member waits for its
    # SyncGroup forever (seen for minutes, whatever max.poll.interval.ms, with a bare
    # client as with the service), though the group is described as empty. On Kafka the
    # LeaveGroup removes it at once. The test deletes the group, as Kafka allows for an empty
    # one; it holds nothing of the service's (no offset is ever committed to it: each
    # store's progress is a group of its own).
    described = admin.describe_consumer_groups([settings.group_id])[settings.group_id].result()
    assert not described.members
    admin.delete_consumer_groups([settings.group_id])[settings.group_id].result()

    b = Service(settings, tmp_path, "b").start()
    try:
        assigned = wait_events(b, "partition_assigned", 2 * PARTITIONS, timeout=30)
        owned = {(e["topic"], e["partition"]) for e in assigned}
        assert owned == {(t, p) for t in settings.topics for p in range(PARTITIONS)}
        groups = [settings.progress_group(s) for s in settings.stores]
        wait_committed(settings.kafka_bootstrap, groups, produced.ends, 60, [b])
    finally:
        assert b.stop() == 0, b.log_text()[-3000:]
