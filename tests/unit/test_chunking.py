"""Chunk cutting: each rule cuts exactly where documented, chunks are contiguous, records
of several writer schemas share a chunk (each keeping its schema id), and a replay that
follows the plan of cuts already made cuts exactly the same chunks."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator.chunking import (
    END_QUIET_GAPS,
    END_QUIET_S,
    Chunk,
    ChunkRules,
    CutPlan,
    PartitionChunker,
    PlanConflict,
    end_of_burst,
)
from replicator.keys import ChunkKey
from replicator.model import RawRecord

TOPIC = "snds.reimbursements"
BIG = 10**9


def rules(
    max_records: int = BIG,
    max_bytes: int = BIG,
    window_ms: int = BIG,
    flush_interval_s: float = 60.0,
) -> ChunkRules:
    return ChunkRules(max_records, max_bytes, window_ms, flush_interval_s)


def rec(offset: int, size: int = 1, ts: int = 0) -> RawRecord:
    return RawRecord(offset=offset, timestamp_ms=ts, key=None, body=bytes([offset % 256]) * size)


def chunker(r: ChunkRules, start: int = 0, plan: CutPlan | None = None) -> PartitionChunker:
    return PartitionChunker(TOPIC, 0, r, start, plan if plan is not None else CutPlan())


Step = tuple[int, RawRecord | None, int | None]  # offset, record (None: dead-lettered), schema


def feed(c: PartitionChunker, steps: Sequence[Step], now: float = 0.0) -> list[Chunk]:
    out: list[Chunk] = []
    for offset, record, schema_id in steps:
        out.extend(c.add(offset, record, schema_id, now))
    return out


def good(offsets: range | list[int], schema_id: int = 1, size: int = 1, ts: int = 0) -> list[Step]:
    return [(o, rec(o, size, ts), schema_id) for o in offsets]


def spans(chunks: list[Chunk]) -> list[tuple[int, int, str]]:
    return [(c.first, c.last, c.reason) for c in chunks]


def offsets_of(chunk: Chunk) -> list[int]:
    return [r.offset for r in chunk.records]


def all_cuts(plan: CutPlan) -> list[tuple[int, int]]:
    return plan.overlapping(0, 2**63)


# -- count ---------------------------------------------------------------------------------
def test_count_cuts_every_max_records_offsets() -> None:
    c = chunker(rules(max_records=3))
    chunks = feed(c, good(range(8)))
    assert spans(chunks) == [(0, 2, "count"), (3, 5, "count")]
    assert [offsets_of(ch) for ch in chunks] == [[0, 1, 2], [3, 4, 5]]
    assert (c.open_first, c.position, c.open_offsets) == (6, 8, 2)


def test_count_counts_offsets_not_records() -> None:
    """Dead-lettered offsets take room in the chunk like any other offset."""
    c = chunker(rules(max_records=3))
    chunks = feed(c, [(0, rec(0), 1), (1, None, None), (2, rec(2), 1)])
    assert spans(chunks) == [(0, 2, "count")]
    assert offsets_of(chunks[0]) == [0, 2]
    assert chunks[0].skipped == 1


def test_max_records_one_gives_one_offset_per_chunk() -> None:
    chunks = feed(chunker(rules(max_records=1), start=10), good(range(10, 13)))
    assert spans(chunks) == [(10, 10, "count"), (11, 11, "count"), (12, 12, "count")]


# -- bytes ---------------------------------------------------------------------------------
def test_bytes_cut_before_the_record_that_would_pass_max_bytes() -> None:
    c = chunker(rules(max_bytes=10))
    steps = [(0, rec(0, 4), 1), (1, rec(1, 4), 1), (2, rec(2, 2), 1), (3, rec(3, 1), 1)]
    chunks = feed(c, steps)
    assert spans(chunks) == [(0, 2, "bytes")]  # 4 + 4 + 2 == 10 is allowed
    assert sum(len(r.body) for r in chunks[0].records) == 10
    assert (c.open_first, c.open_bytes) == (3, 1)


def test_a_single_oversize_record_is_alone() -> None:
    c = chunker(rules(max_bytes=10))
    steps = [(0, rec(0, 3), 1), (1, rec(1, 25), 1), (2, rec(2, 3), 1), (3, rec(3, 3), 1)]
    chunks = feed(c, steps)
    assert spans(chunks) == [(0, 0, "bytes"), (1, 1, "bytes")]
    assert [offsets_of(ch) for ch in chunks] == [[0], [1]]
    assert c.open_first == 2


def test_an_oversize_record_first_in_a_chunk_is_alone() -> None:
    c = chunker(rules(max_bytes=10))
    chunks = feed(c, [(0, rec(0, 11), 1), (1, rec(1, 1), 1)])
    assert spans(chunks) == [(0, 0, "bytes")]
    assert c.open_first == 1


def test_dead_lettered_offsets_do_not_count_bytes() -> None:
    c = chunker(rules(max_bytes=10))
    chunks = feed(c, [(0, rec(0, 10), 1), (1, None, None), (2, None, None), (3, rec(3, 1), 1)])
    assert spans(chunks) == [(0, 2, "bytes")]
    assert chunks[0].skipped == 2


# -- window --------------------------------------------------------------------------------
def test_window_cuts_on_record_time_not_arrival() -> None:
    c = chunker(rules(window_ms=1_000))
    steps = [
        (0, rec(0, ts=0), 1),
        (1, rec(1, ts=999), 1),
        (2, rec(2, ts=1_000), 1),  # next window
        (3, rec(3, ts=1_999), 1),
        (4, rec(4, ts=1_500), 1),  # late record of the same window: stays
        (5, rec(5, ts=900), 1),  # late record of an earlier window: cut
    ]
    chunks = feed(c, steps, now=123.0)
    assert spans(chunks) == [(0, 1, "window"), (2, 4, "window")]
    assert c.open_first == 5


def test_window_of_negative_timestamps_is_floored() -> None:
    """Kafka gives -1 for a record without timestamp: it falls in the window before 0."""
    chunks = feed(chunker(rules(window_ms=1_000)), [(0, rec(0, ts=-1), 1), (1, rec(1, ts=0), 1)])
    assert spans(chunks) == [(0, 0, "window")]


# -- schema ids ----------------------------------------------------------------------------
def test_records_of_different_schemas_share_a_chunk() -> None:
    """No cut on a schema change (a rolling upgrade interleaves versions): records keep
    their order, and each its own schema id."""
    c = chunker(rules())
    steps = good([0, 1], schema_id=7) + good([2], schema_id=8) + good([3, 4], schema_id=7)
    assert feed(c, steps) == []
    chunk = c.flush()
    assert chunk == Chunk(TOPIC, 0, 0, 4, [rec(o) for o in range(5)], [7, 7, 8, 7, 7], 0, "flush")


def test_schema_ids_follow_their_records_across_rule_cuts() -> None:
    c = chunker(rules(max_records=3))
    ids = [1, 3, 1, 3, 3, 1, 2]
    chunks = feed(c, [(o, rec(o), sid) for o, sid in enumerate(ids)])
    assert spans(chunks) == [(0, 2, "count"), (3, 5, "count")]
    assert [(offsets_of(ch), ch.schema_ids) for ch in chunks] == [
        ([0, 1, 2], [1, 3, 1]),
        ([3, 4, 5], [3, 3, 1]),
    ]
    last = c.flush()
    assert last is not None
    assert (offsets_of(last), last.schema_ids) == ([6], [2])


def test_a_schema_change_does_not_change_which_rule_cuts() -> None:
    c = chunker(rules(max_bytes=1, window_ms=10))
    chunks = feed(c, [(0, rec(0, 1, ts=0), 1), (1, rec(1, 5, ts=50), 2)])
    assert spans(chunks) == [(0, 0, "window")]
    assert chunks[0].schema_ids == [1]
    c = chunker(rules(max_bytes=3))
    chunks = feed(c, [(0, rec(0, 1), 1), (1, rec(1, 2), 2), (2, rec(2, 1), 1)])
    assert spans(chunks) == [(0, 1, "bytes")]
    assert chunks[0].schema_ids == [1, 2]


def test_dead_lettered_offsets_never_cut_by_rules() -> None:
    """A dead-lettered offset has no schema, time or body: no rule applies to it, and a
    schema id given with it is not kept."""
    c = chunker(rules(max_bytes=2, window_ms=10))
    chunks = feed(
        c, [(0, rec(0, 1, ts=0), 1), (1, None, 2), (2, None, None), (3, rec(3, 1, ts=5), 1)]
    )
    assert chunks == []
    assert c.flush() == Chunk(
        TOPIC, 0, 0, 3, [rec(0, 1, ts=0), rec(3, 1, ts=5)], [1, 1], 2, "flush"
    )


def test_chunk_of_dead_letters_only() -> None:
    c = chunker(rules(max_records=3))
    chunks = feed(c, [(0, None, None), (1, None, 4), (2, None, None)])
    assert chunks == [Chunk(TOPIC, 0, 0, 2, [], [], 3, "count")]


def test_first_record_after_dead_letters_keeps_its_schema() -> None:
    c = chunker(rules(max_records=3))
    chunks = feed(c, [(0, None, None), (1, rec(1), 5), (2, rec(2), 6)])
    assert spans(chunks) == [(0, 2, "count")]
    assert chunks[0].schema_ids == [5, 6]
    assert chunks[0].skipped == 1


def test_a_cut_chunk_keeps_its_own_lists() -> None:
    """The open chunk's lists are handed over at the cut, not shared with the next one."""
    c = chunker(rules(max_records=2))
    (first,) = feed(c, good([0, 1], schema_id=4))
    feed(c, good([2], schema_id=9))
    assert (first.records, first.schema_ids) == ([rec(0), rec(1)], [4, 4])
    first.schema_ids.append(99)
    last = c.flush()
    assert last is not None
    assert last.schema_ids == [9]


def test_a_record_without_a_schema_id_is_refused() -> None:
    c = chunker(rules())
    with pytest.raises(ValueError, match="a record needs its writer schema id"):
        c.add(0, rec(0), None, now=0.0)
    assert (c.open_first, c.position, c.flush()) == (0, 0, None)


@pytest.mark.parametrize(
    ("r", "known", "next_offset", "closed"),
    [
        (rules(window_ms=10), [], 1, [(0, 0, "window")]),  # a rule cut is due
        (rules(max_bytes=1), [], 1, [(0, 0, "bytes")]),
        (rules(), [(0, 1), (2, 2)], 3, [(0, 1, "plan"), (2, 2, "plan")]),  # known cuts
        (rules(), [(2, 5)], 2, [(0, 1, "align")]),
        (rules(), [], 0, []),  # below the position
    ],
)
def test_a_refused_record_changes_nothing(
    r: ChunkRules,
    known: list[tuple[int, int]],
    next_offset: int,
    closed: list[tuple[int, int, str]],
) -> None:
    """The check comes before any cut: the chunks the record would have closed are not lost
    (closed, recorded in the plan, and never returned); the same record with its schema id
    then closes them."""
    plan = CutPlan()
    for first, last in known:
        plan.add(first, last)
    c = chunker(r, plan=plan)
    feed(c, [(0, rec(0, 1, ts=0), 1)])
    state = (c.open_first, c.position, c.open_bytes, all_cuts(plan))
    late = rec(next_offset, 1, ts=20)
    with pytest.raises(ValueError, match="a record needs its writer schema id"):
        c.add(next_offset, late, None, now=5.0)
    assert (c.open_first, c.position, c.open_bytes, all_cuts(plan)) == state
    assert spans(c.add(next_offset, late, 2, now=5.0)) == closed


# -- contiguity, gaps, ignored offsets -----------------------------------------------------
def test_gap_is_covered_by_the_chunk_that_takes_the_next_record() -> None:
    c = chunker(rules(max_records=2))
    chunks = feed(c, good([0, 1, 5, 6]))
    assert spans(chunks) == [(0, 1, "count"), (2, 5, "count")]
    assert chunks[1].skipped == 3
    assert offsets_of(chunks[1]) == [5]


def test_gap_after_a_rule_cut_goes_to_the_next_chunk() -> None:
    """Window and bytes cuts end at the last offset taken, not before the gap."""
    for r, second in [
        (rules(window_ms=10), (5, rec(5, ts=10), 1)),
        (rules(max_bytes=1), (5, rec(5), 1)),
    ]:
        c = chunker(r)
        chunks = feed(c, [(0, rec(0), 1), second])
        assert [(ch.first, ch.last, ch.skipped) for ch in chunks] == [(0, 0, 0)]
        flushed = c.flush()
        assert flushed is not None
        assert (flushed.first, flushed.last, flushed.skipped) == (1, 5, 4)
        assert offsets_of(flushed) == [5]


def test_gap_at_the_start_is_covered() -> None:
    c = chunker(rules(max_records=100), start=40)
    feed(c, good([45]))
    chunk = c.flush()
    assert chunk is not None
    assert (chunk.first, chunk.last, chunk.skipped) == (40, 45, 5)


def test_gap_longer_than_max_records_stays_in_the_chunk_that_takes_the_record() -> None:
    """The gap rule wins: the chunk that takes offset 10 covers 1..9 as well."""
    chunks = feed(chunker(rules(max_records=3)), good([0, 10]))
    assert spans(chunks) == [(0, 10, "count")]
    assert chunks[0].skipped == 9


def test_offsets_below_the_position_are_ignored() -> None:
    c = chunker(rules(max_records=3))
    first = feed(c, good(range(5)))
    assert feed(c, good([1, 3, 4])) == []  # redelivered: already covered
    assert (c.open_first, c.position) == (3, 5)
    assert feed(c, good([5])) == [
        Chunk(TOPIC, 0, 3, 5, [rec(3), rec(4), rec(5)], [1, 1, 1], 0, "count")
    ]
    assert spans(first) == [(0, 2, "count")]


def test_chunk_key_is_the_range() -> None:
    (chunk,) = feed(chunker(rules(max_records=2), start=8), good([8, 9]))
    assert chunk.key == ChunkKey(TOPIC, 0, 8, 9)
    assert str(chunk.key) == f"{TOPIC}/00000/00000000000000000008-00000000000000000009.avro"


def test_every_cut_is_recorded_in_the_plan() -> None:
    plan = CutPlan()
    c = chunker(rules(max_records=2), plan=plan)
    feed(c, good(range(5)))
    c.flush()
    assert all_cuts(plan) == [(0, 1), (2, 3), (4, 4)]


# -- flush ---------------------------------------------------------------------------------
def test_flush_due_after_the_interval_since_the_chunk_opened() -> None:
    c = chunker(rules(flush_interval_s=30.0))
    assert not c.flush_due(1_000.0)  # nothing open
    c.add(0, rec(0), 1, now=100.0)
    c.add(1, rec(1), 1, now=125.0)  # later offsets do not reset the clock
    assert not c.flush_due(129.999)
    assert c.flush_due(130.0)
    chunk = c.flush()
    assert chunk == Chunk(TOPIC, 0, 0, 1, [rec(0), rec(1)], [1, 1], 0, "flush")
    assert not c.flush_due(10_000.0)
    assert c.flush() is None
    c.add(2, None, None, now=200.0)  # a dead-lettered offset opens a chunk too
    assert not c.flush_due(229.0)
    assert c.flush_due(230.0)


def test_a_rule_cut_restarts_the_clock_at_the_next_offset() -> None:
    c = chunker(rules(max_records=2, flush_interval_s=10.0))
    c.add(0, rec(0), 1, now=0.0)
    c.add(1, rec(1), 1, now=1.0)  # count cut
    assert not c.flush_due(100.0)
    c.add(2, rec(2), 1, now=50.0)
    assert not c.flush_due(59.0)
    assert c.flush_due(60.0)


def test_flush_on_an_empty_chunk_gives_nothing() -> None:
    c = chunker(rules(), start=7)
    assert c.flush() is None
    assert all_cuts(c.plan) == []


def test_flush_covers_up_to_the_position() -> None:
    c = chunker(rules())
    feed(c, [(0, rec(0), 1), (1, None, None), (3, rec(3), 1)])
    chunk = c.flush()
    assert chunk is not None
    assert (chunk.first, chunk.last, chunk.skipped, chunk.reason) == (0, 3, 2, "flush")
    assert (c.open_first, c.position) == (4, 4)


def test_no_flush_inside_a_known_cut() -> None:
    plan = CutPlan()
    plan.add(0, 9)
    c = chunker(rules(flush_interval_s=1.0), plan=plan)
    c.add(0, rec(0), 1, now=0.0)
    assert not c.flush_due(100.0)
    assert c.flush() is None


# -- CutPlan -------------------------------------------------------------------------------
def test_cut_plan_lookups() -> None:
    plan = CutPlan()
    for first, last in [(20, 29), (0, 9), (10, 14)]:
        plan.add(first, last)
    assert len(plan) == 3
    assert all_cuts(plan) == [(0, 9), (10, 14), (20, 29)]
    assert [plan.end_for(o) for o in (0, 10, 20, 5, 15, 30)] == [9, 14, 29, None, None, None]
    assert [plan.next_start_after(o) for o in (-1, 0, 9, 10, 19, 20, 100)] == [
        0,
        10,
        10,
        20,
        20,
        None,
        None,
    ]


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        (0, 0, [(0, 9)]),
        (9, 10, [(0, 9), (10, 14)]),
        (5, 25, [(0, 9), (10, 14), (20, 29)]),
        (15, 19, []),  # the hole between two cuts
        (29, 40, [(20, 29)]),
        (30, 40, []),
        (-5, -1, []),
        (12, 12, [(10, 14)]),
    ],
)
def test_cut_plan_overlapping(first: int, last: int, expected: list[tuple[int, int]]) -> None:
    plan = CutPlan()
    for a, b in [(0, 9), (10, 14), (20, 29)]:
        plan.add(a, b)
    assert plan.overlapping(first, last) == expected


def test_cut_plan_add_is_idempotent() -> None:
    plan = CutPlan()
    plan.add(0, 9)
    plan.add(0, 9)
    assert len(plan) == 1


@pytest.mark.parametrize(
    ("first", "last"),
    [(10, 15), (10, 25), (5, 12), (12, 15), (18, 25), (0, 100), (19, 19)],
)
def test_cut_plan_add_conflict(first: int, last: int) -> None:
    plan = CutPlan()
    plan.add(10, 19)
    with pytest.raises(
        PlanConflict, match=rf"cut {first}-{last} overlaps known cut\(s\) \[\(10, 19\)\]"
    ):
        plan.add(first, last)
    assert all_cuts(plan) == [(10, 19)]


def test_cut_plan_adjacent_cuts_do_not_conflict() -> None:
    plan = CutPlan()
    plan.add(10, 19)
    plan.add(20, 20)
    plan.add(0, 9)
    assert all_cuts(plan) == [(0, 9), (10, 19), (20, 20)]


@pytest.mark.parametrize(
    ("offset", "kept"),
    [
        (0, [(0, 9), (10, 14), (20, 29)]),
        (9, [(0, 9), (10, 14), (20, 29)]),  # 0-9 does not end before 9
        (10, [(10, 14), (20, 29)]),
        (12, [(10, 14), (20, 29)]),
        (15, [(20, 29)]),
        (20, [(20, 29)]),  # the hole 15-19 is behind
        (30, []),
    ],
)
def test_cut_plan_trim_below(offset: int, kept: list[tuple[int, int]]) -> None:
    plan = CutPlan()
    for a, b in [(0, 9), (10, 14), (20, 29)]:
        plan.add(a, b)
    plan.trim_below(offset)
    assert all_cuts(plan) == kept
    assert len(plan) == len(kept)
    assert [plan.end_for(a) for a, _ in kept] == [b for _, b in kept]


# -- following a plan ----------------------------------------------------------------------
def test_known_cuts_come_before_rules_then_rules_resume() -> None:
    plan = CutPlan()
    plan.add(0, 4)
    plan.add(5, 9)
    c = chunker(rules(max_records=3), plan=plan)
    chunks = feed(c, good(range(13)))
    assert spans(chunks) == [(0, 4, "plan"), (5, 9, "plan"), (10, 12, "count")]
    assert [offsets_of(ch) for ch in chunks] == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
        [10, 11, 12],
    ]


def test_window_and_bytes_do_not_cut_inside_a_known_cut() -> None:
    plan = CutPlan()
    plan.add(0, 2)
    c = chunker(rules(max_bytes=1, window_ms=10), plan=plan)
    chunks = feed(
        c, [(0, rec(0, 5, ts=0), 1), (1, rec(1, 5, ts=100), 1), (2, rec(2, 5, ts=200), 1)]
    )
    assert spans(chunks) == [(0, 2, "plan")]


def test_schema_changes_inside_a_known_cut_are_followed() -> None:
    """A known cut may hold records of several schemas (a store wrote it so): no conflict."""
    plan = CutPlan()
    plan.add(0, 4)
    c = chunker(rules(max_records=2), plan=plan)
    chunks = feed(c, good([0, 1], schema_id=1) + good([2], schema_id=2) + good([4], schema_id=1))
    assert [(ch.first, ch.last, ch.reason, ch.schema_ids) for ch in chunks] == [
        (0, 4, "plan", [1, 1, 2, 1])
    ]


def test_known_cuts_cross_a_gap() -> None:
    plan = CutPlan()
    plan.add(0, 4)
    plan.add(5, 9)
    c = chunker(rules(), plan=plan)
    chunks = feed(c, good([0, 12]))
    assert [(ch.first, ch.last, ch.reason, ch.skipped) for ch in chunks] == [
        (0, 4, "plan", 4),
        (5, 9, "plan", 5),
    ]
    assert (c.open_first, c.position) == (10, 13)


def test_known_cut_ending_in_a_gap_is_closed_by_the_next_offset() -> None:
    """A cut made on other records (e.g. before a compaction) may end on an offset this run
    never sees: the next offset past it closes it."""
    plan = CutPlan()
    plan.add(0, 4)
    c = chunker(rules(), plan=plan)
    chunks = feed(c, good([0, 5]))
    assert [(ch.first, ch.last, ch.reason, offsets_of(ch)) for ch in chunks] == [
        (0, 4, "plan", [0])
    ]
    assert (c.open_first, c.position) == (5, 6)


def test_align_to_a_known_cut_ahead() -> None:
    """A known cut further on (e.g. an object of another store) is met exactly."""
    plan = CutPlan()
    plan.add(10, 19)
    c = chunker(rules(max_records=4), plan=plan)
    chunks = feed(c, good(range(24)))
    assert spans(chunks) == [
        (0, 3, "count"),
        (4, 7, "count"),
        (8, 9, "align"),
        (10, 19, "plan"),
        (20, 23, "count"),
    ]


def test_align_over_a_gap() -> None:
    plan = CutPlan()
    plan.add(10, 19)
    c = chunker(rules(), plan=plan)
    chunks = feed(c, good([8, 15, 19]))
    assert [(ch.first, ch.last, ch.reason, offsets_of(ch)) for ch in chunks] == [
        (0, 9, "align", [8]),
        (10, 19, "plan", [15, 19]),
    ]


# -- cut_at_boundary -----------------------------------------------------------------------
def test_cut_at_boundary_closes_the_open_chunk() -> None:
    c = chunker(rules())
    feed(c, good(range(5)))
    chunks = c.cut_at_boundary(5)
    assert spans(chunks) == [(0, 4, "boundary")]
    assert offsets_of(chunks[0]) == [0, 1, 2, 3, 4]
    assert c.cut_at_boundary(5) == []


def test_cut_at_boundary_covers_a_gap_up_to_the_boundary() -> None:
    c = chunker(rules())
    feed(c, good([0, 1, 2]))
    chunks = c.cut_at_boundary(10)
    assert [(ch.first, ch.last, ch.skipped) for ch in chunks] == [(0, 9, 7)]
    assert (c.open_first, c.position) == (10, 10)
    assert feed(c, good([10])) == []
    assert c.open_first == 10


def test_cut_at_boundary_follows_known_cuts_below_it() -> None:
    plan = CutPlan()
    plan.add(0, 2)
    plan.add(3, 7)
    c = chunker(rules(), plan=plan)
    feed(c, good([0, 1]))
    chunks = c.cut_at_boundary(8)
    assert spans(chunks) == [(0, 2, "plan"), (3, 7, "plan")]
    assert [offsets_of(ch) for ch in chunks] == [[0, 1], []]


def test_cut_at_boundary_inside_a_known_cut_is_a_conflict() -> None:
    plan = CutPlan()
    plan.add(0, 9)
    c = chunker(rules(), plan=plan)
    feed(c, good([0]))
    with pytest.raises(PlanConflict):
        c.cut_at_boundary(5)


# -- the replay property -------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    gap: int  # offsets skipped before this one (transaction markers, compaction)
    dead: bool  # dead-lettered: covered, no record
    size: int
    ts: int
    schema_id: int
    dt: float  # wall-clock seconds since the previous event


@dataclass(frozen=True)
class Scenario:
    start: int
    rules: ChunkRules
    steps: list[Step]
    times: list[float]


events = st.builds(
    Event,
    gap=st.sampled_from([0, 0, 0, 0, 0, 1, 3]),
    dead=st.sampled_from([False, False, False, False, True]),
    size=st.integers(0, 40),
    ts=st.integers(0, 5_000),
    schema_id=st.sampled_from([1, 1, 3, 3, 2]),
    dt=st.sampled_from([0.0, 0.0, 1.0, 2.5, 10.0]),
)
chunk_rules = st.builds(
    ChunkRules,
    max_records=st.integers(1, 8) | st.integers(END_QUIET_GAPS, 40),
    max_bytes=st.integers(1, 100) | st.just(BIG),
    window_ms=st.sampled_from([700, 1_000, 3_000, BIG]),
    flush_interval_s=st.sampled_from([1.0, 3.0, 8.0, 1e9]),
)


@st.composite
def scenarios(draw: st.DrawFn, r: st.SearchStrategy[ChunkRules] = chunk_rules) -> Scenario:
    start = draw(st.integers(0, 50))
    evs = draw(st.lists(events, min_size=draw(st.integers(0, 60)), max_size=80))
    steps: list[Step] = []
    times: list[float] = []
    offset, now = start - 1, 0.0
    for e in evs:
        offset += 1 + e.gap
        now += e.dt
        steps.append(
            (offset, None, None) if e.dead else (offset, rec(offset, e.size, e.ts), e.schema_id)
        )
        times.append(now)
    return Scenario(start, draw(r), steps, times)


def run_with_flushes(
    s: Scenario, plan: CutPlan, upto: int | None = None, firsts: dict[int, float] | None = None
) -> tuple[PartitionChunker, list[Chunk]]:
    """The live run: rules, plus wall-clock cuts whenever one is due: the flush interval, and
    the end of a burst (checked just before the next record arrives, the partition being at
    the end of its log: its high watermark is the next offset)."""
    c = PartitionChunker(TOPIC, 0, s.rules, s.start, plan, firsts)
    out: list[Chunk] = []
    timed = list(zip(s.steps, s.times, strict=True))[:upto]
    for i, ((offset, record, schema_id), now) in enumerate(timed):
        out.extend(c.add(offset, record, schema_id, now))
        if c.flush_due(now + 0.5):
            flushed = c.flush()
            assert flushed is not None
            out.append(flushed)
        before_next = (timed[i + 1][1] if i + 1 < len(timed) else now + 30.0) - 1e-3
        if c.quiet_after_burst(before_next) and c.end_due(before_next, offset + 1):
            ended = c.flush("end")
            assert ended is not None
            out.append(ended)
    return c, out


def replay(
    r: ChunkRules,
    start: int,
    plan: CutPlan,
    steps: list[Step],
    firsts: dict[int, float] | None = None,
) -> tuple[PartitionChunker, list[Chunk]]:
    """A replay or a store catching up: same records, no flushes, the plan of cuts made."""
    c = PartitionChunker(TOPIC, 0, r, start, plan, firsts)
    out = feed(c, [s for s in steps if s[0] >= start], now=0.0)
    return c, out


def content(chunks: list[Chunk]) -> list[tuple[int, int, list[RawRecord], list[int], int]]:
    return [(c.first, c.last, c.records, c.schema_ids, c.skipped) for c in chunks]


def check_chunks(s: Scenario, chunks: list[Chunk], open_first: int) -> None:
    """Contiguous, complete, and every cut exactly where its rule says."""
    r = s.rules
    expected_first = s.start
    for chunk in chunks:
        assert chunk.first == expected_first
        assert chunk.last >= chunk.first
        expected_first = chunk.last + 1
        taken = [step for step in s.steps if chunk.first <= step[0] <= chunk.last]
        kept = [step for step in taken if step[1] is not None]
        assert chunk.records == [step[1] for step in kept]
        assert chunk.schema_ids == [step[2] for step in kept]  # parallel to the records
        assert chunk.skipped == (chunk.last - chunk.first + 1) - len(kept)
        # no rule would have cut inside the chunk
        if kept:
            assert len({step[1].timestamp_ms // r.window_ms for step in kept if step[1]}) == 1
            assert (
                len(kept) == 1 or sum(len(step[1].body) for step in kept if step[1]) <= r.max_bytes
            )
        assert taken and taken[-1][0] == chunk.last  # every cut ends on an offset taken
        for offset, _, _ in taken:
            reached = offset + 1 - chunk.first >= r.max_records
            assert reached == (offset == chunk.last and chunk.reason == "count")
        # and a rule cut is made only when the next record breaks that rule
        if chunk.reason in ("window", "bytes"):
            nxt = next(step for step in s.steps if step[0] > chunk.last)
            record = nxt[1]
            assert record is not None and kept
            first_rec = kept[0][1]
            assert first_rec is not None
            window_breaks = (
                record.timestamp_ms // r.window_ms != first_rec.timestamp_ms // r.window_ms
            )
            bytes_break = sum(len(x.body) for x in chunk.records) + len(record.body) > r.max_bytes
            assert chunk.reason == ("window" if window_breaks else "bytes")
            assert window_breaks or bytes_break
        else:
            assert chunk.reason in ("count", "flush", "end")
    assert open_first == expected_first


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_replay_with_the_plan_cuts_exactly_the_same_chunks(s: Scenario) -> None:
    plan = CutPlan()
    live, chunks = run_with_flushes(s, plan)
    check_chunks(s, chunks, live.open_first)
    assert all_cuts(plan) == [(c.first, c.last) for c in chunks]
    made = all_cuts(plan)

    # replays from the same start and from every chunk boundary, sharing the plan
    for start in sorted({s.start, live.open_first, *(c.first for c in chunks)}):
        again, replayed = replay(s.rules, start, plan, s.steps)
        assert content(replayed) == content([c for c in chunks if c.first >= start])
        assert (again.open_first, again.position) == (live.open_first, live.position)
        assert all_cuts(plan) == made  # a replay makes no new cut

    # the live run's open chunk, once flushed, is followed by a replay too
    last = live.flush()
    if last is not None:
        _, replayed = replay(s.rules, s.start, plan, s.steps)
        assert content(replayed) == content([*chunks, last])


@settings(max_examples=150, deadline=None)
@given(s=scenarios(), other_rules=chunk_rules, cut=st.integers(0, 60))
def test_after_the_planned_region_the_rules_resume(
    s: Scenario, other_rules: ChunkRules, cut: int
) -> None:
    """A chunker given the plan of another run (other rules, flushes, fewer records) follows
    it, then cuts by its own rules as a fresh chunker would from the end of the plan."""
    plan = CutPlan()
    earlier, planned = run_with_flushes(s, plan, upto=cut)
    follower, chunks = replay(other_rules, s.start, copy.deepcopy(plan), s.steps)
    assert content(chunks[: len(planned)]) == content(planned)
    _, fresh = replay(other_rules, earlier.open_first, CutPlan(), s.steps)
    assert content(chunks[len(planned) :]) == content(fresh)
    # and what follows is cut by the rules
    check_chunks(
        Scenario(earlier.open_first, other_rules, s.steps, s.times),
        chunks[len(planned) :],
        follower.open_first,
    )


# -- the first record at or after each chunk start (the lag monitor's answers) -------------
def first_step_at_or_after(steps: list[Step], offset: int) -> Step | None:
    return next((step for step in steps if step[0] >= offset), None)


def check_firsts(steps: list[Step], firsts: dict[int, float], chunks: list[Chunk]) -> None:
    """Every note is the timestamp of the first record at or after its offset, which is kept
    (not a dead letter) and has a timestamp; and every chunk whose first offset taken is such
    a record has its note."""
    for start, noted in firsts.items():
        step = first_step_at_or_after(steps, start)
        assert step is not None and step[1] is not None, f"note at {start}: no kept record"
        assert step[1].timestamp_ms > 0
        assert noted == step[1].timestamp_ms / 1000.0
    for chunk in chunks:
        step = first_step_at_or_after(steps, chunk.first)
        assert step is not None and step[0] <= chunk.last  # every cut ends on an offset taken
        if step[1] is not None and step[1].timestamp_ms > 0:
            assert chunk.first in firsts, f"chunk {chunk.first}-{chunk.last} not noted"


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_each_chunk_start_notes_the_first_record_at_or_after_it(s: Scenario) -> None:
    """The live run (rule, flush and end-of-burst cuts) and every replay that follows its
    plan from any chunk boundary (plan, align and boundary cuts, gaps, dead letters, records
    without a timestamp) note exactly what the broker would answer for a store committed at
    that chunk start: the timestamp of the first record at or after it, or nothing."""
    plan = CutPlan()
    noted: dict[int, float] = {}
    live, chunks = run_with_flushes(s, plan, firsts=noted)
    check_firsts(s.steps, noted, chunks)
    if live.position > live.open_first:  # the open chunk's start is noted once opened
        step = first_step_at_or_after(s.steps, live.open_first)
        assert step is not None
        assert (live.open_first in noted) == (step[1] is not None and step[1].timestamp_ms > 0)
    for start in sorted({s.start, *(c.first for c in chunks)}):
        again: dict[int, float] = {}
        _, replayed = replay(s.rules, start, plan, s.steps, firsts=again)
        check_firsts(s.steps, again, replayed)
        assert {k: v for k, v in noted.items() if k in again} == again  # the same answers


def test_a_boundary_cut_notes_the_first_record_past_the_boundary() -> None:
    """A catching-up store closes its chunks at the live stream's boundary without records
    (`cut_at_boundary`); the next chunk's note is its first record past the boundary."""
    noted: dict[int, float] = {}
    c = PartitionChunker(TOPIC, 0, rules(), 0, CutPlan(), noted)
    feed(c, good([0, 1], ts=1_000))
    assert noted == {0: 1.0}
    assert [x.last for x in c.cut_at_boundary(10)] == [9]
    feed(c, good([8, 9]))  # below the position: already covered
    feed(c, [(12, rec(12, ts=3_000), 1)])
    assert noted == {0: 1.0, 10: 3.0}


def test_a_chunk_opened_by_a_dead_letter_notes_nothing() -> None:
    noted: dict[int, float] = {}
    c = PartitionChunker(TOPIC, 0, rules(max_records=2), 0, CutPlan(), noted)
    feed(c, [(0, None, None), (1, rec(1, ts=2_000), 1), (2, rec(2, ts=3_000), 1)])
    assert noted == {2: 3.0}


# -- end of a burst ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("offsets", "opened_at", "last_at", "now", "position", "high", "due"),
    [
        # a backlog read at full speed, then nothing: cut one quiet second after
        (50_000, 100.0, 100.4, 101.4, 50_000, 50_000, True),
        (50_000, 100.0, 100.4, 101.399, 50_000, 50_000, False),
        # behind the log's end (records are still coming): never
        (50_000, 100.0, 100.4, 500.0, 50_000, 50_001, False),
        # high watermark not known yet: never
        (50_000, 100.0, 100.4, 500.0, 50_000, -1001, False),
        # a broker whose high watermark lags its log: early, never late
        (50_000, 100.0, 100.4, 101.4, 50_000, 49_000, True),
        # too few offsets to tell a burst from a trickle: the flush interval decides
        (END_QUIET_GAPS - 1, 100.0, 100.0, 500.0, 9, 9, False),
        (END_QUIET_GAPS, 100.0, 100.0, 101.0, 10, 10, True),
        # a trickle of 4 records/s (40 offsets over 9.75 s): quiet for 10 of its gaps first
        (40, 100.0, 109.75, 109.75 + 2.4, 40, 40, False),
        (40, 100.0, 109.75, 109.75 + 10 * 9.75 / 40, 40, 40, True),
    ],
)
def test_end_of_burst(
    offsets: int,
    opened_at: float,
    last_at: float,
    now: float,
    position: int,
    high: int,
    due: bool,
) -> None:
    assert end_of_burst(offsets, opened_at, last_at, now, position, high) is due


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(0.01, 100_000.0),
    n=st.integers(1, 100_000),
    pause_gaps=st.floats(0.0, 9.99),
)
def test_a_steady_pace_is_never_cut_as_a_burst(rate: float, n: int, pause_gaps: float) -> None:
    """Records at a steady pace, then a pause shorter than 10 of their gaps (or than a
    second): the chunk waits for the flush interval, whatever the pace and the chunk."""
    gap = 1.0 / rate
    last = (n - 1) * gap
    quiet = min(pause_gaps * gap, END_QUIET_S * 0.999)
    assert not end_of_burst(n, 0.0, last, last + quiet, n, n)


def simulate(
    c: PartitionChunker, arrivals: list[float], until: float, tick: float = 0.05
) -> list[Chunk]:
    """The service's loop over one partition: records arrive at the given times (the
    partition at the end of its log after each), the loop turns every `tick` seconds and
    makes the flush and end-of-burst cuts as `Replicator._turn` does."""
    out: list[Chunk] = []
    pending = sorted(arrivals)
    offset = c.position
    now = 0.0
    while now <= until:
        while pending and pending[0] <= now:
            pending.pop(0)
            out.extend(c.add(offset, rec(offset), 1, now))
            offset += 1
        if c.flush_due(now):
            chunk = c.flush()
        elif c.quiet_after_burst(now) and c.end_due(now, offset):
            chunk = c.flush("end")
        else:
            chunk = None
        if chunk is not None:
            out.append(chunk)
        now = round(now + tick, 6)
    return out


def test_a_burst_is_cut_a_quiet_second_after_its_last_record() -> None:
    """5,000 records within 0.1 s, then silence: the tail does not wait for the flush
    interval (here an hour)."""
    c = chunker(rules(max_records=2_000, flush_interval_s=3600.0))
    chunks = simulate(c, [i * 2e-5 for i in range(5_000)], until=30.0)
    assert spans(chunks) == [
        (0, 1_999, "count"),
        (2_000, 3_999, "count"),
        (4_000, 4_999, "end"),
    ]
    assert all_cuts(c.plan) == [(0, 1_999), (2_000, 3_999), (4_000, 4_999)]


@pytest.mark.parametrize("rate", [0.5, 4.0, 40.0, 170.0, 2_000.0])
def test_a_trickle_keeps_the_flush_interval(rate: float) -> None:
    """At a steady pace (a partition's share of 6 to 24,000 records/s), every cut is the
    flush interval's: objects hold what arrived in it, not a record each."""
    c = chunker(rules(flush_interval_s=10.0))
    arrivals = [i / rate for i in range(int(rate * 60))]
    chunks = simulate(c, arrivals, until=60.0)
    assert {ch.reason for ch in chunks} == {"flush"}
    assert len(chunks) == 5  # cuts at 10, 20.05, ... s: one per interval
    assert min(ch.last - ch.first + 1 for ch in chunks) >= int(rate * 10)


def test_a_pause_in_a_trickle_after_a_burst_cuts_the_burst_only() -> None:
    """A burst, a pause, then a trickle: the burst's chunk is cut at its end; the trickle's
    chunks follow the flush interval."""
    c = chunker(rules(flush_interval_s=10.0))
    burst = [i * 1e-4 for i in range(1_000)]
    trickle = [5.0 + i / 4 for i in range(200)]
    chunks = simulate(c, burst + trickle, until=60.0)
    assert spans(chunks)[0] == (0, 999, "end")
    assert {ch.reason for ch in chunks[1:]} == {"flush"}


def test_an_end_of_burst_cut_is_followed_by_a_replay() -> None:
    """The end-of-burst cut depends on the wall clock: it is made once, recorded in the plan,
    and a replay of the same records (no clock, another pace) cuts exactly there."""
    plan = CutPlan()
    live = chunker(rules(flush_interval_s=3600.0), plan=plan)
    made = simulate(
        live, [i * 1e-4 for i in range(300)] + [5.0 + i * 1e-4 for i in range(50)], 20.0
    )
    assert spans(made) == [(0, 299, "end"), (300, 349, "end")]
    again = chunker(rules(flush_interval_s=3600.0), plan=plan)
    replayed = feed(again, good(range(350)), now=0.0)
    assert content(replayed) == content(made)
    assert all_cuts(plan) == [(0, 299), (300, 349)]


def test_no_end_of_burst_cut_inside_a_planned_cut() -> None:
    """Where the plan already says where the open chunk ends, the plan decides."""
    plan = CutPlan()
    plan.add(0, 99)
    c = chunker(rules(), plan=plan)
    feed(c, good(range(50)), now=0.0)
    assert not c.quiet_after_burst(100.0)
    assert not c.end_due(100.0, 50)
    assert c.flush("end") is None


# One step of a partition's input: the gap before the offset, then a kept record (its body
# size, record time, schema id) or a dead-lettered offset (None), and the wall clock advance.
_steps = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.one_of(
            st.none(), st.tuples(st.integers(0, 9), st.integers(-50, 200), st.sampled_from([1, 2]))
        ),
        st.floats(0.0, 2.0),
    ),
    max_size=120,
)


@given(
    steps=_steps,
    max_records=st.integers(1, 12),
    max_bytes=st.integers(1, 30),
    window_ms=st.integers(1, 100),
)
@settings(max_examples=300, deadline=None)
def test_the_unplanned_fast_path_cuts_as_the_general_path(
    steps: list[tuple[int, tuple[int, int, int] | None, float]],
    max_records: int,
    max_bytes: int,
    window_ms: int,
) -> None:
    """A chunker whose plan holds no cut at or after its open chunk takes its records by a
    shorter path (`_add_unplanned`, the steady state): it cuts exactly as the general path,
    which a known cut far beyond every offset forces (it never comes into play)."""
    r = rules(max_records, max_bytes, window_ms)
    far = CutPlan()
    far.add(BIG, BIG)
    fast, general = chunker(r, start=3), chunker(r, start=3, plan=far)
    offset, now = 3, 0.0
    got: list[list[Chunk]] = [[], []]
    for gap, kept, advance in steps:
        offset += gap
        now += advance
        record, schema_id = None, None
        if kept is not None:
            size, ts, schema_id = kept
            record = rec(offset, size, ts)
        for i, c in enumerate((fast, general)):
            got[i].extend(c.add(offset, record, schema_id, now))
        offset += 1
    assert got[0] == got[1]
    assert [c.body_bytes for c in got[0]] == [c.body_bytes for c in got[1]]
    assert [c.body_bytes for c in got[0]] == [sum(len(x.body) for x in c.records) for c in got[0]]
    assert [c.reason for c in got[0]] == [c.reason for c in got[1]]
    assert (fast.position, fast.open_first, fast.open_bytes) == (
        general.position,
        general.open_first,
        general.open_bytes,
    )
    assert fast.flush() == general.flush()
    assert fast.quiet_after_burst(now + 100) == general.quiet_after_burst(now + 100)
