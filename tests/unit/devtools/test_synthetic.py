"""The synthetic source: seeded, realistic, valid; bad records get the expected reason."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import UTC, datetime

import pytest

from replicator.config import DEFAULT_SCHEMAS_DIR
from replicator.devtools.synthetic import (
    BAD_KINDS,
    EXPECTED_REASON,
    BadKind,
    SyntheticSource,
    cip13,
    random_nir,
)
from replicator.judge.rules import check_record, ean13_is_valid, find_nir
from replicator.schemas import (
    PRESCRIPTIONS_TOPIC,
    REIMBURSEMENTS_TOPIC,
    DecodeError,
    SchemaRegistry,
    decode_wire,
)

REGISTRY = SchemaRegistry.load(DEFAULT_SCHEMAS_DIR)
TOPICS = (REIMBURSEMENTS_TOPIC, PRESCRIPTIONS_TOPIC)


def _outcome(topic: str, value: bytes) -> str:
    try:
        decoded = decode_wire(REGISTRY, topic, value)
    except DecodeError as exc:
        return exc.reason
    violation = check_record(topic, decoded.record)
    return "good" if violation is None else violation.reason


def test_same_seed_same_records_other_seed_other_records() -> None:
    def run(seed: int) -> list[bytes]:
        source = SyntheticSource(seed, REGISTRY)
        out = []
        for i in range(200):
            topic = TOPICS[i % 2]
            out.append(source.next_wire(topic)[1])
            out.append(source.bad_record(BAD_KINDS[i % len(BAD_KINDS)], topic))
        return out

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("topic", TOPICS)
def test_good_records_are_valid_keyed_and_time_ordered(topic: str) -> None:
    start = datetime(2025, 3, 1, tzinfo=UTC)
    source = SyntheticSource(3, REGISTRY, start_time=start, beneficiaries=200)
    times = []
    keys = set()
    versions: Counter[int] = Counter()
    for _ in range(3_000):
        key, record, schema = source.next(topic)
        assert schema.topic == topic
        assert key == record["beneficiary_id"].encode("ascii")
        assert set(record) == set(schema.field_names)
        assert check_record(topic, record) is None
        assert decode_wire(REGISTRY, topic, source.next_wire(topic)[1]).record is not None
        times.append(record["event_time"])
        keys.add(key)
        versions[schema.version] += 1
    assert times[0] > start.timestamp() * 1000
    assert all(a < b for a, b in itertools.pairwise(times))
    assert 150 <= len(keys) <= 200
    assert 0.25 < versions[2] / 3_000 < 0.35
    assert source.clock_ms >= times[-1]


def test_realistic_values() -> None:
    source = SyntheticSource(8, REGISTRY, v2_share=1.0)
    reimbursements = [source.next(REIMBURSEMENTS_TOPIC)[1] for _ in range(2_000)]
    prescriptions = [source.next(PRESCRIPTIONS_TOPIC)[1] for _ in range(2_000)]
    operations = Counter(r["operation"] for r in reimbursements)
    assert operations["INSERT"] > operations["UPDATE"] > operations["DELETE"] > 0
    assert all(r["reimbursed_amount_cents"] <= r["base_amount_cents"] for r in reimbursements)
    assert any(r["paid_amount_cents"] > r["base_amount_cents"] for r in reimbursements)
    assert any(r["act_code"] for r in reimbursements) and any(
        r["act_code"] is None for r in reimbursements
    )
    assert {"2A", "2B"} & {r["residence_department"] for r in reimbursements}
    assert {r["sex"] for r in reimbursements} == {1, 2}
    assert any(r["care_setting"] is None for r in reimbursements)
    assert all(ean13_is_valid(p["cip13"]) for p in prescriptions)
    assert len({p["atc_code"] for p in prescriptions}) > 10
    assert {True, False, None} == {p["substitution"] for p in prescriptions}
    assert sum(p["base_amount_cents"] for p in prescriptions) / 2_000 > 100


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("topic", TOPICS)
def test_bad_records_get_the_expected_reason(kind: BadKind, topic: str) -> None:
    source = SyntheticSource(13, REGISTRY)
    outcomes = Counter(_outcome(topic, source.bad_record(kind, topic)) for _ in range(300))
    assert outcomes == {EXPECTED_REASON[kind]: 300}


def test_bad_message_is_keyed_by_a_beneficiary() -> None:
    source = SyntheticSource(13, REGISTRY)
    key, value = source.bad_message("truncated", PRESCRIPTIONS_TOPIC)
    assert len(key) == 64 and value[0] == 0


def test_direct_identifier_records_hide_the_nir_in_various_fields() -> None:
    source = SyntheticSource(21, REGISTRY)
    fields: Counter[str] = Counter()
    for _ in range(400):
        value = source.bad_record("direct_identifier", REIMBURSEMENTS_TOPIC)
        decoded = decode_wire(REGISTRY, REIMBURSEMENTS_TOPIC, value)
        violation = check_record(REIMBURSEMENTS_TOPIC, decoded.record)
        assert violation is not None
        fields[violation.field] += 1
    assert len(fields) >= 7


def test_random_nir() -> None:
    rng = random.Random(4)
    spaced = random_nir(rng, spaced=True, corsica=True)
    assert len(spaced) == 21 and spaced[8:10] in ("2A", "2B")
    plain = random_nir(rng, spaced=False, corsica=False)
    assert len(plain) == 15 and plain.isdigit()
    assert find_nir(spaced) is not None and find_nir(plain) is not None


def test_cip13() -> None:
    assert cip13(3595583) == "3400935955838"  # a real presentation's code
    assert ean13_is_valid(cip13(1))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SyntheticSource(1, REGISTRY, start_time=datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        SyntheticSource(1, REGISTRY, start_time=datetime(1990, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError):
        SyntheticSource(1, REGISTRY, v2_share=2.0)
    source = SyntheticSource(1, REGISTRY)
    with pytest.raises(ValueError):
        source.next("unknown.topic")
    with pytest.raises(ValueError):
        source.bad_record("nope", REIMBURSEMENTS_TOPIC)  # type: ignore[arg-type]
