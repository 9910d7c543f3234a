"""The choices of `replicator redrive` over plain values: reading a dead letter, the
selection's filters, the verdict, the headers of a re-driven record, the report's tallies."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicator.judge.rules import find_identifier_in_message
from replicator.kafka.deadletter import (
    H_DETAIL,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TIMESTAMP,
    H_TOPIC,
    Refusal,
    shrink,
)
from replicator.kafka.deadletter import (
    Letter as SentLetter,
)
from replicator.ops.redrive import (
    RedriveOptions,
    RedriveReport,
    new_redrive_id,
)
from replicator.ops.redrive_logic import (
    H_REDRIVE_DEAD_LETTER,
    H_REDRIVE_ID,
    H_REDRIVE_OFFSET,
    H_REDRIVE_PARTITION,
    H_REDRIVE_TOPIC,
    Letter,
    Selection,
    Tally,
    Verdict,
    decide,
    parse_letter,
    progress_group,
    ranges,
    redrive_headers,
    redriven_origin,
)

TOPICS = ("snds.reimbursements", "snds.prescriptions")
REPLICATED = {t: [0, 1, 2] for t in TOPICS}


def dlq_headers(
    topic: str = TOPICS[0],
    partition: int = 1,
    offset: int = 42,
    timestamp: int | None = 1_790_000_000_000,
    reason: str = "unknown_schema_id",
) -> list[tuple[str, str | bytes | None]]:
    """The headers the service's dead-letter writer sets (kafka/deadletter.py `send`)."""
    out: list[tuple[str, str | bytes | None]] = [
        (H_REASON, reason.encode()),
        (H_DETAIL, b"schema id 5 is not registered"),
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
    ]
    if timestamp is not None:
        out.append((H_TIMESTAMP, str(timestamp).encode()))
    return out


def letter(**kw: Any) -> Letter:
    headers = kw.pop("headers", [])
    value = kw.pop("value", b"\x00\x00\x00\x00\x05body")
    parsed = parse_letter(0, 7, b"key", value, [*headers, *dlq_headers(**kw)])
    assert parsed is not None
    return parsed


# ---------------------------------------------------------------------- reading


def test_a_dead_letter_is_read_with_its_origin_and_the_original_headers_in_order() -> None:
    """The dead-letter writer appends its `dlq.*` headers after the original's own: an
    original header named `dlq.*` (before that run) is the original's, kept."""
    headers = [("trace", b"t1"), ("dlq.reason", b"theirs"), ("b", None), ("a", "text")]
    headers += dlq_headers()
    got = parse_letter(2, 9, b"k", b"v", headers)
    assert got is not None
    assert (got.partition, got.offset, got.reason, got.first_reason) == (
        2,
        9,
        "unknown_schema_id",
        None,
    )
    assert (got.origin_topic, got.origin_partition, got.origin_offset) == (TOPICS[0], 1, 42)
    assert got.origin_timestamp_ms == 1_790_000_000_000
    assert (got.key, got.value, got.value_dropped, got.key_dropped) == (b"k", b"v", False, False)
    assert got.headers == (("trace", b"t1"), ("dlq.reason", b"theirs"), ("b", None), ("a", b"text"))


@pytest.mark.parametrize(
    ("drop", "replace"),
    [
        (H_REASON, None),
        (H_TOPIC, None),
        (H_PARTITION, None),
        (H_OFFSET, None),
        (None, (H_REASON, b"")),
        (None, (H_TOPIC, b"")),
        (None, (H_PARTITION, b"one")),
        (None, (H_PARTITION, b"-1")),
        (None, (H_OFFSET, b"4.5")),
        (None, (H_OFFSET, b"-3")),
        (None, (H_OFFSET, b"\xff\xfe")),
    ],
)
def test_a_record_without_a_usable_reason_or_origin_is_no_dead_letter(
    drop: str | None, replace: tuple[str, bytes] | None
) -> None:
    headers: list[tuple[str, str | bytes | None]] = [h for h in dlq_headers() if h[0] != drop]
    if replace is not None:
        headers = [replace if h[0] == replace[0] else h for h in headers]
    assert parse_letter(0, 0, b"k", b"v", headers) is None


def test_an_unreadable_timestamp_header_leaves_the_time_unknown() -> None:
    headers = [(H_TIMESTAMP, b"soon") if n == H_TIMESTAMP else (n, v) for n, v in dlq_headers()]
    got = parse_letter(0, 0, None, b"v", headers)
    assert got is not None and got.origin_timestamp_ms is None


@pytest.mark.parametrize("size", [10, 5000, 100_000])
@pytest.mark.parametrize("key", [b"k", b"k" * 3000, None])
def test_a_dead_letter_sent_without_its_value_is_known_as_such(
    size: int, key: bytes | None
) -> None:
    """Whatever the writer's shrinking left (stage 1: without value; 2: without key too)."""
    sent = SentLetter(key, b"x" * size, dlq_headers())
    small = shrink(sent, Refusal.TOO_LARGE, "too large", 2000)
    assert small is not None
    got = parse_letter(0, 0, small.key, small.value, small.headers)
    assert got is not None
    assert got.value_dropped and got.value is None
    assert got.reason == "oversized" and got.first_reason == "unknown_schema_id"
    assert got.reasons == ("oversized", "unknown_schema_id")
    assert got.key_dropped == (small.stage == 2) == (small.key is None)
    assert decide(got, Selection(), REPLICATED) is Verdict.VALUE_DROPPED
    assert decide(got, Selection(reasons=frozenset({"unknown_schema_id"})), REPLICATED) is (
        Verdict.VALUE_DROPPED
    )


def test_a_record_whose_original_value_was_null_is_not_a_dropped_value() -> None:
    got = parse_letter(0, 0, b"k", None, dlq_headers(reason="not_wire_format"))
    assert got is not None and not got.value_dropped
    assert decide(got, Selection(), REPLICATED) is Verdict.REDRIVE


# ---------------------------------------------------------------------- selection

letters = st.builds(
    lambda t, p, o, ts, r: letter(topic=t, partition=p, offset=o, timestamp=ts, reason=r),
    st.sampled_from(TOPICS),
    st.integers(0, 3),
    st.integers(0, 50),
    st.one_of(st.none(), st.integers(0, 50)),
    st.sampled_from(["unknown_schema_id", "invalid_value", "direct_identifier"]),
)
selections = st.builds(
    Selection,
    reasons=st.frozensets(st.sampled_from(["unknown_schema_id", "invalid_value", "x"])),
    topics=st.frozensets(st.sampled_from([*TOPICS, "other"])),
    partitions=st.frozensets(st.integers(0, 3)),
    from_offset=st.one_of(st.none(), st.integers(0, 50)),
    to_offset=st.one_of(st.none(), st.integers(0, 50)),
    since_ms=st.one_of(st.none(), st.integers(0, 50)),
    until_ms=st.one_of(st.none(), st.integers(0, 50)),
)


def singles(s: Selection) -> list[Selection]:
    """One selection per filter the selection sets."""
    out = []
    if s.reasons:
        out.append(Selection(reasons=s.reasons))
    if s.topics:
        out.append(Selection(topics=s.topics))
    if s.partitions:
        out.append(Selection(partitions=s.partitions))
    if s.from_offset is not None:
        out.append(Selection(from_offset=s.from_offset))
    if s.to_offset is not None:
        out.append(Selection(to_offset=s.to_offset))
    if s.since_ms is not None:
        out.append(Selection(since_ms=s.since_ms))
    if s.until_ms is not None:
        out.append(Selection(until_ms=s.until_ms))
    return out


@given(letters, selections)
def test_a_selection_takes_what_every_one_of_its_filters_takes(
    one: Letter, selection: Selection
) -> None:
    assert selection.matches(one) == all(s.matches(one) for s in singles(selection))
    assert Selection().matches(one)


@pytest.mark.parametrize(
    ("selection", "offsets", "times"),
    [
        # origin offsets 0..9 at times 100..109
        (Selection(from_offset=3), [3, 4, 5, 6, 7, 8, 9], None),
        (Selection(to_offset=3), [0, 1, 2, 3], None),
        (Selection(from_offset=3, to_offset=3), [3], None),
        (Selection(from_offset=10), [], None),
        (Selection(since_ms=103), [3, 4, 5, 6, 7, 8, 9], None),
        (Selection(until_ms=103), [0, 1, 2], None),
        (Selection(since_ms=103, until_ms=104), [3], None),
        # a dead letter that does not say its time is outside every time range
        (Selection(since_ms=0), [], "none"),
        (Selection(from_offset=8), [8, 9], "none"),
    ],
)
def test_offset_bounds_are_inclusive_and_time_ranges_end_before_until(
    selection: Selection, offsets: list[int], times: str | None
) -> None:
    chosen = [
        o
        for o in range(10)
        if selection.matches(letter(offset=o, timestamp=None if times else 100 + o))
    ]
    assert chosen == offsets


def test_a_selection_by_reason_matches_either_reason_of_a_shrunk_dead_letter() -> None:
    sent = SentLetter(b"k", b"x" * 5000, dlq_headers(reason="invalid_value"))
    small = shrink(sent, Refusal.TOO_LARGE, "too large", 2000)
    assert small is not None
    got = parse_letter(0, 0, small.key, small.value, small.headers)
    assert got is not None
    for reason, taken in (("invalid_value", True), ("oversized", True), ("other", False)):
        assert Selection(reasons=frozenset({reason})).matches(got) is taken


@pytest.mark.parametrize(
    ("selection", "problem"),
    [
        (Selection(from_offset=5, to_offset=4), "--to-offset is below --from-offset"),
        (Selection(since_ms=5, until_ms=5), "--until must be after --since"),
        (Selection(from_offset=-1), "offsets are not negative"),
        (Selection(partitions=frozenset({-2})), "partitions are not negative"),
    ],
)
def test_an_unusable_selection_says_why(selection: Selection, problem: str) -> None:
    assert selection.problems() == [problem]


@given(selections, selections)
def test_the_progress_group_names_the_selection(a: Selection, b: Selection) -> None:
    assert progress_group("g", a) == progress_group("g", Selection(**vars(a)))
    assert (progress_group("g", a) == progress_group("g", b)) == (a.to_json() == b.to_json())
    assert progress_group("g", a).startswith("g.redrive.")


# ---------------------------------------------------------------------- verdict


@pytest.mark.parametrize(
    ("one", "selection", "verdict"),
    [
        (letter(), Selection(), Verdict.REDRIVE),
        (letter(), Selection(reasons=frozenset({"invalid_value"})), Verdict.NOT_SELECTED),
        (letter(topic="gone"), Selection(), Verdict.NOT_REPLICATED),
        (letter(partition=7), Selection(), Verdict.NO_PARTITION),
        (letter(topic="gone"), Selection(topics=frozenset({TOPICS[0]})), Verdict.NOT_SELECTED),
    ],
)
def test_the_verdict_of_a_dead_letter(one: Letter, selection: Selection, verdict: Verdict) -> None:
    assert decide(one, selection, REPLICATED) is verdict


# ---------------------------------------------------------------------- headers


@given(
    st.sampled_from(TOPICS),
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**62),
    st.lists(
        st.tuples(
            st.sampled_from(["trace", "dlq.extra", "redrive.topic", "redrive.id", "a"]),
            st.one_of(st.none(), st.binary(max_size=8)),
        ),
        max_size=6,
    ),
)
def test_a_redriven_record_names_its_origin_and_keeps_the_original_headers(
    topic: str, partition: int, offset: int, original: list[tuple[str, bytes | None]]
) -> None:
    one = letter(topic=topic, partition=partition, offset=offset, headers=original)
    headers = redrive_headers(one, "snds.dead-letter", "redrive-abc")
    assert redriven_origin(headers) == (topic, partition, offset)
    assert redriven_origin(dict(headers)) == (topic, partition, offset)
    names = [n for n, _ in headers]
    assert names.count(H_REDRIVE_TOPIC) == names.count(H_REDRIVE_ID) == 1
    kept = [h for h in original if not h[0].startswith("redrive.")]
    assert headers[: len(kept)] == kept
    assert not [n for n in names[len(kept) :] if n.startswith("dlq.")]
    assert dict(headers)[H_REDRIVE_DEAD_LETTER] == b"snds.dead-letter/0/7"
    assert dict(headers)[H_REDRIVE_PARTITION] == str(partition).encode()
    assert dict(headers)[H_REDRIVE_OFFSET] == str(offset).encode()


@given(st.sampled_from(TOPICS), st.integers(0, 999), st.integers(0, 10**12))
def test_the_redrive_headers_never_look_like_a_direct_identifier(
    topic: str, partition: int, offset: int
) -> None:
    """The service scans every header of the re-driven record for a NIR: ours must never
    be one, whatever the coordinates (up to a trillion) and the run's id."""
    one = letter(topic=topic, partition=partition, offset=offset)
    headers = redrive_headers(one, "snds.dead-letter", new_redrive_id())
    assert find_identifier_in_message(None, headers) is None


def test_records_that_were_not_redriven_name_no_origin() -> None:
    assert redriven_origin(None) is None
    assert redriven_origin([]) is None
    assert redriven_origin([("trace", b"x"), (H_REDRIVE_TOPIC, b"t")]) is None
    assert redriven_origin([(H_REDRIVE_TOPIC, b"t"), (H_REDRIVE_PARTITION, b"x")]) is None


def test_a_run_id_is_letters_only_and_new_each_time() -> None:
    ids = {new_redrive_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("redrive-") and i[8:].isalpha() and len(i) == 24 for i in ids)


# ---------------------------------------------------------------------- the report


@given(st.lists(st.integers(0, 200)))
def test_ranges_hold_exactly_the_offsets(offsets: list[int]) -> None:
    got = ranges(offsets)
    assert [o for a, b in got for o in range(a, b + 1)] == sorted(set(offsets))
    assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(got))


def test_the_tally_groups_selected_dead_letters_and_lists_those_that_cannot_go() -> None:
    tally = Tally()
    sel = Selection(reasons=frozenset({"unknown_schema_id"}))
    big = shrink(
        SentLetter(b"k", b"x" * 9000, dlq_headers(offset=5)), Refusal.TOO_LARGE, "big", 2000
    )
    assert big is not None
    inputs: list[Letter | None] = [
        letter(offset=1),
        letter(offset=2),
        letter(offset=4),
        letter(offset=3, reason="invalid_value"),
        parse_letter(0, 8, big.key, big.value, big.headers),
        None,
        letter(offset=6, topic="gone"),
    ]
    for one in inputs:
        tally.add(one, None if one is None else decide(one, sel, REPLICATED))
    assert tally.read == 7 and tally.without_origin == 1 and tally.selected == 5
    assert tally.verdicts == {
        "redrive": 3,
        "not_selected": 1,
        "value_dropped": 1,
        "not_replicated": 1,
        "no_partition": 0,
    }
    assert tally.groups() == [
        {
            "verdict": "not_replicated",
            "reason": "unknown_schema_id",
            "topic": "gone",
            "partition": 1,
            "count": 1,
            "offsets": [[6, 6]],
        },
        {
            "verdict": "redrive",
            "reason": "unknown_schema_id",
            "topic": TOPICS[0],
            "partition": 1,
            "count": 3,
            "offsets": [[1, 2], [4, 4]],
        },
        {
            "verdict": "value_dropped",
            "reason": "oversized",
            "topic": TOPICS[0],
            "partition": 1,
            "count": 1,
            "offsets": [[5, 5]],
        },
    ]
    assert [(c["offset"], c["dead_letter_offset"]) for c in tally.cannot] == [(5, 8), (6, 7)]
    assert "without its value" in tally.cannot[0]["cause"]
    assert tally.cannot[0]["original_reason"] == "unknown_schema_id"

    report = RedriveReport(RedriveOptions(), "dlq", "g.redrive.x", "redrive-x", tally=tally)
    assert (report.status, report.exit_code) == ("incomplete", 1)
    text = report.summary()
    assert f"cannot re-drive {TOPICS[0]}/1 offset 5 (dead letter 0/8)" in text
    assert "result: INCOMPLETE" in text
    data = report.to_json()
    assert data["counts"]["selected"] == 5 and data["exit_code"] == 1


@pytest.mark.parametrize(
    ("cannot", "refused", "error", "status", "code"),
    [
        (False, False, None, "done", 0),
        (True, False, None, "incomplete", 1),
        (False, True, None, "incomplete", 1),
        (True, True, "kafka: down", "unavailable", 3),
        (False, False, "kafka: down", "unavailable", 3),
    ],
)
def test_exit_codes(cannot: bool, refused: bool, error: str | None, status: str, code: int) -> None:
    tally = Tally()
    one = letter()
    if cannot:
        tally.add(letter(topic="gone"), Verdict.NOT_REPLICATED)
    if refused:
        tally.refuse(one, "refused by the origin topic: MSG_SIZE_TOO_LARGE")
    report = RedriveReport(RedriveOptions(), "dlq", "g", "r", tally=tally, error=error)
    assert (report.status, report.exit_code) == (status, code)
    assert f"(exit {code})" in report.summary()


def test_a_dry_run_report_names_no_run() -> None:
    report = RedriveReport(RedriveOptions(dry_run=True), "dlq", "g", "redrive-x")
    assert report.to_json()["redrive_id"] is None
    assert "dry run: nothing written" in report.summary()
