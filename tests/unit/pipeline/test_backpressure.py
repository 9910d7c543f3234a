"""Which lane leaves the live stream when queues pass their share (pure logic)."""

from __future__ import annotations

from replicator.pipeline.backpressure import too_slow

SHARE = 32 * 1024 * 1024


def test_a_lane_past_its_share_is_dropped_while_the_other_keeps_up() -> None:
    lanes = {"s3": (SHARE // 4, True), "azure": (SHARE + 1, True)}
    assert too_slow(lanes, SHARE) == ["azure"]


def test_no_lane_is_dropped_when_every_queue_grows_together() -> None:
    # Encoding or this process's CPU is the bottleneck: dropping a lane would only make it
    # read everything again; the live consumer pauses instead.
    assert too_slow({"s3": (SHARE + 1, True), "azure": (SHARE - 1, True)}, SHARE) == []
    assert too_slow({"s3": (SHARE + 1, True), "azure": (SHARE // 2 + 1, True)}, SHARE) == []


def test_the_other_lane_must_take_live_partitions_to_count_as_keeping_up() -> None:
    # An idle catching-up lane with an empty queue is not proof that stores keep up.
    assert too_slow({"s3": (SHARE + 1, True), "azure": (0, False)}, SHARE) == []


def test_a_lane_alone_is_never_dropped() -> None:
    assert too_slow({"s3": (10 * SHARE, True)}, SHARE) == []
    assert too_slow({}, SHARE) == []
