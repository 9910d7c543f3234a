"""The pure parts of an interrupted cutover: which steps it has, what a later run takes from
any subset of its puts, and which leftovers are conflicts. The real command, stopped after
each step against the real servers, is tests/integration/ops/test_cutover_interrupted.py."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest

from replicator.ops.cutover import (
    CUTOVER_STEPS,
    REPORT_KEY,
    ROLLED_BACK_PREFIX,
    CutoverConflict,
    Found,
    archive_key,
    build_record,
    resume_point,
    rollback_steps,
    write_plan,
)
from replicator.ops.findings import PartitionReport, VerifyReport
from replicator.stores.retirement import RECORD_KEY

STORES = ["s3", "azure"]


def report(finished: str = "2026-11-26T10:00:00.000001Z", status: str = "aligned") -> bytes:
    parts = [
        PartitionReport(
            "t",
            p,
            status,
            0,
            None,
            0,
            committed={"s3": 100 + p, "azure": 100 + p},
            objects={"s3": 2, "azure": 2},
            bytes={"s3": 50, "azure": 50},
        )
        for p in range(2)
    ]
    rep = VerifyReport(STORES, "g", {}, "2026-11-26T09:59:00Z", finished, parts)
    return rep.dumps()


def record(rep: bytes, retire: str = "azure") -> bytes:
    return build_record(rep, retire, "g", ["t"])


@pytest.mark.parametrize("retire", STORES)
def test_the_plan_puts_every_report_before_any_record_and_names_every_step(retire: str) -> None:
    plan = write_plan(STORES, retire)
    kept = next(s for s in STORES if s != retire)
    assert plan == [
        ("report-kept", kept, REPORT_KEY),
        ("report-retired", retire, REPORT_KEY),
        ("record-kept", kept, RECORD_KEY),
        ("record-retired", retire, RECORD_KEY),
    ]
    assert ("verified", *[step for step, _, _ in plan]) == CUTOVER_STEPS
    assert rollback_steps(STORES) == [
        "archive-s3",
        "archive-azure",
        "record-s3",
        "record-azure",
        "report-s3",
        "report-azure",
    ]


def test_the_record_is_a_function_of_the_report_and_holds_the_evidence() -> None:
    rep = report()
    rec = record(rep)
    assert record(rep) == rec  # a rerun builds the same bytes
    data = json.loads(rec)
    assert data["retired"] == "azure" and data["kept"] == ["s3"]
    assert data["time"] == "2026-11-26T10:00:00.000001Z"
    assert data["verify_report_sha256"] == hashlib.sha256(rep).hexdigest()
    assert data["committed"] == {"s3": {"t/0": 100, "t/1": 101}, "azure": {"t/0": 100, "t/1": 101}}
    assert data["objects"] == {"s3": 4, "azure": 4} and data["bytes"] == {"s3": 100, "azure": 100}
    assert record(report(finished="2026-11-26T11:00:00Z")) != rec


def every_partial_state(retire: str) -> list[tuple[dict[str, Found], bytes, bytes]]:
    """Every subset of the puts of one cutover (not only the prefixes a crash leaves: a
    store that failed a put, an operator who deleted one object by hand)."""
    rep = report()
    rec = record(rep, retire)
    plan = write_plan(STORES, retire)
    out = []
    for n in range(len(plan) + 1):
        for subset in itertools.combinations(plan, n):
            state = {
                s: Found(
                    rec if (any(p[1:] == (s, RECORD_KEY) for p in subset)) else None,
                    rep if (any(p[1:] == (s, REPORT_KEY) for p in subset)) else None,
                )
                for s in STORES
            }
            out.append((state, rep, rec))
    return out


@pytest.mark.parametrize("retire", STORES)
def test_any_subset_of_the_puts_completes_to_the_same_bytes_or_is_a_named_conflict(
    retire: str,
) -> None:
    for state, rep, rec in every_partial_state(retire):
        has_record = any(f.record for f in state.values())
        has_report = any(f.report for f in state.values())
        if has_record and not has_report:
            with pytest.raises(CutoverConflict, match="names a verify report that no store"):
                resume_point(state, retire)
            continue
        taken_report, taken_record = resume_point(state, retire)
        assert taken_report == (rep if has_report else None)
        assert taken_record == (rec if has_record else None)
        if taken_report is not None:
            # what a rerun writes is what the interrupted run would have written
            assert (taken_record or record(taken_report, retire)) == rec
        if has_record:
            other = next(s for s in STORES if s != retire)
            with pytest.raises(CutoverConflict, match=f"retired {retire} at .*roll back first"):
                resume_point(state, other)


def test_leftovers_that_differ_are_conflicts_that_say_what_differs() -> None:
    rep, rep2 = report(), report(finished="2026-11-26T11:00:00Z")
    with pytest.raises(CutoverConflict, match=r"different verify reports under .*verify-report"):
        resume_point({"s3": Found(None, rep), "azure": Found(None, rep2)}, "azure")
    with pytest.raises(CutoverConflict, match=r"different cutover records under .*record\.json"):
        resume_point({"s3": Found(record(rep), rep), "azure": Found(record(rep2), rep)}, "azure")
    with pytest.raises(CutoverConflict, match=f"the stores hold {REPORT_KEY} with sha256"):
        resume_point({"s3": Found(record(rep2), rep), "azure": Found(None, rep)}, "azure")
    with pytest.raises(CutoverConflict, match="cutover record in s3 is not a JSON object"):
        resume_point({"s3": Found(b"[1]", rep), "azure": Found(None, rep)}, "azure")
    with pytest.raises(CutoverConflict, match=r"not an aligned one \(status 'diverged'\)"):
        build_record(report(status="diverged"), "azure", "g", ["t"])
    with pytest.raises(CutoverConflict, match=r"verify report in .* is not a JSON object"):
        build_record(b"{oops", "azure", "g", ["t"])
    with pytest.raises(CutoverConflict, match="lacks the committed offsets or totals"):
        build_record(b'{"status": "aligned", "stores": ["s3", "azure"]}', "azure", "g", ["t"])


def test_the_archive_of_a_record_is_named_by_its_time_and_hash() -> None:
    rec, rec2 = record(report()), record(report(), "s3")
    key = archive_key(rec)
    sha = hashlib.sha256(rec).hexdigest()[:12]
    assert key == f"{ROLLED_BACK_PREFIX}20261126T100000.000001Z-{sha}.json"
    assert archive_key(rec) == key and archive_key(rec2) != key
    assert archive_key(b"not json").startswith(f"{ROLLED_BACK_PREFIX}unknown-")
