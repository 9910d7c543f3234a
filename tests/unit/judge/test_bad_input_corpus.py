"""The bad-input corpus (tests/corpus/cases.py) against the decoder and the checks, offline:
each case gets exactly the reason it is meant to get, and each near-miss passes. The same
corpus goes through the running service in tests/integration/pipeline/test_bad_input.py."""

from __future__ import annotations

import pytest

from replicator.judge.batch import judge
from replicator.judge.rules import check_record, find_identifier_in_message
from replicator.schemas import DecodeError, decode_wire
from tests.corpus.cases import REGISTRY, VALID_NIRS, Case, cases, nir_key

MAX_BYTES = 4096
CASES = cases(MAX_BYTES)


def reason_of(case: Case) -> str | None:
    found = find_identifier_in_message(case.key, case.headers)
    if found is not None:
        return found.reason
    try:
        decoded = decode_wire(REGISTRY, case.topic, case.value, max_bytes=MAX_BYTES)
    except DecodeError as exc:
        return exc.reason
    violation = check_record(case.topic, decoded.record)
    reason = None if violation is None else violation.reason
    verdict = judge(REGISTRY, case.topic, case.value, MAX_BYTES, case.key, case.headers)
    assert verdict[1] == (reason or "")  # the service's judge gives the same reason
    return reason


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_gets_its_reason(case: Case) -> None:
    got = reason_of(case)
    if case.expect is None:
        assert got is None, f"{case.name}: refused as {got}"
    else:
        assert got in case.expect, f"{case.name}: {got}, expected {sorted(case.expect)}"


def test_the_corpus_covers_every_reason_and_both_topics() -> None:
    reasons = set().union(*(c.expect for c in CASES if c.expect is not None))
    assert reasons >= {
        "not_wire_format",
        "unknown_schema_id",
        "wrong_topic_schema",
        "undecodable",
        "oversized",
        "invalid_value",
        "direct_identifier",
    }
    assert any(c.expect is None for c in CASES)
    assert {c.topic for c in CASES} == set(REGISTRY.topics())


def test_corsican_nirs_are_computed_with_19_and_18() -> None:
    corsican = [n for n in VALID_NIRS if n[5:7].upper() in ("2A", "2B")]
    assert len(corsican) >= 3
    for n in corsican:
        compact = n.replace(" ", "")
        assert int(compact[13:]) == nir_key(compact[:13])
