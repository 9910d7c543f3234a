"""Health-data rules applied to every decoded record (pure code, no I/O, no clock).

``check_record`` returns the first ``Violation`` found, or ``None`` for a good record. A
record with a violation goes to the dead-letter topic and is never written to a store.

This module is the specification. ``replicator.judge.compiled.checker_for(schema)`` gives
the same results faster for records decoded with a known writer schema: its generated fast
path accepts only records this module accepts, and it hands every other record to
``check_record``; so does the compiled extension ``replicator/_fastcheck.c`` (programs from
``replicator.judge.native``), which judges the raw Avro body before any decode. A change to
a rule here must be mirrored in both (a new or stricter rule would otherwise be skipped by
the fast paths); ``tests/unit/judge/test_compiled.py`` and ``test_native.py``
compare them with this module, and the first fails when the code of these rules changes.

1. ``direct_identifier`` (checked first, over the whole record): a French NIR (social
   security number) in **any** string value, at any depth (nested records, arrays, map
   keys and values, optional fields, fields this module does not know yet). ``bytes``
   values are scanned too, read as Latin-1. See ``find_nir`` for what counts as a NIR.

2. ``invalid_value``: values that cannot be true. The rules are keyed by field name, not
   by topic, so they keep working if topics are renamed, and each applies whenever its
   field is present (a null optional field is skipped):

   - ``event_time`` (ms since the epoch, UTC) lies in [2000-01-01, 2100-01-01): anything
     else is a unit error (seconds, microseconds) or garbage.
   - ``event_id`` is a UUID in its canonical text form (8-4-4-4-12 hex digits).
   - ``beneficiary_id`` is 64 lowercase hex characters (a SHA-256-sized pseudonym);
     ``prescriber_id``, ``executor_id``, ``pharmacy_id`` are 32 lowercase hex characters.
     A pseudonym field with another shape may be a leaked clear identifier.
   - ``birth_year`` lies in [1890, year of ``event_time``].
   - ``sex`` is 1 (male) or 2 (female).
   - ``residence_department`` is '01'..'19', '2A', '2B', '21'..'95', '971'..'976', or
     '99' (living abroad).
   - dates (``care_start_date``, ``settlement_date``, ``dispensing_date``, days since
     1970-01-01) are not before 1900-01-01, not before 1 January of ``birth_year``, and do
     not start more than one day after ``event_time`` (a day of slack absorbs local time
     zones: overseas departments are up to 14 hours away from UTC);
     ``settlement_date`` is not before ``care_start_date``.
   - every field whose name ends in ``_amount_cents`` is >= 0: a correction is sent as an
     event with ``is_correction`` set and the corrected values, never as a negative
     compensating line; ``reimbursed_amount_cents`` is at most ``base_amount_cents`` (the
     compulsory scheme never reimburses more than 100% of the base) and at most
     ``paid_amount_cents`` (nobody is reimbursed more than was spent).
   - ``prestation_nature`` is a 4-digit code (1000..9999).
   - ``act_code`` is a CCAM code: 4 capital letters then 3 digits (e.g. 'DEQP003').
   - ``cip13`` is 13 digits starting with '3400' with a valid EAN-13 check digit.
   - ``atc_code`` is a full 7-character ATC code (level 5) whose first letter is one of
     the 14 anatomical main groups, e.g. 'N02BE01'.
   - ``quantity`` is >= 1.

   Timestamps and dates may also be given as ``datetime``/``date`` objects (a record read
   with logical types applied). No rule looks at the wall clock: "the future" always means
   after the record's own ``event_time``, so a replay judges every record the same way.

Neither ``Violation.detail`` nor ``NirMatch`` ever holds record contents: only field
names, rule descriptions and character positions.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, Literal

ViolationReason = Literal["direct_identifier", "invalid_value"]
VIOLATION_REASONS: Final[tuple[ViolationReason, ...]] = ("direct_identifier", "invalid_value")


@dataclass(frozen=True)
class Violation:
    """Why a record is refused. ``field`` is a path: a top-level field name, then ``[i]``
    for an array item and ``{i}`` for the i-th entry of a nested record or map (never a map
    key: a key is data)."""

    reason: ViolationReason
    field: str
    detail: str


@dataclass(frozen=True)
class NirMatch:
    """Where a NIR was found: character positions only, never the number itself."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


# --------------------------------------------------------------------------------------
# NIR detection
# --------------------------------------------------------------------------------------
#
# Layout of a NIR (13 characters) and its key:
#   sex        1 digit   1 or 2; also 3, 4 (special registrations) and 7, 8 (provisional
#                        numbers, NIA). All six are accepted: a missed identifier costs
#                        more than a rare false positive, which the key check keeps rare.
#   birth year 2 digits  00..99
#   month      2 digits  01..12, and the values INSEE gives when the birth month is
#                        unknown or fictitious: 20, 30..42, 50..99. Refused: 00, 13..19,
#                        21..29, 43..49.
#   department 2 chars   01..99 or 2A / 2B (Corsica, either case). Overseas numbers use
#                        97 / 98 here and the third digit of the department in the commune.
#   commune    3 digits
#   order      3 digits
#   key        2 digits  97 - (N mod 97), N being the 13 characters as a number with
#                        2A -> 19 and 2B -> 18.
# A single separator (space, no-break space U+00A0 or narrow no-break space U+202F) is
# allowed between groups, so "1 85 05 78 006 084 91" and "185057800608491" both match;
# digits are ASCII digits only. The NIR must be its own token: not preceded nor followed
# by an alphanumeric character (str.isalnum, Unicode-aware; '_' and punctuation are
# boundaries), so a digit run inside a hexadecimal pseudonym or a longer number never
# matches. Only the regex runs on every string; the key is computed for its rare matches.

_SEP: Final = "[ \u00a0\u202f]?"
_NIR_RE: Final = re.compile(
    r"(?<![^\W_])"  # start of token: not after an alphanumeric character
    + r"[123478]"  # sex
    + _SEP
    + r"[0-9]{2}"  # birth year
    + _SEP
    + r"(?:0[1-9]|1[0-2]|20|3[0-9]|4[0-2]|[5-9][0-9])"  # birth month
    + _SEP
    + r"(?:0[1-9]|[1-9][0-9]|2[ABab])"  # department
    + _SEP
    + r"[0-9]{3}"  # commune
    + _SEP
    + r"[0-9]{3}"  # order
    + _SEP
    + r"[0-9]{2}"  # key
    + r"(?![^\W_])"  # end of token: not before an alphanumeric character
)
_SEPARATORS: Final = str.maketrans("", "", " \u00a0\u202f")
_NIR_MIN_LENGTH: Final = 15
# Shapes in which no NIR token can hide, checked with a cheap regex before the NIR regex:
# - only ASCII letters and digits: one token, so a NIR would be the whole string (15 chars)
_ALNUM_ASCII: Final = re.compile(r"[0-9A-Za-z]*")
# - a canonical UUID: its longest token has 12 characters, fewer than a NIR's 15
_UUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def nir_key_is_valid(nir: str) -> bool:
    """True if ``nir`` (the 15 characters, separators removed) has the right key."""
    department = nir[5:7].upper()
    if department == "2A":
        department = "19"
    elif department == "2B":
        department = "18"
    number = int(nir[:5] + department + nir[7:13])
    return 97 - number % 97 == int(nir[13:15])


def find_nir(text: str) -> NirMatch | None:
    """The first NIR token of ``text`` with a valid key, or None."""
    search = _NIR_RE.search
    position = 0
    while (match := search(text, position)) is not None:
        if nir_key_is_valid(match.group().translate(_SEPARATORS)):
            return NirMatch(match.start(), match.end())
        position = match.start() + 1
    return None


def _find_nir_fast(text: str) -> NirMatch | None:
    """``find_nir`` behind cheap filters for the shapes that cannot hold a NIR token."""
    length = len(text)
    if length < _NIR_MIN_LENGTH:
        return None
    if length != _NIR_MIN_LENGTH and (_ALNUM_ASCII.fullmatch(text) or _UUID_RE.fullmatch(text)):
        return None
    return find_nir(text)


def _identifier_violation(path: str, match: NirMatch, length: int) -> Violation:
    return Violation(
        "direct_identifier",
        path,
        f"NIR-shaped token with a valid key at characters {match.start}-{match.end} "
        f"of a {length}-character value",
    )


def _scan_value(value: Any, path: str) -> Violation | None:
    """Recursive NIR scan of a nested value (anything below the top level)."""
    if isinstance(value, str):
        match = _find_nir_fast(value)
        return None if match is None else _identifier_violation(path, match, len(value))
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("latin-1")
        match = _find_nir_fast(text)
        return None if match is None else _identifier_violation(path, match, len(text))
    if isinstance(value, Mapping):
        for index, (key, item) in enumerate(value.items()):
            found = _scan_value(key, f"{path}{{{index}}}:key") or _scan_value(
                item, f"{path}{{{index}}}"
            )
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _scan_value(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def find_direct_identifier(record: Mapping[str, Any]) -> Violation | None:
    """The first string value of ``record`` (at any depth) holding a NIR, as a Violation."""
    for name, value in record.items():
        kind = type(value)
        if kind is str:
            if len(value) >= _NIR_MIN_LENGTH:
                match = _find_nir_fast(value)
                if match is not None:
                    return _identifier_violation(name, match, len(value))
        elif value is None or kind is int or kind is bool or kind is float:
            continue
        else:
            found = _scan_value(value, name)
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------------------
# Impossible values
# --------------------------------------------------------------------------------------

DAY_MS: Final = 86_400_000
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MIN_DATE: Final = date(1900, 1, 1)
MIN_DATE_DAYS: Final = MIN_DATE.toordinal() - _EPOCH_ORDINAL
MIN_EVENT_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_EVENT_MS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z
MIN_BIRTH_YEAR: Final = 1890
_DATE_FIELDS: Final = ("care_start_date", "settlement_date", "dispensing_date")
_HEX_FIELDS: Final = (
    ("beneficiary_id", 64),
    ("prescriber_id", 32),
    ("executor_id", 32),
    ("pharmacy_id", 32),
)
_LOWER_HEX: Final = re.compile(r"[0-9a-f]+")
_DEPARTMENT_RE: Final = re.compile(r"0[1-9]|1[0-9]|2[1-9AB]|[3-8][0-9]|9[0-5]|97[1-6]|99")
_CCAM_RE: Final = re.compile(r"[A-Z]{4}[0-9]{3}")
_ATC_RE: Final = re.compile(r"[ABCDGHJLMNPRSV][0-9]{2}[A-Z]{2}[0-9]{2}")
_CIP13_RE: Final = re.compile(r"3400[0-9]{9}")


class _WrongType(Exception):
    pass


def _days(value: Any) -> int:
    """A date as days since 1970-01-01, from an int or a ``date``."""
    if type(value) is int:
        return value
    if isinstance(value, datetime):
        raise _WrongType
    if isinstance(value, date):
        return value.toordinal() - _EPOCH_ORDINAL
    raise _WrongType


def _millis(value: Any) -> int:
    """A timestamp as ms since the epoch, from an int or an aware ``datetime``."""
    if type(value) is int:
        return value
    if isinstance(value, datetime) and value.tzinfo is not None:
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    raise _WrongType


def _int(value: Any) -> int:
    if type(value) is int:
        return value
    raise _WrongType


_FIRST_YEAR: Final = MIN_BIRTH_YEAR
_LAST_YEAR: Final = 2100
# day number (since 1970-01-01) of 1 January of each year from _FIRST_YEAR to _LAST_YEAR
_YEAR_STARTS: Final = tuple(
    date(year, 1, 1).toordinal() - _EPOCH_ORDINAL for year in range(_FIRST_YEAR, _LAST_YEAR + 1)
)


def _year_start_days(year: int) -> int:
    """Day number of 1 January of ``year`` (``_FIRST_YEAR`` <= year <= ``_LAST_YEAR``)."""
    return _YEAR_STARTS[year - _FIRST_YEAR]


def _year_of_ms(millis: int) -> int:
    """UTC year of a timestamp in [MIN_EVENT_MS, MAX_EVENT_MS)."""
    return _FIRST_YEAR - 1 + bisect_right(_YEAR_STARTS, millis // DAY_MS)


_AMOUNT_SUFFIX: Final = "_amount_cents"
_amount_fields_cache: dict[tuple[str, ...], tuple[str, ...]] = {}


def _amount_fields(record: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of the record's ``*_amount_cents`` fields, cached by the record's field names
    (records of one schema share them; the cache is bounded)."""
    names = tuple(record)
    found = _amount_fields_cache.get(names)
    if found is None:
        found = tuple(name for name in names if name.endswith(_AMOUNT_SUFFIX))
        if len(_amount_fields_cache) >= 256:
            _amount_fields_cache.clear()
        _amount_fields_cache[names] = found
    return found


def ean13_is_valid(code: str) -> bool:
    """True if ``code`` (13 ASCII digits) ends with its EAN-13 check digit: weights 1, 3,
    1, 3, ... over the first 12 digits; check = (10 - total mod 10) mod 10."""
    d = code.encode("ascii")
    # each byte is 48 + digit: 6 digits weighted 1 and 6 weighted 3 carry 48 * 24 in excess
    total = (
        d[0] + d[2] + d[4] + d[6] + d[8] + d[10] + 3 * (d[1] + d[3] + d[5] + d[7] + d[9] + d[11])
    )
    return (10 - (total - 48 * 24) % 10) % 10 == d[12] - 48


def _invalid(name: str, detail: str) -> Violation:
    return Violation("invalid_value", name, detail)


def find_invalid_value(record: Mapping[str, Any]) -> Violation | None:
    """The first impossible value of ``record`` (rules in the module docstring), or None."""
    name = ""
    try:
        get = record.get
        event_ms: int | None = None
        name = "event_time"
        value = get(name)
        if value is not None:
            event_ms = _millis(value)
            if not MIN_EVENT_MS <= event_ms < MAX_EVENT_MS:
                return _invalid(name, "event_time outside [2000-01-01, 2100-01-01)")

        name = "event_id"
        value = get(name)
        if value is not None and not (type(value) is str and _UUID_RE.fullmatch(value)):
            return _invalid(name, "not a UUID in canonical text form")

        for name, length in _HEX_FIELDS:
            value = get(name)
            if value is not None and not (
                type(value) is str and len(value) == length and _LOWER_HEX.fullmatch(value)
            ):
                return _invalid(name, f"not a pseudonym of {length} lowercase hex characters")

        name = "birth_year"
        birth_year: int | None = None
        value = get(name)
        if value is not None:
            birth_year = _int(value)
            latest = _year_of_ms(event_ms) if event_ms is not None else _LAST_YEAR - 1
            if not MIN_BIRTH_YEAR <= birth_year <= latest:
                return _invalid(name, f"birth_year outside [{MIN_BIRTH_YEAR}, event year]")

        name = "sex"
        value = get(name)
        if value is not None and value not in (1, 2):
            return _invalid(name, "sex code is neither 1 nor 2")

        name = "residence_department"
        value = get(name)
        if value is not None and not (type(value) is str and _DEPARTMENT_RE.fullmatch(value)):
            return _invalid(name, "not a French department code")

        lowest = (
            MIN_DATE_DAYS
            if birth_year is None
            else max(MIN_DATE_DAYS, _year_start_days(birth_year))
        )
        for name in _DATE_FIELDS:
            value = get(name)
            if value is None:
                continue
            days = _days(value)
            if days < MIN_DATE_DAYS:
                return _invalid(name, "date before 1900-01-01")
            if days < lowest:
                return _invalid(name, "date before the beneficiary's birth year")
            if event_ms is not None and days * DAY_MS > event_ms + DAY_MS:
                return _invalid(name, "date starts more than 1 day after event_time")
        care, settlement = get("care_start_date"), get("settlement_date")
        if care is not None and settlement is not None and _days(settlement) < _days(care):
            name = "settlement_date"
            return _invalid(name, "settlement_date before care_start_date")

        for name in _amount_fields(record):
            value = get(name)
            if value is not None and _int(value) < 0:
                return _invalid(name, "negative amount")
        reimbursed = get("reimbursed_amount_cents")
        if reimbursed is not None:
            for bound_name in ("base_amount_cents", "paid_amount_cents"):
                bound = get(bound_name)
                if bound is not None and reimbursed > bound:
                    return _invalid(
                        "reimbursed_amount_cents", f"reimbursed amount above {bound_name}"
                    )

        name = "prestation_nature"
        value = get(name)
        if value is not None and not 1000 <= _int(value) <= 9999:
            return _invalid(name, "prestation nature is not a 4-digit code")

        name = "act_code"
        value = get(name)
        if value is not None and not (type(value) is str and _CCAM_RE.fullmatch(value)):
            return _invalid(name, "not a CCAM act code")

        name = "cip13"
        value = get(name)
        if value is not None and not (
            type(value) is str and _CIP13_RE.fullmatch(value) and ean13_is_valid(value)
        ):
            return _invalid(name, "not a CIP13 code with a valid check digit")

        name = "atc_code"
        value = get(name)
        if value is not None and not (type(value) is str and _ATC_RE.fullmatch(value)):
            return _invalid(name, "not a 7-character ATC code")

        name = "quantity"
        value = get(name)
        if value is not None and _int(value) < 1:
            return _invalid(name, "quantity below 1")
    except _WrongType:
        return _invalid(name, "value of an unexpected type")
    return None


def check_record(topic: str, record: Mapping[str, Any]) -> Violation | None:
    """The first health-data violation of a decoded record of ``topic``, or None.

    ``direct_identifier`` is checked first, over every string value; then the
    ``invalid_value`` rules. ``topic`` is part of the contract for rules that may depend on
    it; today every rule is keyed by field name (see the module docstring).
    """
    del topic
    return find_direct_identifier(record) or find_invalid_value(record)
