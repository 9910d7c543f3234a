"""The service's notes of the first record at or after each chunk start (plain values)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from replicator.telemetry.firsts import FirstRecords

TP0 = ("t", 0)
TP1 = ("t", 1)


def test_an_unknown_partition_or_start_has_no_answer() -> None:
    firsts = FirstRecords()
    firsts.partition(TP0)[10] = 1.5
    assert firsts.get(TP0, 10) == 1.5
    assert firsts.get(TP0, 11) is None  # not a chunk start: the broker answers
    assert firsts.get(TP1, 10) is None


@given(
    starts=st.dictionaries(st.integers(0, 1_000), st.floats(1.0, 2e9), max_size=50),
    below=st.integers(0, 1_100),
)
def test_forget_below_keeps_exactly_the_starts_from_the_offset_up(
    starts: dict[int, float], below: int
) -> None:
    firsts = FirstRecords()
    firsts.partition(TP0).update(starts)
    firsts.partition(TP1).update(starts)
    firsts.forget_below(TP0, below)
    assert dict((s, t) for (tp, s), t in firsts.items() if tp == TP0) == {
        s: t for s, t in starts.items() if s >= below
    }
    assert len(firsts) == len(starts) + sum(1 for s in starts if s >= below)  # TP1 untouched


def test_a_partition_given_up_is_forgotten_and_starts_afresh() -> None:
    firsts = FirstRecords()
    old = firsts.partition(TP0)
    old[5] = 1.0
    firsts.forget(TP0)
    assert firsts.get(TP0, 5) is None
    old[6] = 2.0  # a chunker of the revoked partition, still writing: not seen
    assert firsts.get(TP0, 6) is None
    firsts.partition(TP0)[7] = 3.0
    assert firsts.items() == [((TP0, 7), 3.0)]
