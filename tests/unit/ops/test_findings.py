"""verify's conclusions from plain values: listings, committed offsets, records."""

from __future__ import annotations

import hashlib
import json

from replicator.container import encode_container, zigzag_varint
from replicator.keys import object_key
from replicator.model import RawRecord
from replicator.ops.findings import (
    DecodedObject,
    FindingKind,
    PartitionCheck,
    PartitionReport,
    RecordPrint,
    StoreListing,
    VerifyReport,
    check_partition,
    compare_records,
    decode_object,
    format_ranges,
    merge_ranges,
    right_stores,
    same_print,
    same_prints,
    to_ranges,
)
from replicator.ops.replay import _align
from replicator.stores.base import ObjectInfo

T, P = "t.a", 0


def obj(first: int, last: int, tag: str = "", size: int = 100) -> ObjectInfo:
    key = object_key(T, P, first, last)
    return ObjectInfo(key, size, hashlib.md5((key + tag).encode()).hexdigest())


def cuts(*ranges: tuple[int, int]) -> list[ObjectInfo]:
    return [obj(a, b) for a, b in ranges]


STANDARD = cuts((0, 99), (100, 199), (200, 299), (300, 349))


def check(
    s3: list[ObjectInfo],
    azure: list[ObjectInfo],
    c_s3: int | None = 350,
    c_az: int | None = 350,
    **kw: object,
) -> PartitionReport:
    params: dict[str, object] = {"topic": T, "partition": P, "start": 0}
    params.update(kw)
    return check_partition(
        PartitionCheck(**params),  # type: ignore[arg-type]
        {"s3": StoreListing(c_s3, s3), "azure": StoreListing(c_az, azure)},
    )


def kinds(report: PartitionReport) -> list[tuple[str, str, int, int]]:
    return [(f.kind.value, f.store, f.first, f.last) for f in report.findings]


def test_identical_contiguous_stores_are_aligned() -> None:
    report = check(STANDARD, list(STANDARD))
    assert report.status == "aligned"
    assert report.findings == []
    assert report.compared == 4
    assert report.objects == {"s3": 4, "azure": 4}
    assert report.common_committed == 350


def test_listing_order_does_not_matter() -> None:
    assert check(list(reversed(STANDARD)), STANDARD).status == "aligned"


def test_a_deleted_object_is_a_gap_and_a_missing_key_in_that_store_only() -> None:
    azure = [o for o in STANDARD if o.key != object_key(T, P, 100, 199)]
    report = check(STANDARD, azure)
    assert report.status == "diverged"
    assert kinds(report) == [("gap", "azure", 100, 199), ("missing", "azure", 100, 199)]
    missing = report.findings[1]
    assert missing.key == object_key(T, P, 100, 199)
    assert missing.sources == ["s3"]


def test_a_gap_in_both_stores_is_named_per_store_without_missing_keys() -> None:
    both = [o for o in STANDARD if o.key != object_key(T, P, 200, 299)]
    report = check(both, list(both))
    assert kinds(report) == [("gap", "azure", 200, 299), ("gap", "s3", 200, 299)]


def test_a_store_whose_objects_stop_before_its_committed_offset_has_a_tail_gap() -> None:
    report = check(STANDARD[:3], STANDARD[:3], c_s3=350, c_az=300)
    assert kinds(report) == [("gap", "s3", 300, 349)]


def test_objects_past_the_committed_offset_are_neither_gaps_nor_compared() -> None:
    # azure committed 300 only: its last object is uncommitted (or not written yet)
    report = check(STANDARD, STANDARD[:3], c_s3=350, c_az=300)
    assert report.status == "aligned"
    assert report.compared == 3
    extra = [*STANDARD, obj(350, 399)]  # put, not committed yet
    assert check(extra, list(STANDARD)).status == "aligned"


def test_nothing_committed_means_nothing_to_compare() -> None:
    report = check(STANDARD, [], c_az=None)
    assert report.status == "aligned"
    assert report.common_committed is None and report.compared == 0


def test_an_overlap_names_both_objects_and_the_one_the_other_store_lacks() -> None:
    intruder = obj(150, 249)
    report = check([*STANDARD, intruder], list(STANDARD))
    overlaps = [f for f in report.findings if f.kind is FindingKind.OVERLAP]
    assert [(f.first, f.last) for f in overlaps] == [(150, 199), (200, 249)]
    assert overlaps[0].key == object_key(T, P, 100, 199)
    assert overlaps[0].other_keys == [intruder.key]
    assert all(f.suspect == intruder.key for f in overlaps)
    # azure's lack of the intruder is no finding of its own.
    assert {f.kind for f in report.findings} == {FindingKind.OVERLAP}


def test_different_cuts_in_the_two_stores_are_a_cut_mismatch_not_a_gap() -> None:
    azure = cuts((0, 99), (100, 149), (150, 199), (200, 299), (300, 349))
    report = check(STANDARD, azure)
    assert {f.kind for f in report.findings} == {FindingKind.CUT_MISMATCH}
    assert not any(f.kind is FindingKind.GAP for f in report.findings)


def test_same_key_with_other_bytes_differs() -> None:
    azure = [*STANDARD[:2], obj(200, 299, tag="x", size=60), STANDARD[3]]
    report = check(STANDARD, azure)
    assert kinds(report) == [("differs", "azure,s3", 200, 299)]
    f = report.findings[0]
    assert f.sizes == {"azure": 60, "s3": 100}
    assert f.md5s["azure"] != f.md5s["s3"]
    assert "differs" in f.describe()


def test_an_unknown_md5_is_not_taken_as_equal() -> None:
    azure = [*STANDARD[:3], ObjectInfo(STANDARD[3].key, 100, None)]
    assert [f.kind for f in check(STANDARD, azure).findings] == [FindingKind.DIFFERS]


def test_a_time_filter_checks_only_its_offsets() -> None:
    both = [o for o in STANDARD if o.key != object_key(T, P, 0, 99)]
    # Coverage from 120 (inside an object): no gap, and the missing first object is out of scope.
    report = check(both, list(both), start=120, compare_from=120)
    assert report.status == "aligned"
    # Up to 200 (exclusive): the gap at 300-349 in azure is out of scope.
    azure = STANDARD[:3]
    assert check(STANDARD, azure, c_az=350, start=0, until=200).status == "aligned"
    assert kinds(check(STANDARD, azure, c_az=350)) == [
        ("gap", "azure", 300, 349),
        ("missing", "azure", 300, 349),
    ]


def test_coverage_starts_at_the_first_retained_offset_but_history_is_compared() -> None:
    history_gone = STANDARD[1:]  # 0-99 deleted from s3 after Kafka's retention passed it
    report = check(history_gone, list(STANDARD), start=100, low_watermark=100)
    assert kinds(report) == [("missing", "s3", 0, 99)]


def test_a_store_committed_below_the_retained_offsets_is_behind_retention() -> None:
    report = check(STANDARD, STANDARD[:1], c_az=100, start=300, low_watermark=300)
    assert kinds(report)[0] == ("behind_retention", "azure", 100, 299)


def test_foreign_keys_are_reported_apart() -> None:
    report = check([*STANDARD, ObjectInfo(f"{T}/00000/notes.txt", 1, None)], list(STANDARD))
    assert report.status == "aligned"
    assert report.foreign == {"s3": [f"{T}/00000/notes.txt"]}


# ---------------------------------------------------------------------- record level
def prints(offsets: range, tag: str = "") -> dict[int, RecordPrint]:
    return {o: RecordPrint(1000 + o, b"k", f'{{"n":{o}{tag}}}') for o in offsets}


def test_record_comparison_names_missing_unexpected_and_altered_offsets() -> None:
    expected = prints(range(100, 200))
    good = DecodedObject(dict(expected))
    bad_records = dict(expected)
    for o in range(150, 200):
        del bad_records[o]
    bad_records[120] = RecordPrint(0, None, "{}")
    bad_records[205] = RecordPrint(0, None, "{}")
    bad = DecodedObject(bad_records, error="EOFError after 51 records")
    diffs = compare_records(100, 205, expected, {"s3": good, "azure": bad})
    by = {d.store: d for d in diffs}
    assert by["s3"].verdict == "matches_kafka"
    assert by["azure"].verdict == "undecodable"
    assert by["azure"].missing == [(150, 199)]
    assert by["azure"].altered == [(120, 120)]
    assert by["azure"].unexpected == [(205, 205)]
    assert by["azure"].concerned == [(120, 120), (150, 199), (205, 205)]
    assert right_stores(diffs) == ["s3"]


def test_without_kafka_the_stores_are_compared_with_each_other() -> None:
    a = DecodedObject(prints(range(0, 10)))
    b = DecodedObject(prints(range(0, 5)), error="EOFError after 5 records")
    diffs = compare_records(0, 9, None, {"s3": a, "azure": b})
    by = {d.store: d for d in diffs}
    assert by["azure"].missing == [(5, 9)] and by["azure"].verdict == "undecodable"
    assert by["s3"].verdict == "unknown" and by["s3"].reference == "azure"
    assert right_stores(diffs) == ["s3"]
    both_readable = compare_records(
        0, 9, None, {"s3": a, "azure": DecodedObject(prints(range(10)))}
    )
    assert right_stores(both_readable) == []


def test_no_right_store_when_none_matches_kafka() -> None:
    expected = prints(range(5))
    diffs = compare_records(
        0, 4, expected, {"s3": DecodedObject(prints(range(5), "x")), "azure": DecodedObject({})}
    )
    assert right_stores(diffs) == []
    assert {d.verdict for d in diffs} == {"differs_from_kafka"}


def _container(first: int, last: int, records: list[RawRecord]) -> tuple[str, bytes]:
    key = object_key(T, P, first, last)
    schema = json.dumps({"type": "record", "name": "E", "fields": [{"name": "n", "type": "long"}]})
    meta = {"first_offset": str(first), "last_offset": str(last)}
    return key, encode_container(key, {7: schema}, records, [7] * len(records), meta)


def _body(n: int) -> bytes:

    return zigzag_varint(n)


def test_decode_object_reads_records_and_names_truncation() -> None:
    records = [RawRecord(o, 1_700_000_000_000 + o, b"k", _body(o * 7)) for o in range(10, 20)]
    key, data = _container(10, 20, records)
    decoded = decode_object(key, data)
    assert decoded.error is None
    assert sorted(decoded.records) == list(range(10, 20))
    assert decoded.records[12] == RecordPrint(1_700_000_000_012, b"k", '{"n":84}')
    truncated = decode_object(key, data[: len(data) // 2])
    assert truncated.error is not None and "after" in truncated.error
    wrong_key = decode_object(object_key(T, P, 10, 30), data)
    assert wrong_key.error is not None and "header says" in wrong_key.error


def test_ranges_helpers() -> None:
    assert to_ranges([5, 1, 2, 3, 9, 10]) == [(1, 3), (5, 5), (9, 10)]
    assert merge_ranges([(10, 20), (0, 5), (6, 8), (15, 30)]) == [(0, 8), (10, 30)]
    assert format_ranges([(1, 3), (5, 5)]) == "1-3, 5"
    assert "more ranges" in format_ranges([(i, i) for i in range(0, 100, 2)], limit=3)


def test_report_status_and_exit_codes() -> None:
    aligned = check(STANDARD, list(STANDARD))
    diverged = check(STANDARD, STANDARD[:3])
    report = VerifyReport(["s3", "azure"], "g", {}, "now", partitions=[aligned])
    assert (report.status, report.exit_code) == ("aligned", 0)
    report.partitions.append(
        PartitionReport(T, 1, "unchecked", 0, None, 0, error="s3: unavailable")
    )
    assert (report.status, report.exit_code) == ("unchecked", 3)
    report.partitions.append(diverged)
    assert (report.status, report.exit_code) == ("diverged", 1)  # diverged wins
    data = json.loads(report.dumps())
    assert data["status"] == "diverged" and data["totals"]["findings"] == 2
    assert data["partitions"][2]["findings"][0]["kind"] == "gap"
    assert "DIVERGED" in report.summary()


# ---------------------------------------------------------------------- replay alignment
def test_replay_ranges_extend_to_the_enclosing_cuts() -> None:
    known = [(0, 99), (100, 199), (300, 399)]
    notes: list[str] = []
    assert _align(known, 120, 150, 0, 400, notes) == (100, 199)
    # between objects (a gap 200-299): from the previous object's end to the next's start
    assert _align(known, 250, 260, 0, 400, notes) == (200, 299)
    # no object before: from the first retained offset
    assert _align([(300, 399)], 120, 150, 0, 400, notes) == (0, 299)
    # an end past the last object stops at the highest committed offset
    assert _align(known, 350, 900, 0, 450, notes) == (300, 449)
    # an object reaching past every committed offset is left to the service
    assert _align(known, 0, 350, 0, 350, notes) == (0, 299)


def test_replay_skips_what_kafka_no_longer_holds() -> None:
    notes: list[str] = []
    # 0-99 and 100-199 both begin below 120: neither can be rebuilt, nothing is left to do
    assert _align([(0, 99), (100, 199)], 50, 150, 120, 300, notes) == (200, 199)
    assert len(notes) == 2 and all("cannot be rebuilt" in n for n in notes)
    notes.clear()
    assert _align([(0, 99), (100, 199), (200, 299)], 50, 250, 120, 300, notes) == (200, 299)
    notes.clear()
    assert _align([], 0, 150, 120, 200, notes) == (120, 199)
    assert notes == ["offsets 0-119 are no longer in Kafka"]
    notes.clear()
    # between objects, what Kafka still holds is replayed
    assert _align([(130, 199)], 0, 150, 120, 200, notes) == (120, 199)
    assert notes == ["offsets 0-119 are no longer in Kafka"]


def test_record_prints_compare_headers_only_where_both_sides_keep_them() -> None:
    """A format-2 object's print knows no headers (None): it matches Kafka's record
    whatever its headers; a format-3 object's print must carry the very same list."""
    kafka = RecordPrint(5, b"k", "{}", (("a", b"1"), ("a", None)))
    assert same_print(RecordPrint(5, b"k", "{}", None), kafka)
    assert same_print(kafka, RecordPrint(5, b"k", "{}", (("a", b"1"), ("a", None))))
    for other in [(("a", None), ("a", b"1")), (("a", b"1"),), (), (("b", b"1"), ("a", None))]:
        assert not same_print(RecordPrint(5, b"k", "{}", other), kafka)
    assert not same_print(RecordPrint(6, b"k", "{}", None), kafka)
    assert same_prints({1: kafka}, {1: RecordPrint(5, b"k", "{}", None)})
    assert not same_prints({1: kafka}, {2: kafka})
