"""The service's parts alone, with plain values: back-pressure decides what to pause and
which lane is too slow; the checkpoint flushes the dead letters before any commit and
commits each store only what it holds."""

from __future__ import annotations

from typing import cast

import pytest
from confluent_kafka import KafkaException
from hypothesis import given
from hypothesis import strategies as st

from replicator.chunking import ChunkRules, CutPlan, PartitionChunker
from replicator.kafka.deadletter import DeadLetterError, DeadLetterWriter
from replicator.kafka.progress import ProgressLog
from replicator.model import TP
from replicator.pipeline.backpressure import HOLD_BEFORE_PAUSE_S, BackPressure
from replicator.pipeline.checkpoint import DLQ_WAIT_S, Checkpoint
from replicator.pipeline.daemonpool import DaemonPool
from replicator.pipeline.state import Lane, LaneMode, PartitionState, ServiceState
from replicator.schemas import SchemaRegistry
from replicator.stores.base import Store
from replicator.telemetry.metrics import Metrics
from tests.support.settings import offline_settings

MIB = 1024 * 1024
TPS: list[TP] = [("t", 0), ("t", 1)]


class NamedStore:
    def __init__(self, name: str) -> None:
        self.name = name


class Progress:
    """Records the commits it is asked for; refuses when told to."""

    def __init__(self, log: list[str], name: str, refuse: bool = False) -> None:
        self.log, self.name, self.refuse = log, name, refuse
        self.commits: list[dict[TP, int]] = []

    def commit(self, offsets: dict[TP, int]) -> None:
        self.log.append(f"commit {self.name}")
        if self.refuse:
            raise KafkaException("refused")
        self.commits.append(dict(offsets))


class DeadLetters:
    def __init__(self, log: list[str], fails: bool) -> None:
        self.log, self.fails, self.undelivered = log, fails, 3

    def flush(self, timeout: float) -> None:
        self.log.append("flush dead letters")
        if self.fails:
            raise DeadLetterError("not acknowledged")


def state(lanes: int = 2, max_buffer_bytes: int = 8 * MIB) -> ServiceState:
    settings = offline_settings(dead_letter_topic="dlq", max_buffer_bytes=max_buffer_bytes)
    rules = ChunkRules.from_settings(settings)
    made = ServiceState(
        settings=settings,
        registry=cast(SchemaRegistry, None),
        metrics=Metrics(stores=["s3", "azure"][:lanes], topics=["t"]),
        rules=rules,
        lanes=[
            Lane(store=cast(Store, NamedStore(name)), executor=cast(DaemonPool, None))
            for name in ["s3", "azure"][:lanes]
        ],
    )
    for tp in TPS:
        plan = CutPlan()
        made.parts[tp] = PartitionState(tp, PartitionChunker(tp[0], tp[1], rules, 0, plan), plan)
    return made


# --- back-pressure ---------------------------------------------------------------------


def test_a_full_lane_holds_the_loop_then_pauses_its_partitions() -> None:
    s = state()
    s3, azure = s.lanes
    s3.live.update(TPS)
    azure.live.update(TPS)
    s3.pending_bytes = s.max_lane_bytes + 1
    pressure = BackPressure(s)
    assert pressure.holding(100.0)
    assert pressure.pauses(100.0) == ([], [])  # held, not yet for long
    assert not pressure.holding(100.0 + HOLD_BEFORE_PAUSE_S)
    paused, resumed = pressure.pauses(100.0 + HOLD_BEFORE_PAUSE_S)
    assert sorted((k.topic, k.partition) for k in paused) == TPS
    assert resumed == []
    s3.pending_bytes = 0
    assert not pressure.holding(200.0)
    paused, resumed = pressure.pauses(200.0)
    assert paused == [] and sorted((k.topic, k.partition) for k in resumed) == TPS


def test_a_partition_no_lane_takes_is_paused_and_resumed_when_one_does() -> None:
    s = state()
    pressure = BackPressure(s)
    paused, _ = pressure.pauses(0.0)
    assert sorted((k.topic, k.partition) for k in paused) == TPS
    s.lanes[0].live.add(TPS[0])
    paused, resumed = pressure.pauses(0.0)
    assert paused == [] and [(k.topic, k.partition) for k in resumed] == [TPS[0]]


@pytest.mark.parametrize(
    ("s3_bytes", "azure_bytes", "slow"),
    [
        (0, 0, []),
        (5 * MIB, 0, ["s3"]),  # past its share while the other keeps up
        (5 * MIB, 5 * MIB, []),  # both grow together: a shared bottleneck, pause instead
        (5 * MIB, 3 * MIB, []),  # the other is over half its share: not keeping up
    ],
)
def test_too_slow_drops_only_a_lane_that_falls_behind_another(
    s3_bytes: int, azure_bytes: int, slow: list[str]
) -> None:
    s = state()  # 4 MiB per lane
    for lane, pending in zip(s.lanes, (s3_bytes, azure_bytes), strict=True):
        lane.live.update(TPS)
        lane.pending_bytes = pending
    assert BackPressure(s).too_slow_lanes() == slow
    s.lanes[1].mode = LaneMode.DOWN  # only UP lanes are weighed
    assert BackPressure(s).too_slow_lanes() == []


# --- checkpoint ------------------------------------------------------------------------


def _with_positions(s: ServiceState, log: list[str], refuse: str = "") -> dict[str, Progress]:
    progress = {}
    for lane in s.lanes:
        progress[lane.name] = Progress(log, lane.name, refuse=lane.name == refuse)
        lane.progress = cast(ProgressLog, progress[lane.name])
        lane.positions = {TPS[0]: 10, TPS[1]: 5}
        lane.committed = {TPS[0]: 10, TPS[1]: 0}
    return progress


def test_dead_letters_are_flushed_before_any_commit() -> None:
    log: list[str] = []
    s = state()
    progress = _with_positions(s, log)
    s.dlq, s.dlq_dirty = cast(DeadLetterWriter, DeadLetters(log, fails=False)), True
    Checkpoint(s).commit(force=True)
    assert log == ["flush dead letters", "commit s3", "commit azure"]
    assert not s.dlq_dirty
    # only what moved since the last commit
    assert progress["s3"].commits == [{TPS[1]: 5}] == progress["azure"].commits
    assert s.lanes[0].committed == {TPS[0]: 10, TPS[1]: 5}


def test_no_commit_passes_a_dead_letter_not_acknowledged() -> None:
    log: list[str] = []
    s = state()
    _with_positions(s, log)
    s.dlq, s.dlq_dirty = cast(DeadLetterWriter, DeadLetters(log, fails=True)), True
    Checkpoint(s).commit(force=True)
    assert log == ["flush dead letters"]
    assert s.dlq_dirty
    assert all(lane.committed[TPS[1]] == 0 for lane in s.lanes)


def test_a_refused_commit_leaves_that_store_uncommitted_and_the_other_goes_on() -> None:
    log: list[str] = []
    s = state()
    _with_positions(s, log, refuse="s3")
    Checkpoint(s).commit()
    assert log == ["commit s3", "commit azure"]
    s3, azure = s.lanes
    assert s3.committed[TPS[1]] == 0 and azure.committed[TPS[1]] == 5


# --- checkpoint: commits that do not wait for the dead letters in flight -----------------


TP_OFFSET = tuple[TP, int]


class Letters:
    """A dead-letter writer whose acknowledgements the test gives: letter `seq` is for the
    record at `offsets[seq]`; `flush` acknowledges all (or fails)."""

    def __init__(self) -> None:
        self.offsets: dict[int, TP_OFFSET] = {}
        self.pending: set[int] = set()
        self.flush_fails = False
        self.flushes = 0
        self.flushes_failed = 0

    def give(self, tp: TP, offset: int) -> None:
        seq = len(self.offsets) + 1
        self.offsets[seq] = (tp, offset)
        self.pending.add(seq)

    def mark(self) -> int:
        return len(self.offsets)

    def delivered_through(self, mark: int) -> bool:
        return not any(seq <= mark for seq in self.pending)

    @property
    def undelivered(self) -> int:
        return len(self.pending)

    def flush(self, timeout: float) -> None:
        self.flushes += 1
        if self.flush_fails:
            self.flushes_failed += 1
            raise DeadLetterError("not acknowledged")
        self.pending.clear()


def undelivered_gauge(s: ServiceState) -> float:
    value = s.metrics.registry.get_sample_value("replicator_dead_letter_undelivered_records")
    assert value is not None
    return value


# one step: (kind, partition, amount): read `amount` records of a partition (the last one
# bad: dead-lettered), acknowledge the letters given so far but the last `amount`, let
# `amount` tenths of a second pass and commit (forced when amount is 9)
STEPS = st.lists(
    st.tuples(st.sampled_from(["read", "ack", "commit"]), st.integers(0, 1), st.integers(0, 9)),
    max_size=40,
)


@given(STEPS, st.booleans())
def test_no_commit_passes_an_unacknowledged_dead_letter_and_all_is_committed_in_the_end(
    steps: list[tuple[str, int, int]], flush_fails: bool
) -> None:
    clock = [100.0]
    s = state()
    letters = Letters()
    letters.flush_fails = flush_fails
    s.dlq = cast(DeadLetterWriter, letters)
    for lane in s.lanes:
        lane.progress = cast(ProgressLog, Progress([], lane.name))
        lane.positions = {tp: 0 for tp in TPS}
        lane.committed = {}
    checkpoint = Checkpoint(s)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("replicator.pipeline.checkpoint.time.monotonic", lambda: clock[0])
        for kind, partition, amount in steps:
            tp = TPS[partition]
            if kind == "read" and amount:
                bad = s.lanes[0].positions[tp] + amount - 1
                letters.give(tp, bad)  # judged before the chunk holding it is stored
                s.dlq_dirty = True
                for lane in s.lanes:
                    lane.positions[tp] += amount
            elif kind == "ack":
                for seq in sorted(letters.pending)[: max(len(letters.pending) - amount, 0)]:
                    letters.pending.discard(seq)
            elif kind == "commit":
                clock[0] += amount / 10
                checkpoint.commit(force=amount == 9)
            # a committed offset c says every record below c is done: no letter of one of
            # them may still be waiting for its acknowledgement
            waiting = [letters.offsets[seq] for seq in letters.pending]
            for lane in s.lanes:
                for wtp, offset in waiting:
                    assert lane.committed.get(wtp, 0) <= offset, (lane.name, wtp, offset)
            # letters merely in flight are not "undelivered" (its alert pages): only a
            # flush that failed sets the gauge
            if letters.flushes_failed == 0:
                assert undelivered_gauge(s) == 0
        # everything acknowledged: two regular commits later, every position is committed
        letters.pending.clear()
        for _ in range(2):
            clock[0] += 1
            checkpoint.commit()
    for lane in s.lanes:
        assert {tp: lane.committed.get(tp, 0) for tp in TPS} == lane.positions
    assert not s.dlq_dirty


def test_a_regular_commit_waits_for_no_dead_letter_and_flushes_only_after_dlq_wait() -> None:
    clock = [100.0]
    s = state()
    letters = Letters()
    s.dlq = cast(DeadLetterWriter, letters)
    for lane in s.lanes:
        lane.progress = cast(ProgressLog, Progress([], lane.name))
        lane.positions = {TPS[0]: 10, TPS[1]: 0}
        lane.committed = {}
    letters.give(TPS[0], 4)
    s.dlq_dirty = True
    checkpoint = Checkpoint(s)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("replicator.pipeline.checkpoint.time.monotonic", lambda: clock[0])
        checkpoint.commit()  # positions taken, nothing committed, no flush
        assert letters.flushes == 0 and s.lanes[0].committed == {}
        clock[0] += DLQ_WAIT_S - 0.1
        checkpoint.commit()  # still in flight: still waiting, still no flush
        assert letters.flushes == 0 and s.lanes[0].committed == {}
        clock[0] += 0.1
        checkpoint.commit()  # DLQ_WAIT_S passed: flush, then the current positions
        assert letters.flushes == 1
        assert s.lanes[0].committed == {TPS[0]: 10, TPS[1]: 0}
