"""Seeded, realistic synthetic SNDS change events, and bad records of every kind (pure code).

Nothing here is real data: pseudonyms are random hex strings, codes are shaped like the
real nomenclatures (PRS_NAT_REF, CCAM, CIP13, ATC) and amounts like real tariffs. The same
seed and the same sequence of calls give the same records on every machine.

Records come in the form ``decode_wire`` returns (see ``replicator.schemas``): timestamps
as int milliseconds since the epoch (UTC), dates as int days since 1970-01-01, UUIDs as
str. Every good record passes ``replicator.judge.rules.check_record``.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, Literal, get_args

from replicator.judge.rules import DAY_MS, MAX_EVENT_MS, MIN_DATE_DAYS, MIN_EVENT_MS
from replicator.schemas import HEADER_SIZE, RegisteredSchema, SchemaRegistry, encode_wire

BadKind = Literal[
    "not_wire_format",
    "unknown_schema_id",
    "wrong_topic_schema",
    "truncated",
    "invalid_value",
    "direct_identifier",
]
BAD_KINDS: Final[tuple[BadKind, ...]] = get_args(BadKind)
# The dead-letter reason each bad kind must get from decode_wire / check_record.
EXPECTED_REASON: Final[dict[BadKind, str]] = {
    "not_wire_format": "not_wire_format",
    "unknown_schema_id": "unknown_schema_id",
    "wrong_topic_schema": "wrong_topic_schema",
    "truncated": "undecodable",
    "invalid_value": "invalid_value",
    "direct_identifier": "direct_identifier",
}

DEFAULT_START_TIME: Final = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
REIMBURSEMENT_RECORD: Final = "fr.hdh.snds.Reimbursement"
PRESCRIPTION_RECORD: Final = "fr.hdh.snds.Prescription"

_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_OPERATIONS: Final = ("INSERT", "UPDATE", "DELETE")
_OPERATION_WEIGHTS: Final = (85, 10, 5)
_CARE_SETTINGS: Final = ("ambulatory", "hospital_outpatient", "home", "teleconsultation")


def _year_start_days(year: int) -> int:
    return date(year, 1, 1).toordinal() - _EPOCH_ORDINAL


@dataclass(frozen=True)
class _Nature:
    """A prestation nature (PRS_NAT_REF-like) and how its amounts look."""

    code: int
    base_min: int  # cents
    base_max: int
    rate: float  # share of the base the compulsory scheme reimburses
    acts: tuple[str, ...]  # CCAM codes when the prestation is a technical act
    prescribed: float  # probability that a prescriber is named
    excess_fees: float  # probability of fees above the base (paid > base)
    setting: str | None  # care setting it implies, if any


# Synthetic tariffs shaped like real ones; codes are 4-digit PRS_NAT_REF-like values.
_NATURES: Final = (
    _Nature(1111, 3000, 3000, 0.70, (), 0.0, 0.03, None),  # GP consultation
    _Nature(1112, 3000, 6000, 0.70, (), 0.3, 0.40, None),  # specialist consultation
    _Nature(1191, 2500, 3000, 0.70, (), 0.0, 0.0, "teleconsultation"),
    _Nature(1211, 3000, 4500, 0.70, (), 0.0, 0.05, "home"),  # home visit
    _Nature(1321, 1500, 25000, 0.70, ("DEQP003", "ZBQK002", "QZFA036", "JQQM010"), 0.5, 0.25, None),
    _Nature(1351, 2000, 9000, 0.70, ("HBJD001", "HBMD053", "HBFD017"), 0.0, 0.30, None),  # dental
    _Nature(3111, 300, 1600, 0.60, (), 0.9, 0.0, "home"),  # nursing act
    _Nature(3121, 1600, 2200, 0.60, (), 1.0, 0.0, None),  # physiotherapy session
    _Nature(3311, 500, 9000, 0.60, (), 1.0, 0.0, None),  # laboratory tests
    _Nature(4211, 3000, 40000, 0.65, ("YYYY010",), 1.0, 0.0, None),  # patient transport
)
_NATURE_WEIGHTS: Final = (30, 14, 4, 3, 10, 6, 12, 7, 10, 4)


def ean13_check_digit(first12: str) -> str:
    total = sum(int(digit) * (3 if index % 2 else 1) for index, digit in enumerate(first12))
    return str((10 - total % 10) % 10)


def cip13(product: int) -> str:
    """A CIP13-shaped code: '34009', a 7-digit product number, the EAN-13 check digit."""
    first12 = f"34009{product:07d}"
    return first12 + ean13_check_digit(first12)


@dataclass(frozen=True)
class _Drug:
    atc: str
    unit_price: int  # cents per box
    rate: float
    cip13s: tuple[str, ...]
    has_generic: bool


_DRUGS: Final = (
    _Drug("N02BE01", 216, 0.65, (cip13(3595583), cip13(3000011)), True),  # paracetamol
    _Drug("C10AA05", 1080, 0.65, (cip13(3631427),), True),  # atorvastatin
    _Drug("A10BA02", 312, 0.65, (cip13(3350217), cip13(3350218)), True),  # metformin
    _Drug("J01CA04", 287, 0.65, (cip13(3612541),), True),  # amoxicillin
    _Drug("C09AA05", 589, 0.65, (cip13(3492157),), True),  # ramipril
    _Drug("A02BC01", 402, 0.65, (cip13(3551873),), True),  # omeprazole
    _Drug("N06AB10", 1245, 0.65, (cip13(3780002),), True),  # escitalopram
    _Drug("R03AC02", 411, 0.65, (cip13(3320151),), False),  # salbutamol
    _Drug("B01AC06", 193, 0.65, (cip13(3370443),), False),  # aspirin, low dose
    _Drug("H03AA01", 221, 0.65, (cip13(3416521),), False),  # levothyroxine
    _Drug("M01AE01", 168, 0.30, (cip13(3276044),), True),  # ibuprofen
    _Drug("C07AB07", 455, 0.65, (cip13(3589402),), True),  # bisoprolol
    _Drug("L04AB02", 48350, 1.00, (cip13(3953218),), False),  # infliximab (costly, 100%)
    _Drug("A11CC05", 230, 0.15, (cip13(3004213),), False),  # vitamin D (low rate)
)
_DRUG_WEIGHTS: Final = (20, 8, 8, 7, 7, 8, 5, 5, 6, 6, 8, 6, 1, 5)
_QUANTITIES: Final = (1, 2, 3, 4, 6)
_QUANTITY_WEIGHTS: Final = (60, 22, 10, 4, 4)


@dataclass(frozen=True)
class _Beneficiary:
    pseudonym: str
    birth_year: int
    sex: int
    department: str
    chronic: bool  # long-term illness (ALD): 100% reimbursement


def _departments() -> tuple[str, ...]:
    metropolitan = [f"{n:02d}" for n in range(1, 96) if n != 20]
    return (*metropolitan, "2A", "2B", "971", "972", "973", "974", "976")


_DEPARTMENTS: Final = _departments()
# Rough weights: large urban departments get more people.
_DEPARTMENT_WEIGHTS: Final = tuple(
    6 if d in ("75", "13", "59", "69", "92", "93", "94", "33", "31", "06") else 1
    for d in _DEPARTMENTS
)


def random_nir(
    rng: random.Random, *, spaced: bool | None = None, corsica: bool | None = None
) -> str:
    """A syntactically valid NIR with a valid key (synthetic, not a real person's).

    ``spaced`` formats it as "1 85 05 78 006 084 36"; ``corsica`` uses department 2A/2B.
    Either is drawn at random when None.
    """
    if spaced is None:
        spaced = rng.random() < 0.5
    if corsica is None:
        corsica = rng.random() < 0.2
    sex = rng.choice("12")
    year = f"{rng.randrange(100):02d}"
    month = f"{rng.randint(1, 12):02d}"
    if corsica:
        department = rng.choice(("2A", "2B"))
        numeric_department = "19" if department == "2A" else "18"
    else:
        department = rng.choice([d for d in _DEPARTMENTS if len(d) == 2 and d.isdigit()])
        numeric_department = department
    commune = f"{rng.randint(1, 999):03d}"
    order = f"{rng.randint(1, 999):03d}"
    number = int(sex + year + month + numeric_department + commune + order)
    key = f"{97 - number % 97:02d}"
    parts = (sex, year, month, department, commune, order, key)
    return " ".join(parts) if spaced else "".join(parts)


def _string_fields(schema: RegisteredSchema) -> tuple[str, ...]:
    """Top-level fields whose type is a string or a union with a string."""

    def is_string(kind: Any) -> bool:
        if kind == "string":
            return True
        if isinstance(kind, dict):
            return kind.get("type") == "string"
        if isinstance(kind, list):
            return any(is_string(item) for item in kind)
        return False

    return tuple(str(f["name"]) for f in schema.parsed["fields"] if is_string(f["type"]))


class SyntheticSource:
    """Seeded generator of change events for the topics of a registry.

    Each call to ``next(topic)`` advances a single event clock (shared by all topics) by a
    random gap (exponential, mean ``mean_gap_ms``, at least 1 ms) from ``start_time``, so
    event times strictly increase. Records are keyed by the beneficiary pseudonym, drawn
    from a pool of ``beneficiaries`` people. A share ``v2_share`` of the records is written
    with the topic's latest schema version, the rest with its first version.
    """

    def __init__(
        self,
        seed: int,
        registry: SchemaRegistry,
        *,
        start_time: datetime = DEFAULT_START_TIME,
        mean_gap_ms: float = 20.0,
        v2_share: float = 0.3,
        beneficiaries: int = 5000,
        professionals: int = 1000,
        pharmacies: int = 300,
    ) -> None:
        if start_time.tzinfo is None:
            raise ValueError("start_time must be timezone-aware")
        start_ms = int(start_time.timestamp() * 1000)
        if not MIN_EVENT_MS <= start_ms < MAX_EVENT_MS:
            raise ValueError("start_time must lie in [2000-01-01, 2100-01-01)")
        if mean_gap_ms <= 0 or not 0.0 <= v2_share <= 1.0:
            raise ValueError("mean_gap_ms must be > 0 and v2_share in [0, 1]")
        if min(beneficiaries, professionals, pharmacies) < 1:
            raise ValueError("pools must not be empty")
        self.registry = registry
        self.rng = random.Random(seed)
        self.v2_share = v2_share
        self._mean_gap_ms = mean_gap_ms
        self._clock_ms = start_ms
        rng = self.rng
        start_year = start_time.year
        self._beneficiaries = tuple(
            _Beneficiary(
                pseudonym=f"{rng.getrandbits(256):064x}",
                birth_year=start_year - min(int(rng.triangular(0, 100, 45)), start_year - 1890),
                sex=rng.choice((1, 2)),
                department=rng.choices(_DEPARTMENTS, _DEPARTMENT_WEIGHTS)[0],
                chronic=rng.random() < 0.18,
            )
            for _ in range(beneficiaries)
        )
        self._professionals = tuple(f"{rng.getrandbits(128):032x}" for _ in range(professionals))
        self._pharmacies = tuple(f"{rng.getrandbits(128):032x}" for _ in range(pharmacies))
        self._string_fields: dict[int, tuple[str, ...]] = {}

    @property
    def clock_ms(self) -> int:
        """Event time of the last generated record (ms since the epoch, UTC)."""
        return self._clock_ms

    # ---------------------------------------------------------------------------------
    # good records
    # ---------------------------------------------------------------------------------

    def next(self, topic: str) -> tuple[bytes, dict[str, Any], RegisteredSchema]:
        """The next good change event of ``topic``: (key, record, writer schema)."""
        versions = self.registry.versions_for_topic(topic)
        if not versions:
            raise ValueError(f"topic {topic} has no registered schema")
        rng = self.rng
        schema = versions[-1] if rng.random() < self.v2_share else versions[0]
        self._clock_ms += 1 + int(rng.expovariate(1.0 / self._mean_gap_ms))
        beneficiary = rng.choice(self._beneficiaries)
        if schema.name == REIMBURSEMENT_RECORD:
            full = self._reimbursement(beneficiary)
        elif schema.name == PRESCRIPTION_RECORD:
            full = self._prescription(beneficiary)
        else:
            raise ValueError(f"no generator for record type {schema.name}")
        record = {name: full.get(name) for name in schema.field_names}
        return beneficiary.pseudonym.encode("ascii"), record, schema

    def next_wire(self, topic: str) -> tuple[bytes, bytes, RegisteredSchema]:
        """The next good change event, encoded: (key, wire-format value, schema)."""
        key, record, schema = self.next(topic)
        return key, encode_wire(schema, record), schema

    def _common(self, beneficiary: _Beneficiary) -> dict[str, Any]:
        rng = self.rng
        operation = rng.choices(_OPERATIONS, _OPERATION_WEIGHTS)[0]
        return {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "operation": operation,
            "event_time": self._clock_ms,
            "beneficiary_id": beneficiary.pseudonym,
        }

    def _care_day(self, beneficiary: _Beneficiary, back_days: int) -> int:
        """A day at most ``back_days`` before the event, never before the birth year."""
        event_day = self._clock_ms // DAY_MS
        day = event_day - self.rng.randint(0, back_days)
        return max(day, _year_start_days(beneficiary.birth_year))

    def _reimbursement(self, beneficiary: _Beneficiary) -> dict[str, Any]:
        rng = self.rng
        record = self._common(beneficiary)
        nature = rng.choices(_NATURES, _NATURE_WEIGHTS)[0]
        settlement = self._care_day(beneficiary, 3)
        care = max(settlement - rng.randint(0, 40), _year_start_days(beneficiary.birth_year))
        base = rng.randint(nature.base_min // 10, nature.base_max // 10) * 10
        rate = 1.0 if beneficiary.chronic else nature.rate
        excess = rng.randint(2, 60) * 100 if rng.random() < nature.excess_fees else 0
        prescribed = rng.random() < nature.prescribed
        setting = nature.setting or rng.choice((*_CARE_SETTINGS[:2], None))
        record.update(
            birth_year=beneficiary.birth_year,
            sex=beneficiary.sex,
            residence_department=beneficiary.department,
            care_start_date=care,
            settlement_date=settlement,
            prestation_nature=nature.code,
            act_code=rng.choice(nature.acts) if nature.acts else None,
            base_amount_cents=base,
            paid_amount_cents=base + excess,
            reimbursed_amount_cents=round(base * rate),
            prescriber_id=rng.choice(self._professionals) if prescribed else None,
            executor_id=rng.choice(self._professionals),
            is_correction=record["operation"] == "UPDATE" and rng.random() < 0.7,
            care_setting=setting,
        )
        return record

    def _prescription(self, beneficiary: _Beneficiary) -> dict[str, Any]:
        rng = self.rng
        record = self._common(beneficiary)
        drug = rng.choices(_DRUGS, _DRUG_WEIGHTS)[0]
        quantity = rng.choices(_QUANTITIES, _QUANTITY_WEIGHTS)[0]
        base = drug.unit_price * quantity
        rate = 1.0 if beneficiary.chronic and drug.rate == 0.65 else drug.rate
        substitution: bool | None = None
        if drug.has_generic and rng.random() < 0.9:
            substitution = rng.random() < 0.8
        record.update(
            cip13=rng.choice(drug.cip13s),
            atc_code=drug.atc,
            quantity=quantity,
            dispensing_date=self._care_day(beneficiary, 2),
            prescriber_id=rng.choice(self._professionals),
            pharmacy_id=rng.choice(self._pharmacies),
            base_amount_cents=base,
            reimbursed_amount_cents=round(base * rate),
            substitution=substitution,
        )
        return record

    # ---------------------------------------------------------------------------------
    # bad records
    # ---------------------------------------------------------------------------------

    def bad_record(self, kind: BadKind, topic: str) -> bytes:
        """A Kafka value for ``topic`` that the replicator must send to the dead-letter
        topic with reason ``EXPECTED_REASON[kind]``."""
        return self.bad_message(kind, topic)[1]

    def bad_message(self, kind: BadKind, topic: str) -> tuple[bytes, bytes]:
        """(key, value) of a bad record of ``kind`` for ``topic`` (see ``bad_record``)."""
        rng = self.rng
        if kind == "not_wire_format":
            key, record, _ = self.next(topic)
            if rng.random() < 0.5:
                return key, json.dumps(record).encode("utf-8")
            size = rng.randint(1, 300)
            return key, bytes([rng.randint(1, 255)]) + rng.randbytes(size - 1)
        if kind == "unknown_schema_id":
            key, value, _ = self.next_wire(topic)
            unknown = max(self.registry.ids()) + rng.randint(1, 100_000)
            return key, value[:1] + unknown.to_bytes(4, "big") + value[HEADER_SIZE:]
        if kind == "wrong_topic_schema":
            others = [t for t in self.registry.topics() if t != topic]
            if not others:
                raise ValueError("wrong_topic_schema needs a second topic in the registry")
            key, value, _ = self.next_wire(rng.choice(others))
            return key, value
        if kind == "truncated":
            key, value, _ = self.next_wire(topic)
            return key, value[: rng.randint(HEADER_SIZE, len(value) - 1)]
        if kind == "invalid_value":
            key, record, schema = self.next(topic)
            self._make_invalid(record)
            return key, encode_wire(schema, record)
        if kind == "direct_identifier":
            key, record, schema = self.next(topic)
            fields = self._string_fields.get(schema.id)
            if fields is None:
                fields = self._string_fields[schema.id] = _string_fields(schema)
            record[rng.choice(fields)] = random_nir(rng)
            return key, encode_wire(schema, record)
        raise ValueError(f"unknown bad record kind {kind!r}")

    def _make_invalid(self, record: dict[str, Any]) -> None:
        """Make a good record schema-valid but impossible (one change)."""
        rng = self.rng
        date_field = "care_start_date" if "care_start_date" in record else "dispensing_date"
        change = rng.randrange(3)
        if change == 0:
            record["base_amount_cents"] = -rng.randint(1, 100_000)
        elif change == 1:
            record[date_field] = MIN_DATE_DAYS - rng.randint(1, 40_000)
        else:
            future = record["event_time"] // DAY_MS + rng.randint(2, 400)
            record[date_field] = future
            if "settlement_date" in record:
                record["settlement_date"] = future
