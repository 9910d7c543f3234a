"""The dead-letter producer never forgets a record (P6), against a broker of the test's own.

A record whose delivery fails must be sent again: a flush succeeds only once every record
given so far is acknowledged, since the pipeline commits past a bad record only then.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from replicator.kafka.deadletter import H_OFFSET, DeadLetterError, DeadLetterWriter
from tests.support.broker import HOST, free_port, own_tansu

pytestmark = pytest.mark.integration

TOPIC = "dead-letters"


def _create_topic(bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(TOPIC, 1, 1)]).values():
        try:
            future.result(timeout=15)
        except KafkaException as exc:  # the writer's resends may have created it already
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def _origin_offsets(bootstrap: str, expected: int) -> list[int]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "dlq-reader", "enable.auto.commit": False}
    )
    # Every partition: the writer's resend can reach the restarted broker before the test
    # creates the topic, and a topic created by that first produce has the broker's default
    # partition count, with the records wherever their key hashes.
    partitions = consumer.list_topics(TOPIC, timeout=10).topics[TOPIC].partitions
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in partitions])
    out: list[int] = []
    # Until every expected record is read (a loaded machine can be slow to serve the first
    # fetch), then one more idle second for doubles.
    deadline = time.monotonic() + 30
    idle_until = deadline
    while time.monotonic() < min(deadline, idle_until):
        msg = consumer.poll(0.2)
        if msg is None or msg.error() is not None:
            continue
        headers = dict(msg.headers() or [])
        offset = headers[H_OFFSET]
        assert isinstance(offset, bytes)
        out.append(int(offset))
        if len(set(out)) >= expected:
            idle_until = time.monotonic() + 1
    consumer.close()
    return out


def test_failed_dead_letters_are_kept_and_sent_again_until_acknowledged(tmp_path: Path) -> None:
    port = free_port()
    bootstrap = f"{HOST}:{port}"
    with own_tansu(tmp_path / "tansu-1.log", port, port):
        _create_topic(bootstrap)
        writer = DeadLetterWriter(
            # One record a batch: after a batched produce Tansu reports the last batch's base
            # offset + 1 as its high watermark, which can hide a resent batch from the reader.
            {"bootstrap.servers": bootstrap, "message.timeout.ms": 1500, "batch.num.messages": 1},
            TOPIC,
        )
        writer.send(
            topic="t",
            partition=0,
            offset=1,
            timestamp_ms=0,
            key=None,
            value=b"x",
            reason="not_wire_format",
            detail="d",
        )
        writer.flush(timeout=15)
    # The broker is gone: these three cannot be delivered.
    for offset in (2, 3, 4):
        writer.send(
            topic="t",
            partition=0,
            offset=offset,
            timestamp_ms=0,
            key=b"k",
            value=b"bad",
            reason="oversized",
            detail="d",
        )
    with pytest.raises(DeadLetterError, match=r"not delivered|not acknowledged"):
        writer.flush(timeout=4)
    # A second flush must not pretend: the records are still not in the topic.
    with pytest.raises(DeadLetterError):
        writer.flush(timeout=2)
    # The broker is back (empty: its memory engine forgot the topic).
    with own_tansu(tmp_path / "tansu-2.log", port, port):
        _create_topic(bootstrap)
        writer.flush(timeout=30)
        assert writer.undelivered == 0
        delivered = _origin_offsets(bootstrap, 3)
        writer.close()
    # Every record given while the broker was away is there (a resend may double one: the
    # dead-letter topic is at-least-once, each line saying its origin).
    assert sorted(set(delivered)) == [2, 3, 4], delivered
