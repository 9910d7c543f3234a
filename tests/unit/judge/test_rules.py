"""Health-data rules: NIR detection (direct identifiers) and impossible values."""

from __future__ import annotations

import random
import re
import sys
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator.config import DEFAULT_SCHEMAS_DIR
from replicator.devtools.synthetic import SyntheticSource, random_nir
from replicator.judge.native import extension
from replicator.judge.rules import (
    _SEP,
    MIN_DATE_DAYS,
    SEPARATOR_CHARS,
    Violation,
    _find_nir_fast,
    check_record,
    find_direct_identifier,
    find_identifier_in_message,
    find_nir,
    find_nir_in_bytes,
    nir_key_is_valid,
)
from replicator.schemas import PRESCRIPTIONS_TOPIC, REIMBURSEMENTS_TOPIC, SchemaRegistry
from tests.support.nirs import (
    SURROUNDINGS,
    embed,
    nir_in_text,
    nir_spellings,
    realistic_values,
    wrong_key,
)

NIR_FUZZ = settings(max_examples=600, deadline=None)

REGISTRY = SchemaRegistry.load(DEFAULT_SCHEMAS_DIR)
TOPICS = (REIMBURSEMENTS_TOPIC, PRESCRIPTIONS_TOPIC)

# Valid NIRs (keys computed by hand: 97 - N mod 97)
NIR = "185057800608491"  # 1 85 05 78 006 084 | 91
NIR_SPACED = "1 85 05 78 006 084 91"
NIR_2A = "185052A00608435"  # N = 1850519006084
NIR_2B = "269122B03451228"  # N = 2691218034512
NIR_PROVISIONAL = "769059912345606"  # sex 7 (provisional), born abroad (99)
VALID_NIRS = (
    NIR,
    NIR_SPACED,
    NIR_2A,
    "1 85 05 2A 006 084 35",
    "1 85 05 2a 006 084 35",
    NIR_2B,
    "2 69 12 2B 034 512 28",
    NIR_PROVISIONAL,
    "2690275123456 80",
    "1\u00a085\u00a005\u00a078\u00a0006\u00a0084\u00a091",
    "1\u202f85\u202f05\u202f78\u202f006\u202f084\u202f91",
    "1  85 05 78 006 084 91",  # two separators
    "1-85-05-78-006-084-91",
    "1.85.05.78.006.084.91",
    "1/85/05/78/006/084/91",
    "1_85_05_78_006_084_91",
    "1\t85\t05\n78\r\n006 \u2009084\u00a0\u00a091",
    "1 85 05 78 006 084 - 91",
    "1850578006084/91",
    "185 05 78 006 084.91",
    "1\u201385\u201305\u201378\u2013006\u2013084\u201391",  # en dashes
    "1\u200b85\u200b05\u200b78\u200b006\u200b084\u200b91",  # zero-width spaces
)


def _key(first13: str) -> int:
    """The NIR key by the other published formulation: for Corsica, take the number with
    '20' in place of the department and subtract 1,000,000 (2A) or 2,000,000 (2B)."""
    department = first13[5:7].upper()
    if department in ("2A", "2B"):
        number = int(first13[:5] + "20" + first13[7:]) - (
            1_000_000 if department == "2A" else 2_000_000
        )
    else:
        number = int(first13)
    return 97 - number % 97


def _good(topic: str, seed: int = 1, v2_share: float = 0.5) -> dict[str, Any]:
    return SyntheticSource(seed, REGISTRY, v2_share=v2_share).next(topic)[1]


# --- NIR: what is one -------------------------------------------------------------------


@pytest.mark.parametrize("nir", [NIR, NIR_2A, NIR_2B, NIR_PROVISIONAL])
def test_test_nirs_have_valid_keys(nir: str) -> None:
    assert _key(nir[:13]) == int(nir[13:])
    assert nir_key_is_valid(nir)


@pytest.mark.parametrize("nir", VALID_NIRS)
def test_valid_nirs_are_found(nir: str) -> None:
    match = find_nir(nir)
    assert match is not None
    assert (match.start, match.end) == (0, len(nir))


@pytest.mark.parametrize(
    "text",
    [
        "patient {} vu le 3 mars",
        "{}",
        "nir:{};",
        "({})",
        "nir_{}_x",
        "{}\n",
        "12 {} 34",  # a separator, then other digits
        "x-{}-y",
        "é {}",
        "NIR{}",  # glued to letters or punctuation
        "x{}y",
        "é{}é",
        "a{}b",  # hex letters, in a run too short for a hash
        "0x{}",
        "deadbeef{}cafe",
        "-{}-",
        "{}.",
    ],
)
@pytest.mark.parametrize("nir", [NIR, NIR_SPACED, NIR_2A, "2 69 12 2B 034 512 28"])
def test_nir_found_inside_text(text: str, nir: str) -> None:
    value = text.format(nir)
    match = find_nir(value)
    assert match is not None
    assert value[match.start : match.end] == nir


def test_brief_example_has_a_wrong_key() -> None:
    # "1 85 05 78 006 084 36", the example of the brief, has key 36 where 91 is right
    assert find_nir("1 85 05 78 006 084 36") is None
    assert find_nir("185057800608436") is None


def _wrong_key(nir: str) -> str:
    key = int(nir[-2:])
    return nir[:-2] + f"{key % 97 + 1:02d}"


@pytest.mark.parametrize(
    "text",
    [
        _wrong_key(NIR),
        _wrong_key(NIR_SPACED),
        _wrong_key(NIR_2A),
        _wrong_key(NIR_2B),
        NIR[:-1],  # 14 digits
        NIR + "1",  # 16 digits
        "9" + NIR,  # 16 digits
        "0123456789abcdef" + NIR + "0",  # glued to digits
        "0123456789abcdef" + NIR + "0123456789abcdef",  # inside a 47-hex-digit hash
        "deadbeefcafe" + NIR + "deadbeef",  # inside a 35-hex-digit hash
        "3fa85f64-5717-4562-b185-057800608491",  # across a UUID's last hyphen
        "00-0af7651916cd43dd8448eb211c80319c-ab18505780060849-91",  # in a traceparent
        "185137800608491",  # month 13
        "185007800608491",  # month 00
        "585057800608491",  # sex 5
        "185050000608491",  # department 00
        "1850578006084 9 1",  # key split
        "1 8 5 0 5 7 8 0 0 6 0 8 4 9 1",  # a separator inside a group
        "18 505 78 006 084 91",
        "1:85:05:78:006:084:91",  # a colon is not a separator
        "".join(chr(0xFF10 + int(c)) for c in NIR),  # full-width digits
        "185052C00608435",  # not a Corsican department
        "",
        "1 85 05",
    ],
)
def test_near_misses_are_not_nirs(text: str) -> None:
    assert find_nir(text) is None


def _with_key(first13: str) -> str:
    return first13 + f"{_key(first13):02d}"


def test_shape_rules_with_valid_keys() -> None:
    """Which sex digits, months and departments count (each with a correct key)."""
    for sex in "0123456789":
        found = find_nir(_with_key(f"{sex}850578006084")) is not None
        assert found == (sex in "123478"), sex
    for month in range(100):
        found = find_nir(_with_key(f"185{month:02d}78006084")) is not None
        expected = 1 <= month <= 12 or month == 20 or 30 <= month <= 42 or month >= 50
        assert found == expected, month
    for department in [f"{n:02d}" for n in range(100)] + ["2A", "2B", "2a", "2b"]:
        found = find_nir(_with_key(f"18505{department}006084")) is not None
        assert found == (department != "00"), department
    for department in ("2C", "AA", "A2"):
        assert not any(find_nir(f"18505{department}006084{k:02d}") for k in range(100))


def test_a_later_candidate_is_found_after_a_wrong_key() -> None:
    text = f"{_wrong_key(NIR)} {NIR_2B}"
    match = find_nir(text)
    assert match is not None
    assert text[match.start : match.end] == NIR_2B


def test_random_valid_nirs_are_found_and_one_digit_off_are_not() -> None:
    rng = random.Random(42)
    for _ in range(5_000):
        nir = random_nir(rng)
        assert find_nir(nir) is not None, nir
        assert find_nir(f"ref {nir}.") is not None
        assert find_nir(_wrong_key(nir)) is None


def test_a_million_realistic_pseudonyms_and_codes_give_no_false_positive() -> None:
    """P10: 1,000,000 seeded values of the forms in use (64- and 32-hex pseudonyms, UUIDs,
    base64url pseudonyms, traceparent headers, CIP13, ATC and CCAM codes, amounts): the
    guard finds no NIR in any of them, by the compiled scan and by the specification. Many
    of them do hold a digit run of NIR shape with a valid key between letters: the hash and
    hex-identifier exemptions (E1, E2 in rules.py) are what keeps them out."""
    module = extension()
    assert module is not None, "replicator._fastcheck is not built: run `make setup`"
    holds_no_nir = module.holds_no_nir
    glued = re.compile(  # the NIR rule without its exemptions, glued spellings only
        r"(?<![0-9])(?=([123478][0-9]{2}(?:0[1-9]|1[0-2]|20|3[0-9]|4[0-2]|[5-9][0-9])"
        r"(?:0[1-9]|[1-9][0-9]|2[ABab])[0-9]{8})(?![0-9]))"
    )
    count = 1_000_000
    flagged: dict[str, int] = {}
    seen: dict[str, int] = {}
    keyed = 0
    for form, value in realistic_values(seed=20261126, count=count):
        seen[form] = seen.get(form, 0) + 1
        clean = find_nir(value) is None
        if not clean:
            flagged[form] = flagged.get(form, 0) + 1
        data = value.encode()
        if data.isascii():  # else the compiled scan leaves the value to Python
            assert holds_no_nir(data) == clean, value
        keyed += any(nir_key_is_valid(run) for run in glued.findall(value))
    rate = sum(flagged.values()) / count
    print(
        f"\nNIR guard over {count:,} realistic values {seen}: false positives {flagged}, "
        f"rate {rate:.7f}; glued NIR-shaped runs with a valid key (exempt: part of a hash): {keyed}"
    )
    assert rate == 0, flagged
    assert keyed > 0  # the sample does exercise the risk the exemptions remove


def test_random_hex_inside_text_gives_no_false_positive() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        text = " ".join(f"{rng.getrandbits(128):032x}" for _ in range(4))
        assert find_nir(text) is None


def test_the_separator_class_is_whitespace_and_the_listed_characters() -> None:
    """The regex's separator class is exactly str.isspace() plus SEPARATOR_CHARS, and holds
    no character a NIR group is made of (so a match is unique at each start)."""
    separator = re.compile(_SEP.removesuffix("*"))
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        expected = char.isspace() or char in SEPARATOR_CHARS
        assert bool(separator.fullmatch(char)) == expected, hex(code)
        if expected:
            assert char not in "0123456789ABab"


# --- NIR: every spelling, anywhere (property tests) -----------------------------------------


@NIR_FUZZ
@given(case=nir_in_text())
def test_a_valid_nir_in_any_spelling_anywhere_is_caught(case: tuple[str, str, int]) -> None:
    text, nir, start = case
    match = find_nir(text)
    assert match is not None and match.start <= start
    assert _find_nir_fast(text) == match
    assert find_direct_identifier({"note": text}) is not None
    assert find_direct_identifier({"notes": [text], "m": {"k": text}}) is not None
    encoded = text.encode("utf-8")
    for key, headers in ((encoded, None), (b"k", [("h", encoded)]), (None, [(text, b"")])):
        violation = find_identifier_in_message(key, headers)
        assert violation is not None and violation.reason == "direct_identifier"
        assert nir not in violation.detail and "".join(nir.split()) not in violation.detail
    module = extension()
    assert module is not None
    assert module.holds_no_nir(encoded) is False


@NIR_FUZZ
@given(nir=nir_spellings(), before=SURROUNDINGS, after=SURROUNDINGS)
def test_a_wrong_key_in_any_spelling_is_not_reported(nir: str, before: str, after: str) -> None:
    text, start = embed(before, wrong_key(nir), after)
    match = find_nir(text)
    assert match is None or (match.start, match.end) != (start, start + len(nir))


_ASCII_NIR_LIKE = st.text(alphabet="0123456789 2ABabcdefg_-./\t\n:x", max_size=80)


@NIR_FUZZ
@given(text=st.one_of(_ASCII_NIR_LIKE, nir_in_text().map(lambda case: case[0])))
def test_the_compiled_scan_is_the_specification_on_ascii(text: str) -> None:
    module = extension()
    assert module is not None
    data = text.encode("utf-8")
    if data.isascii():
        assert module.holds_no_nir(data) == (find_nir(text) is None)
    else:
        assert module.holds_no_nir(data) is False  # not sure: Python decides


def test_bytes_are_read_as_latin_1_and_as_utf_8() -> None:
    spaced = "1\u202f85\u202f05\u202f78\u202f006\u202f084\u202f91"
    assert find_nir_in_bytes(spaced.encode("utf-8")) is not None  # E2 80 AF in UTF-8
    assert find_nir_in_bytes(NIR_SPACED.replace(" ", "\u00a0").encode("latin-1")) is not None
    found = find_nir_in_bytes(b"\xff" + NIR.encode())
    assert found is not None and found[1] == "Latin-1"
    assert find_nir_in_bytes(b"\xff" + _wrong_key(NIR).encode()) is None


def test_a_nir_in_the_key_or_a_header_is_named_by_position() -> None:
    assert find_identifier_in_message(None, None) is None
    assert find_identifier_in_message(b"0" * 64, [("traceparent", b"00-" + b"a" * 32)]) is None
    key = find_identifier_in_message(f"NIR{NIR}".encode(), None)
    assert key == Violation(
        "direct_identifier",
        "<key>",
        "NIR-shaped token with a valid key at characters 3-18 of the message key "
        "(18 bytes read as ASCII)",
    )
    header = find_identifier_in_message(b"k", [("a", b"x"), ("b", None), ("c", NIR.encode())])
    assert header is not None and header.field == "<header 2>"
    assert header.detail.endswith("of the value of header 2 (15 bytes read as ASCII)")
    name = find_identifier_in_message(b"k", {f"id-{NIR}": b"x"})
    assert name is not None and name.field == "<header 0 name>"
    assert NIR not in name.detail


# --- NIR: in every string field -----------------------------------------------------------


def _string_fields(schema_id: int) -> list[str]:
    schema = REGISTRY.get(schema_id)
    names = []
    for field in schema.parsed["fields"]:
        kind = field["type"]
        kinds = kind if isinstance(kind, list) else [kind]
        if any(k == "string" or (isinstance(k, dict) and k.get("type") == "string") for k in kinds):
            names.append(field["name"])
    return names


@pytest.mark.parametrize("schema_id", [1, 2, 3, 4])
@pytest.mark.parametrize("nir", [NIR, NIR_SPACED, NIR_2A, "2 69 12 2B 034 512 28"])
def test_nir_in_every_string_field_is_a_direct_identifier(schema_id: int, nir: str) -> None:
    schema = REGISTRY.get(schema_id)
    fields = _string_fields(schema_id)
    assert len(fields) >= 6
    source = SyntheticSource(schema_id, REGISTRY, v2_share=1.0 if schema.version == 2 else 0.0)
    for name in fields:
        _, record, got_schema = source.next(schema.topic)
        assert got_schema.id == schema_id
        for value in (nir, f"texte libre {nir} fin"):
            record[name] = value
            violation = check_record(schema.topic, record)
            assert violation == Violation(
                "direct_identifier", name, violation.detail if violation else ""
            )
            assert violation is not None
            assert nir not in violation.detail and nir.replace(" ", "") not in violation.detail


def test_nir_in_nested_and_unknown_fields() -> None:
    record = _good(REIMBURSEMENTS_TOPIC)
    cases: list[tuple[Any, str]] = [
        (NIR, "future_note"),
        ({"inner": {"deep": [1, "ok", f"x {NIR_2B}"]}}, "future_note{0}{0}[2]"),
        ([None, {"a": NIR_SPACED}], "future_note[1]{0}"),
        ({NIR: "value"}, "future_note{0}:key"),
        (NIR.encode("ascii"), "future_note"),
        ((f"{NIR_2A}",), "future_note[0]"),
    ]
    for value, path in cases:
        violation = check_record(REIMBURSEMENTS_TOPIC, {**record, "future_note": value})
        assert violation is not None
        assert (violation.reason, violation.field) == ("direct_identifier", path)


def test_direct_identifier_is_checked_before_invalid_values() -> None:
    record = _good(PRESCRIPTIONS_TOPIC)
    record["quantity"] = -1
    record["pharmacy_id"] = NIR
    violation = check_record(PRESCRIPTIONS_TOPIC, record)
    assert violation is not None and violation.reason == "direct_identifier"


def test_good_records_pass() -> None:
    source = SyntheticSource(99, REGISTRY)
    for _ in range(5_000):
        for topic in TOPICS:
            assert check_record(topic, source.next(topic)[1]) is None


def test_renamed_topic_keeps_the_rules() -> None:
    record = _good(PRESCRIPTIONS_TOPIC)
    record["quantity"] = 0
    violation = check_record("prod.snds.prescriptions", record)
    assert violation is not None and violation.field == "quantity"


# --- impossible values -------------------------------------------------------------------

DAY = 1


def _event_day(record: dict[str, Any]) -> int:
    return int(record["event_time"]) // 86_400_000


REIMBURSEMENT_CASES: list[tuple[str, Any, str]] = [
    ("event_time", 0, "event_time"),
    ("event_time", 5_000_000_000_000, "event_time"),
    ("event_id", "not-a-uuid", "event_id"),
    ("beneficiary_id", "ABCDEF" * 10 + "0123", "beneficiary_id"),  # uppercase
    ("beneficiary_id", "a" * 63, "beneficiary_id"),
    ("beneficiary_id", "Jean Dupont", "beneficiary_id"),
    ("executor_id", "g" * 32, "executor_id"),
    ("prescriber_id", "1" * 64, "prescriber_id"),
    ("birth_year", 1889, "birth_year"),
    ("birth_year", 2999, "birth_year"),
    ("sex", 0, "sex"),
    ("sex", 3, "sex"),
    ("residence_department", "20", "residence_department"),
    ("residence_department", "2C", "residence_department"),
    ("residence_department", "96", "residence_department"),
    ("residence_department", "977", "residence_department"),
    ("residence_department", "075", "residence_department"),
    ("care_start_date", MIN_DATE_DAYS - 1, "care_start_date"),
    ("settlement_date", MIN_DATE_DAYS - 1, "settlement_date"),
    ("prestation_nature", 999, "prestation_nature"),
    ("prestation_nature", 10_000, "prestation_nature"),
    ("act_code", "deqp003", "act_code"),
    ("act_code", "DEQP03", "act_code"),
    ("base_amount_cents", -1, "base_amount_cents"),
    ("paid_amount_cents", -5, "paid_amount_cents"),
    ("reimbursed_amount_cents", -5, "reimbursed_amount_cents"),
    ("reimbursed_amount_cents", 10**9, "reimbursed_amount_cents"),
    ("birth_year", "1980", "birth_year"),  # wrong type
    ("care_start_date", "2026-01-01", "care_start_date"),
]

PRESCRIPTION_CASES: list[tuple[str, Any, str]] = [
    ("cip13", "3400935955837", "cip13"),  # wrong check digit
    ("cip13", "340093595583", "cip13"),  # 12 digits
    ("cip13", "4006381333931", "cip13"),  # valid EAN-13, not a French drug
    ("cip13", "34009359558\uff138", "cip13"),  # a full-width digit
    ("atc_code", "N02BE", "atc_code"),
    ("atc_code", "X02BE01", "atc_code"),
    ("atc_code", "n02be01", "atc_code"),
    ("quantity", 0, "quantity"),
    ("quantity", -3, "quantity"),
    ("dispensing_date", MIN_DATE_DAYS - 400, "dispensing_date"),
    ("pharmacy_id", "f" * 31, "pharmacy_id"),
    ("prescriber_id", "", "prescriber_id"),
    ("base_amount_cents", -100, "base_amount_cents"),
]


@pytest.mark.parametrize(("name", "value", "field"), REIMBURSEMENT_CASES)
def test_impossible_reimbursement_values(name: str, value: Any, field: str) -> None:
    for seed in range(3):
        record = _good(REIMBURSEMENTS_TOPIC, seed)
        record[name] = value
        violation = check_record(REIMBURSEMENTS_TOPIC, record)
        assert violation is not None
        assert (violation.reason, violation.field) == ("invalid_value", field)
        if isinstance(value, str) and len(value) > 3:
            assert value not in violation.detail


@pytest.mark.parametrize(("name", "value", "field"), PRESCRIPTION_CASES)
def test_impossible_prescription_values(name: str, value: Any, field: str) -> None:
    for seed in range(3):
        record = _good(PRESCRIPTIONS_TOPIC, seed)
        record[name] = value
        violation = check_record(PRESCRIPTIONS_TOPIC, record)
        assert violation is not None
        assert (violation.reason, violation.field) == ("invalid_value", field)


def test_dates_relative_to_the_event_and_birth() -> None:
    record = _good(REIMBURSEMENTS_TOPIC)
    day = _event_day(record)
    ok = dict(record, care_start_date=day + 1, settlement_date=day + 1)
    # the event at any time of day: the next day is within the slack only if it starts
    # at most 24 h after the event
    ok["event_time"] = day * 86_400_000
    assert check_record(REIMBURSEMENTS_TOPIC, ok) is None
    assert check_record(REIMBURSEMENTS_TOPIC, dict(ok, settlement_date=day + 2)) == Violation(
        "invalid_value", "settlement_date", "date starts more than 1 day after event_time"
    )
    late = dict(record, care_start_date=day + 2, settlement_date=day + 2)
    assert _field(late) == "care_start_date"
    swapped = dict(record, care_start_date=day, settlement_date=day - 1)
    assert _field(swapped) == "settlement_date"
    before_birth = dict(
        record,
        birth_year=2000,
        care_start_date=date(1999, 12, 31).toordinal() - date(1970, 1, 1).toordinal(),
    )
    assert _field(before_birth) == "care_start_date"
    record_2 = _good(PRESCRIPTIONS_TOPIC)
    assert _field(dict(record_2, dispensing_date=_event_day(record_2) + 3)) == "dispensing_date"


def _field(record: dict[str, Any]) -> str | None:
    violation = check_record(REIMBURSEMENTS_TOPIC, record)
    return None if violation is None else violation.field


def test_reimbursed_may_equal_but_not_exceed_base_and_paid() -> None:
    record = _good(REIMBURSEMENTS_TOPIC)
    record.update(base_amount_cents=3000, paid_amount_cents=3500, reimbursed_amount_cents=3000)
    assert check_record(REIMBURSEMENTS_TOPIC, record) is None
    record.update(base_amount_cents=3000, paid_amount_cents=2000, reimbursed_amount_cents=2500)
    assert _field(record) == "reimbursed_amount_cents"
    record.update(base_amount_cents=0, paid_amount_cents=0, reimbursed_amount_cents=0)
    assert check_record(REIMBURSEMENTS_TOPIC, record) is None


def test_unknown_amount_fields_must_not_be_negative() -> None:
    record = _good(PRESCRIPTIONS_TOPIC)
    record["copayment_amount_cents"] = -1
    assert check_record(PRESCRIPTIONS_TOPIC, record) == Violation(
        "invalid_value", "copayment_amount_cents", "negative amount"
    )


def test_null_optional_fields_pass() -> None:
    record = _good(REIMBURSEMENTS_TOPIC)
    record.update(act_code=None, prescriber_id=None, care_setting=None)
    assert check_record(REIMBURSEMENTS_TOPIC, record) is None


def test_records_with_logical_types_applied() -> None:
    """A record read with logical types (datetime / date objects) is judged the same."""
    record = _good(REIMBURSEMENTS_TOPIC)
    epoch = date(1970, 1, 1).toordinal()
    logical = dict(
        record,
        event_time=datetime.fromtimestamp(record["event_time"] / 1000, UTC),
        care_start_date=date.fromordinal(epoch + record["care_start_date"]),
        settlement_date=date.fromordinal(epoch + record["settlement_date"]),
    )
    assert check_record(REIMBURSEMENTS_TOPIC, logical) is None
    logical["care_start_date"] = date(1899, 12, 31)
    assert _field(logical) == "care_start_date"
    logical["care_start_date"] = datetime(2020, 1, 1, tzinfo=UTC)  # a datetime is not a date
    assert _field(logical) == "care_start_date"
    naive = dict(record, event_time=datetime(2026, 1, 1))
    assert _field(naive) == "event_time"


def test_find_direct_identifier_ignores_non_strings() -> None:
    assert find_direct_identifier({"a": 185057800608491, "b": None, "c": 1.5, "d": True}) is None
