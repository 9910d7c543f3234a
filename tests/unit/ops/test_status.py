"""`replicator status`'s view, from plain values: catch-up states, lags, last objects and
dead letters by reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicator.keys import object_key
from replicator.ops.status import (
    BEHIND,
    BEHIND_RETENTION,
    LIVE,
    NO_PROGRESS,
    RETIRED,
    DeadLetter,
    PartitionFacts,
    StoreFacts,
    Thresholds,
    build_status,
    catch_up_state,
    tally_dead_letters,
    worst,
)

TH = Thresholds(live_records=100, live_seconds=50.0)


@pytest.mark.parametrize(
    ("committed", "low", "end", "seconds", "retired", "state"),
    [
        (None, 0, 0, 0.0, False, LIVE),  # an empty partition: nothing to hold
        (None, 5, 5, 0.0, False, LIVE),  # emptied by retention
        (None, 0, 1, 9.0, False, NO_PROGRESS),
        (3, 5, 10, 9.0, False, BEHIND_RETENTION),
        (10, 0, 10, 0.0, False, LIVE),
        (12, 0, 10, 0.0, False, LIVE),  # past a stale end
        (0, 0, 100, 50.0, False, LIVE),  # at both limits: the live stream's open chunk
        (0, 0, 101, 1.0, False, BEHIND),  # one record over
        (90, 0, 100, 50.001, False, BEHIND),  # old enough to be more than an open chunk
        (0, 0, 10**6, 10**6, True, RETIRED),
        (None, 0, 10, 0.0, True, RETIRED),
    ],
)
def test_catch_up_state_table(
    committed: int | None, low: int, end: int, seconds: float, retired: bool, state: str
) -> None:
    assert catch_up_state(committed, low, end, seconds, retired, TH) == state


@given(
    committed=st.none() | st.integers(0, 1000),
    low=st.integers(0, 1000),
    extra=st.integers(0, 1000),
    seconds=st.floats(0, 1000),
)
def test_a_store_at_the_end_is_live_and_one_further_behind_is_never_better(
    committed: int | None, low: int, extra: int, seconds: float
) -> None:
    end = low + extra
    state = catch_up_state(committed, low, end, seconds, False, TH)
    if committed is not None and committed >= end and committed >= low:
        assert state == LIVE
    # moving the end further away never improves the state
    further = catch_up_state(committed, low, end + 1000, seconds + 1000, False, TH)
    order = [BEHIND_RETENTION, NO_PROGRESS, BEHIND, LIVE]
    assert order.index(further) <= order.index(state)


def test_worst_state_of_a_store() -> None:
    assert worst([LIVE, BEHIND, LIVE]) == BEHIND
    assert worst([LIVE, NO_PROGRESS, BEHIND]) == NO_PROGRESS
    assert worst([BEHIND_RETENTION, NO_PROGRESS]) == BEHIND_RETENTION
    assert worst([]) == LIVE


def dl(
    partition: int, offset: int, ts: int, reason: str | None, origin: tuple[str, int, int] | None
) -> DeadLetter:
    headers: dict[str, str] = {}
    if reason is not None:
        headers["dlq.reason"] = reason
    if origin is not None:
        headers["dlq.origin.topic"] = origin[0]
        headers["dlq.origin.partition"] = str(origin[1])
        headers["dlq.origin.offset"] = str(origin[2])
    return DeadLetter(partition, offset, ts, headers)


def test_dead_letters_tallied_by_reason_with_resends_counted_once() -> None:
    records = [
        dl(0, 7, 1_700_000_000_000, "direct_identifier", ("a", 0, 10)),
        dl(0, 8, 1_700_000_001_000, "direct_identifier", ("a", 0, 10)),  # a resend
        dl(0, 9, 1_700_000_002_000, "undecodable", ("a", 1, 3)),
        dl(1, 0, 1_699_999_999_000, "invalid_value", ("b", 0, 3)),
        dl(1, 1, -1, None, None),  # no headers at all: still counted
    ]
    out = tally_dead_letters("dlq", {0: (7, 10), 1: (0, 2)}, records)
    assert out.records == 5
    assert out.distinct == 4
    assert out.by_reason == {
        "direct_identifier": 1,
        "undecodable": 1,
        "invalid_value": 1,
        "(none)": 1,
    }
    assert out.by_origin_topic == {"a": 2, "b": 1, "(unknown)": 1}
    assert out.first_time == "2023-11-14T22:13:19.000Z"
    assert out.last_time == "2023-11-14T22:13:22.000Z"
    assert out.to_json()["window"] == {"0": {"from": 7, "end": 10}, "1": {"from": 0, "end": 2}}


def test_build_status_from_plain_values() -> None:
    a0, a1 = PartitionFacts("a", 0, 0, 500), PartitionFacts("a", 1, 100, 100)
    k0 = object_key("a", 0, 400, 499)
    k_s3_past = object_key("a", 0, 200, 299)
    facts = {
        "s3": {
            ("a", 0): StoreFacts(200, 1000.0, k_s3_past),
            ("a", 1): StoreFacts(None, None, None),
        },
        "azure": {
            ("a", 0): StoreFacts(500, None, k0),
            ("a", 1): StoreFacts(100, None, object_key("a", 1, 0, 99)),
        },
    }
    report = build_status(
        "2026-01-01T00:00:00.000Z",
        "g",
        ["s3", "azure"],
        [a0, a1],
        facts,
        set(),
        {"s3": "s3: unavailable"},
        None,
        TH,
        now=1012.5,
    )
    s3_a0 = report.partitions[0]["stores"]["s3"]
    assert s3_a0 == {
        "committed": 200,
        "lag_records": 300,
        "lag_seconds": 12.5,
        "state": BEHIND,
        "last_object": k_s3_past,
        "last_object_offset": 299,
        "uncommitted_object": True,
    }
    assert report.partitions[0]["stores"]["azure"]["state"] == LIVE
    assert report.partitions[0]["stores"]["azure"]["uncommitted_object"] is False
    assert report.partitions[1]["stores"]["s3"]["state"] == LIVE  # empty after retention
    assert report.store_summary == {
        "s3": {
            "state": BEHIND,
            "retired": False,
            "lag_records": 300,
            "max_lag_seconds": 12.5,
            "error": "s3: unavailable",
        },
        "azure": {
            "state": LIVE,
            "retired": False,
            "lag_records": 0,
            "max_lag_seconds": 0.0,
            "error": None,
        },
    }
    assert report.exit_code == 0
    text = report.render()
    assert k_s3_past in text and "behind" in text and "error: s3: unavailable" in text

    retired = build_status("t", "g", ["s3"], [a0], facts, {"s3"}, {}, None, TH, now=0.0)
    assert retired.store_summary["s3"]["state"] == RETIRED
    assert retired.to_json()["dead_letters"] is None
