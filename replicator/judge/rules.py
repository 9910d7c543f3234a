"""Health-data rules applied to every decoded record (pure code, no I/O, no clock).

``check_record`` returns the first ``Violation`` found, or ``None`` for a good record. A
record with a violation goes to the dead-letter topic and is never written to a store.

This module is the specification. ``replicator.judge.compiled.checker_for(schema)`` gives
the same results faster for records decoded with a known writer schema: its generated fast
path accepts only records this module accepts, and it hands every other record to
``check_record``; so does the compiled extension ``replicator/judge/_fastcheck.c`` (programs from
``replicator.judge.native``), which judges the raw Avro body before any decode. A change to
a rule here must be mirrored in both (a new or stricter rule would otherwise be skipped by
the fast paths); ``tests/unit/judge/test_compiled.py`` and ``test_native.py``
compare them with this module, and the first fails when the code of these rules changes.

1. ``direct_identifier`` (checked first, over the whole record): a French NIR (social
   security number) in **any** string value, at any depth (nested records, arrays, map
   keys and values, optional fields, fields this module does not know yet). ``bytes``
   values are scanned too, read as Latin-1 and, when not ASCII, as UTF-8. The message key
   and headers are scanned by ``find_identifier_in_message`` (the judge does it before the
   value). A NIR counts in any spelling: any run of separators between its groups
   (whitespace of any kind, dots, dashes, slashes, underscores), letters or punctuation
   glued to it; not glued to a digit, not with a wrong key, and not inside a hash or a hex
   identifier (E1, E2), which keeps false positives at zero on a million realistic
   pseudonyms (expected rates with the reasoning at "NIR detection" below).

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
from collections.abc import Mapping, Sequence
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
#
# Spellings. Between two groups (and so between the 13 characters and the key) any number
# of separators, of any mix, may stand: whitespace of any kind (str.isspace: space, tab,
# newline, no-break U+00A0, thin U+2009, narrow no-break U+202F, ...), invisible ones (soft
# hyphen, zero-width space and joiners, word joiner, BOM), dots, dashes, slashes and
# underscores in their ASCII and common Unicode forms (SEPARATOR_CHARS). Inside a group
# nothing may stand: "1 8 4 1 2 ..." or a list of numbers "7 8 9 10 11 ..." is not a NIR
# (allowing it would let numbered lists and tables of figures match). Digits are ASCII.
#
# Boundaries. The first character must not follow an ASCII digit and the key must not be
# followed by one: a NIR glued to letters or punctuation ("NIR184127512345640",
# "x1 84 12 75 123 456 40y") is caught, a 15-digit window of a longer number is not. Two
# exemptions keep random identifiers out, where the digit boundary alone would not:
#   E1 (hashes) the match lies inside a run of 32 or more ASCII hex digits [0-9A-Fa-f]: a
#      hex pseudonym or hash (128 bits or more). Such a run has no separator, so the match
#      is 15 glued characters. Without E1 a 64-hex pseudonym would hold a NIR-shaped digit
#      run bounded by letters a-f with a valid key about 3 times in 100,000: a run of 15
#      digits between two non-digits, P(digit) = 10/16, about 50 places: 50 * (6/16)^2 *
#      (10/16)^15 = 6e-3, times about 1/2 for the shape rules (sex, month, department) = 3e-3
#      (2,000,000 seeded pseudonyms: 3.0e-3), over 97 keys = 3.1e-5 (measured: 3.0e-5).
#      With E1: never.
#   E2 (hex identifiers with hyphens) the match lies inside a maximal run of hex digits
#      and '-' that has the shape of a canonical UUID (8-4-4-4-12) or of a W3C trace
#      context "traceparent" header (2-32-16-2). A UUID can hold a NIR across its last
#      hyphen ("...-x184-127512345640" with '-' after the birth year): about 2 in
#      1,000,000 random UUIDs (measured: 2.3e-6); a traceparent can end one with its flags
#      as the key, and its 32-hex trace id holds runs like a hash (2.3e-5 without E1 and
#      E2). With E2: never.
# Base64url pseudonyms (43 characters from 64) need 15 digits among 64 symbols in a row:
# about 1e-12 a string. tests/unit/judge/test_rules.py measures all this on a million
# seeded pseudonyms and codes and prints the rate (0).
#
# Only the regex runs on every string; the key and the exemptions are computed for its
# rare matches.

# Separators besides whitespace (str.isspace, which is what the regex's \s matches):
SEPARATOR_CHARS: Final = frozenset(
    "._/-"  # ASCII dot, underscore, slash, hyphen-minus
    "\u00ad\u00b7"  # soft hyphen, middle dot
    "\u200b\u200c\u200d\u2060\ufeff"  # zero-width space and joiners, word joiner, BOM
    "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"  # hyphens, figure/en/em dashes, bar, minus
    "\u2024\u2027\u2044\u2215"  # one-dot leader, hyphenation point, fraction/division slash
    "\ufe58\ufe63\uff0d\uff0e\uff0f"  # small em dash and hyphen, full-width - . /
)
_SEP: Final = r"[\s" + "".join(re.escape(c) for c in sorted(SEPARATOR_CHARS)) + "]*"
_NIR_RE: Final = re.compile(
    r"(?<![0-9])"  # not after an ASCII digit
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
    + r"(?![0-9])"  # not before an ASCII digit
)
_NIR_CHARS: Final = re.compile(r"[0-9ABab]")
_NIR_MIN_LENGTH: Final = 15
_HEX_DIGITS: Final = frozenset("0123456789ABCDEFabcdef")
_HEX_OR_HYPHEN: Final = _HEX_DIGITS | {"-"}
_HASH_MIN_LENGTH: Final = 32  # E1: the shortest hex pseudonym in use (128 bits)
# E2: hex identifiers with hyphens, matched against a whole maximal run of [0-9A-Fa-f-]
_HEX_ID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|[0-9a-fA-F]{2}-[0-9a-fA-F]{32}-[0-9a-fA-F]{16}-[0-9a-fA-F]{2}"  # traceparent
)
# Shapes in which no NIR can be found, checked with a cheap regex before the NIR regex:
# - one run of 32 or more hex digits (E1 covers every match inside it)
_HEX_RUN_RE: Final = re.compile(r"[0-9A-Fa-f]{32,}")
# - a canonical UUID (E2 covers every match inside it)
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


def _run(text: str, start: int, end: int, chars: frozenset[str]) -> tuple[int, int]:
    """The maximal run of ``chars`` around ``text[start:end]`` (which is made of them)."""
    while start > 0 and text[start - 1] in chars:
        start -= 1
    length = len(text)
    while end < length and text[end] in chars:
        end += 1
    return start, end


def _exempt(text: str, start: int, end: int) -> bool:
    """E1 or E2: the match ``text[start:end]`` is part of a hash or a hex identifier."""
    if end - start == _NIR_MIN_LENGTH:  # no separator: 15 characters of [0-9ABab]
        left, right = _run(text, start, end, _HEX_DIGITS)
        if right - left >= _HASH_MIN_LENGTH:
            return True
    if all(c in _HEX_OR_HYPHEN for c in text[start:end]):
        left, right = _run(text, start, end, _HEX_OR_HYPHEN)
        if _HEX_ID_RE.fullmatch(text, left, right):
            return True
    return False


def find_nir(text: str) -> NirMatch | None:
    """The first NIR of ``text`` with a valid key that is not part of a hash or a hex
    identifier (E1, E2 above), or None."""
    search = _NIR_RE.search
    position = 0
    while (match := search(text, position)) is not None:
        start, end = match.span()
        if nir_key_is_valid("".join(_NIR_CHARS.findall(text, start, end))) and not _exempt(
            text, start, end
        ):
            return NirMatch(start, end)
        position = start + 1
    return None


def _find_nir_fast(text: str) -> NirMatch | None:
    """``find_nir`` behind cheap filters for the shapes that cannot hold a NIR."""
    if len(text) < _NIR_MIN_LENGTH or _HEX_RUN_RE.fullmatch(text) or _UUID_RE.fullmatch(text):
        return None
    return find_nir(text)


def find_nir_in_bytes(data: bytes) -> tuple[NirMatch, str] | None:
    """The first NIR of ``data`` read as text, with the reading it was found in
    (``"ASCII"``, ``"Latin-1"`` or ``"UTF-8"``), or None. Bytes that are not ASCII are read
    both ways: as Latin-1 (every byte a character, so a no-break space is the byte A0) and
    as UTF-8 (so a narrow no-break space is E2 80 AF; bytes that are not UTF-8 read as
    U+FFFD, which is neither a digit nor a separator)."""
    if data.isascii():
        match = _find_nir_fast(data.decode("ascii"))
        return None if match is None else (match, "ASCII")
    for encoding in ("Latin-1", "UTF-8"):
        match = _find_nir_fast(data.decode(encoding, errors="replace"))
        if match is not None:
            return match, encoding
    return None


def _identifier_violation(path: str, match: NirMatch, length: int) -> Violation:
    return Violation(
        "direct_identifier",
        path,
        f"NIR-shaped token with a valid key at characters {match.start}-{match.end} "
        f"of a {length}-character value",
    )


def _bytes_violation(path: str, data: bytes, where: str) -> Violation | None:
    found = find_nir_in_bytes(data)
    if found is None:
        return None
    match, reading = found
    return Violation(
        "direct_identifier",
        path,
        f"NIR-shaped token with a valid key at characters {match.start}-{match.end} "
        f"of {where} ({len(data)} bytes read as {reading})",
    )


def _scan_value(value: Any, path: str) -> Violation | None:
    """Recursive NIR scan of a nested value (anything below the top level)."""
    if isinstance(value, str):
        match = _find_nir_fast(value)
        return None if match is None else _identifier_violation(path, match, len(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return _bytes_violation(path, bytes(value), "a value")
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


# Kafka message headers, as confluent-kafka gives them (a list of pairs; a dict in its stubs)
Headers = Sequence[tuple[str | bytes, str | bytes | None]] | Mapping[str, str | bytes | None]


def _text_violation(path: str, value: str | bytes, where: str) -> Violation | None:
    if isinstance(value, str):
        match = _find_nir_fast(value)
        if match is None:
            return None
        return Violation(
            "direct_identifier",
            path,
            f"NIR-shaped token with a valid key at characters {match.start}-{match.end} "
            f"of {where} ({len(value)} characters)",
        )
    return _bytes_violation(path, value, where)


def find_identifier_in_message(key: bytes | None, headers: Headers | None) -> Violation | None:
    """The first NIR of a Kafka message's key or headers (each header's name, then its
    value), as a Violation; None if there is none. The key and the headers are stored with
    every record (object format 3), so both are scanned. The violation names the
    place by position only (``<key>``, ``<header 2>``, ``<header 2 name>``: angle brackets,
    so that it cannot be a record field's name), never a header's name nor the number."""
    if key is not None:
        found = _text_violation("<key>", key, "the message key")
        if found is not None:
            return found
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for index, (name, value) in enumerate(pairs):
        found = _text_violation(f"<header {index} name>", name, f"the name of header {index}")
        if found is None and value is not None:
            found = _text_violation(f"<header {index}>", value, f"the value of header {index}")
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
