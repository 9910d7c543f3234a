"""Which oldest-record reads the lag monitor makes in a check (each one is a fetch the broker
serves at a position it must look up), without servers."""

from __future__ import annotations

import itertools

import pytest
from confluent_kafka import TopicPartition as KafkaTP
from hypothesis import given
from hypothesis import strategies as st

from replicator.telemetry.lag import (
    OLDEST_READER_FETCH,
    OLDEST_REFRESH_INTERVALS,
    LagMonitor,
    LagSnapshot,
    PartitionLag,
)
from replicator.telemetry.metrics import Metrics
from tests.unit.telemetry.test_observability import settings

TP0 = ("t", 0)
INTERVAL = 5.0
REFRESH = INTERVAL * OLDEST_REFRESH_INTERVALS


def monitor(previous_oldest: float | None, read_ago: float | None, now: float) -> LagMonitor:
    m = LagMonitor(settings(stores=["s3"], lag_interval_s=INTERVAL), Metrics(stores=["s3"]))
    m.last = LagSnapshot(
        at=0.0,
        high_watermarks={TP0: 100},
        stores={"s3": {TP0: PartitionLag(40, 100, 60, oldest_timestamp_s=previous_oldest)}},
    )
    if read_ago is not None:
        m._read_at[TP0] = now - read_ago
    return m


# (position, high watermark, previous age known, last read seconds ago) -> read now?
CASES = [
    pytest.param(50, 100, True, 1.0, False, id="behind, age known, read recently: kept"),
    pytest.param(50, 100, True, REFRESH - 0.1, False, id="just under the refresh: kept"),
    pytest.param(50, 100, True, REFRESH, True, id="refresh due"),
    pytest.param(50, 100, True, None, True, id="never read"),
    pytest.param(50, 100, False, 1.0, True, id="no age known for the store: read"),
    pytest.param(100, 100, True, 1.0, True, id="at the end by the watermark: read at once"),
    pytest.param(120, 100, True, 1.0, True, id="past the watermark: read at once"),
]


@pytest.mark.parametrize(("pos", "high", "known", "read_ago", "due"), CASES)
def test_a_moved_position_is_read_when_needed_and_otherwise_keeps_the_last_age(
    pos: int, high: int, known: bool, read_ago: float | None, due: bool
) -> None:
    now = 1_000.0
    m = monitor(1.0 if known else None, read_ago, now)
    got = m._reads_due({"s3": {TP0: pos}}, {TP0: (0, high)}, {(TP0, pos)}, now)
    assert got == ({(TP0, pos)} if due else set())


def test_a_known_position_is_never_read_again() -> None:
    now = 1_000.0
    m = monitor(1.0, None, now)
    assert m._reads_due({"s3": {TP0: 50}}, {TP0: (0, 100)}, set(), now) == set()


def test_a_position_below_the_low_watermark_is_read_at_the_low_watermark() -> None:
    now = 1_000.0
    m = monitor(None, None, now)
    got = m._reads_due({"s3": {TP0: 5}}, {TP0: (20, 100)}, {(TP0, 20)}, now)
    assert got == {(TP0, 20)}


@given(st.lists(st.floats(min_value=0.5, max_value=3 * INTERVAL), min_size=1, max_size=60))
def test_a_store_that_moves_at_every_check_is_read_once_per_refresh(gaps: list[float]) -> None:
    """Checks at any spacing, the store's position moving at each: the first check reads,
    reads are at least REFRESH apart, and every check that does not read is within REFRESH
    of the last read."""
    now = 0.0
    m = monitor(1.0, None, now)
    reads: list[float] = []
    for i, gap in enumerate(gaps):
        now += gap
        key = (TP0, 10 + i)
        if m._reads_due({"s3": {TP0: 10 + i}}, {TP0: (0, 1_000)}, {key}, now):
            reads.append(now)
            m._read_at[TP0] = now
        else:
            assert now - reads[-1] < REFRESH
    assert reads[0] == gaps[0]
    assert all(b - a >= REFRESH for a, b in itertools.pairwise(reads))


def test_the_reader_waits_for_one_record_per_partition_not_a_prefetch() -> None:
    # librdkafka's defaults keep fetching until 100,000 records or 64 MiB wait per queue
    assert OLDEST_READER_FETCH["queued.min.messages"] == 1
    assert OLDEST_READER_FETCH["max.partition.fetch.bytes"] <= 1024


TP1, TP2 = ("t", 1), ("t", 2)


@pytest.mark.parametrize(
    ("known", "due", "refresh", "wanted"),
    [
        pytest.param({}, set(), False, [TP0, TP1, TP2], id="first check: every partition"),
        pytest.param({TP0: 0, TP1: 0, TP2: 0}, set(), False, [], id="known: none"),
        pytest.param({TP0: 0, TP1: 0}, set(), False, [TP2], id="a new partition"),
        pytest.param({TP0: 0, TP1: 0, TP2: 0}, {TP1}, False, [TP1], id="out of range: again"),
        pytest.param({TP0: 0, TP1: 0, TP2: 0}, set(), True, [TP0, TP1, TP2], id="refresh: all"),
    ],
)
def test_low_watermarks_are_read_when_new_stale_or_passed_by_retention(
    known: dict[tuple[str, int], int],
    due: set[tuple[str, int]],
    refresh: bool,
    wanted: list[tuple[str, int]],
) -> None:
    m = monitor(None, None, 0.0)
    m._lows.update(known)
    m._lows_due.update(due)
    assert m._lows_wanted([TP0, TP1, TP2], refresh) == wanted


class _Meta:
    def __init__(self, partitions: int) -> None:
        self.error = None
        self.partitions = {p: None for p in range(partitions)}


class _Metadata:
    def __init__(self, partitions: int) -> None:
        self.topics = {"t": _Meta(partitions)}


class _Reader:
    """Answers list_topics with the topic's current partition count; counts the requests."""

    def __init__(self) -> None:
        self.partitions = 2
        self.requests = 0

    def list_topics(self, timeout: float) -> _Metadata:
        self.requests += 1
        return _Metadata(self.partitions)


@pytest.mark.parametrize("checks", range(1, 3 * OLDEST_REFRESH_INTERVALS + 2))
def test_partitions_are_read_from_metadata_every_refresh_and_after_a_failed_check(
    checks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = itertools.count(0.0, INTERVAL)  # one check per interval
    monkeypatch.setattr("replicator.telemetry.lag.time.monotonic", lambda: next(clock))
    m = monitor(None, None, 0.0)
    reader = _Reader()
    for i in range(checks):
        if i == 1:
            reader.partitions = 3  # a partition added after the first check
        got = m._partitions(reader)  # type: ignore[arg-type]
    # one request at the first check, then one every OLDEST_REFRESH_INTERVALS checks
    assert reader.requests == 1 + (checks - 1) // OLDEST_REFRESH_INTERVALS
    seen_new = checks > OLDEST_REFRESH_INTERVALS
    assert got == [("t", 0), ("t", 1), *([("t", 2)] if seen_new else [])]
    reader.partitions = 3
    m._tps = None  # what a failed check does (check_safely): the next check reads again
    assert m._partitions(reader) == [("t", 0), ("t", 1), ("t", 2)]  # type: ignore[arg-type]
    assert reader.requests == 2 + (checks - 1) // OLDEST_REFRESH_INTERVALS


class _Record:
    def __init__(self, tp: tuple[str, int], offset: int) -> None:
        self.tp, self.at = tp, offset

    def topic(self) -> str:
        return self.tp[0]

    def partition(self) -> int:
        return self.tp[1]

    def error(self) -> None:
        return None

    def offset(self) -> int:
        return self.at

    def timestamp(self) -> tuple[int, int]:
        return 1, 1_000 * (self.at + 1)  # CreateTime, in ms: offset + 1 seconds


class _FetchingReader:
    """A consumer assigned at positions, fetching as librdkafka does with
    queued.min.messages 1: each partition whose first record has arrived (at the turn of
    `arrivals`, None: never) is fetched again at every later turn unless paused, and that
    fetch brings its next record. Counts those fetches, and records every pause, which
    (as in librdkafka) outlives an unassign until resumed."""

    paused_ever: set[tuple[str, int]]

    def __init__(self, arrivals: dict[tuple[str, int], int | None]) -> None:
        self.arrivals = arrivals
        self.turn = 0
        self.next: dict[tuple[str, int], int] = {}
        self.paused: set[tuple[str, int]] = set()
        self.paused_ever = set()
        self.refetches = 0

    def assign(self, tps: list[KafkaTP]) -> None:
        self.next = {(tp.topic, tp.partition): tp.offset for tp in tps}

    def consume(self, num_messages: int, timeout: float) -> list[_Record]:
        out: list[_Record] = []
        for tp, at in self.next.items():
            arrival = self.arrivals[tp]
            if arrival is None or self.turn < arrival or tp in self.paused:
                continue
            if self.turn > arrival:
                self.refetches += 1  # fetched again: a look-up nobody needed
            out.append(_Record(tp, at))
            self.next[tp] = at + 1
        self.turn += 1
        return out

    def pause(self, tps: list[KafkaTP]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in tps}
        self.paused_ever |= self.paused

    def resume(self, tps: list[KafkaTP]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in tps}

    def unassign(self) -> None:
        self.next = {}  # paused partitions stay paused (librdkafka does so)


@given(
    st.dictionaries(
        st.integers(min_value=0, max_value=11),
        st.one_of(st.none(), st.integers(min_value=0, max_value=5)),
        min_size=1,
    )
)
def test_a_partition_that_answered_is_not_fetched_again_while_others_wait(
    arrivals: dict[int, int | None],
) -> None:
    """Partitions answering at any turns (or never, until the read's timeout): each answered
    one gets the timestamp of its first record at the position, and is paused at once (no
    fetch after its answer); one that never answers is left to the timeout; none is left
    paused after the read, and the next read of the same partitions answers again."""
    m = monitor(None, None, 0.0)
    m._timeout = 0.02
    reader = _FetchingReader({("t", p): turn for p, turn in arrivals.items()})
    wanted = {(("t", p), 10 * p) for p in arrivals}
    empty = m._read_oldest(reader, wanted, now=0.0)  # type: ignore[arg-type]
    assert empty == set()
    answered = {("t", p) for p, turn in arrivals.items() if turn is not None}
    assert m._oldest == {(tp, 10 * tp[1]): 10 * tp[1] + 1.0 for tp in answered}
    assert reader.refetches == 0
    assert reader.paused_ever == answered
    assert reader.paused == set()
    m._oldest.clear()
    reader.turn = 0
    m._read_oldest(reader, wanted, now=0.0)  # type: ignore[arg-type]
    assert set(m._oldest) == {(tp, 10 * tp[1]) for tp in answered}
