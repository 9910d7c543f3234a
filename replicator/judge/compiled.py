"""The health-data checks of ``replicator.judge.rules``, specialised for one writer schema.

Why this module exists: speed. ``judge.rules.check_record`` is the specification and stays
the only place where a refusal is decided. It is written for any mapping, so for every
record it looks up every field it knows by name, dispatches on the type of every value and
works out which fields are amounts. Records decoded with one writer schema (fastavro,
``RegisteredSchema.plain``) always have the same fields in the same order, with the same
types, so most of that work can be done once per schema instead of once per record.

``checker_for(schema)`` returns a function ``check(record)`` that returns exactly what
``check_record(schema.topic, record)`` returns, for every input. It works in two steps:

1. A fast path, generated once per schema as straight-line Python code: it takes the values
   out of the record in one call (``operator.itemgetter``), then tests, field by field, a
   condition that is *sufficient* for the reference to find nothing wrong with that field
   (for instance a ``beneficiary_id`` that is a ``str`` of 64 lowercase hex characters
   holds no NIR and passes its rule). If every condition holds, the record is good: the
   reference would return None.
2. Anything else goes to ``check_record`` itself: a record with a violation, but also any
   value the fast path does not expect (a ``datetime`` for a timestamp, a ``bool`` where an
   ``int`` is declared, a ``str`` subclass, a missing or extra field, a mapping that is not
   a ``dict``). Every ``Violation`` therefore comes from the reference, with its reason,
   field, detail and precedence; the fast path only ever says "good", and only when the
   reference would say so too.

Fields the rules do not know (unknown names, nested records, arrays, maps, bytes) get the
reference's own NIR scan of their value. The generated code names record values ``v0``,
``v1``, ... and takes every constant from its namespace: no text from a schema file (field
names, symbols, docs) is ever written into the code, except a field name in a comment when
it is a plain ASCII identifier. ``checker_source(schema)`` shows the code.

The only state shared between records is a bounded set of the CIP13 codes already found
valid (drug presentation codes, not personal data): their check digit costs more than a
set lookup. A checker is a plain function built with ``exec``: build it in the process that
uses it (it does not pickle).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final, cast

from replicator.judge.rules import (
    _AMOUNT_SUFFIX,
    _ATC_RE,
    _CCAM_RE,
    _CIP13_RE,
    _DATE_FIELDS,
    _FIRST_YEAR,
    _HASH_MIN_LENGTH,
    _HEX_FIELDS,
    _LAST_YEAR,
    _NIR_MIN_LENGTH,
    _UUID_RE,
    _YEAR_STARTS,
    DAY_MS,
    MAX_EVENT_MS,
    MIN_BIRTH_YEAR,
    MIN_DATE_DAYS,
    MIN_EVENT_MS,
    Violation,
    _find_nir_fast,
    check_record,
    ean13_is_valid,
    find_direct_identifier,
)
from replicator.schemas import RegisteredSchema

Checker = Callable[[Mapping[str, Any]], Violation | None]

# Exactly the strings `rules._DEPARTMENT_RE` fullmatches (tests/unit compare the two):
# 01..19, 21..95 and 99, 2A, 2B, 971..976.
DEPARTMENTS: Final = frozenset(
    [f"{n:02d}" for n in range(1, 100) if n not in (20, 96, 97, 98)]
    + ["2A", "2B"]
    + [f"97{n}" for n in range(1, 7)]
)
# ms since the epoch of 1 January of each year from _FIRST_YEAR to _LAST_YEAR: for an int
# year y in that range and an int timestamp t, y <= (UTC year of t) iff t >= this[y - first]
_YEAR_START_MS: Final = tuple(days * DAY_MS for days in _YEAR_STARTS)
# the earliest valid date (days since 1970-01-01) for a beneficiary born in each year
_LOWEST_DAY: Final = tuple(max(MIN_DATE_DAYS, days) for days in _YEAR_STARTS)
_LATEST_BIRTH_YEAR: Final = _LAST_YEAR - 1
_HEX_LENGTHS: Final = dict(_HEX_FIELDS)
_UNSCANNED: Final = frozenset({type(None), int, bool, float})
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _holds_no_nir(value: Any) -> bool:
    """True if the reference's NIR scan finds nothing in this top-level value (any type,
    any depth); False if it raises, so that the reference itself meets the value."""
    try:
        return find_direct_identifier({"": value}) is None
    except Exception:
        return False


# CIP13 codes already found valid (a drug presentation code, never personal data): the
# check digit costs more than a set lookup, and a stream carries a few thousand codes.
_VALID_CIP13: Final[set[str]] = set()
_VALID_CIP13_LIMIT: Final = 16_384


def _cip13_is_valid(value: str) -> bool:
    """The reference's ``cip13`` rule for a ``str``: 13 digits starting with 3400 and a
    valid EAN-13 check digit. Remembers the valid ones (bounded)."""
    if _CIP13_RE.fullmatch(value) is None or not ean13_is_valid(value):
        return False
    if len(_VALID_CIP13) >= _VALID_CIP13_LIMIT:
        _VALID_CIP13.clear()
    _VALID_CIP13.add(value)
    return True


# What the generated code may use, besides Python's builtins.
_BASE_NAMESPACE: Final[dict[str, Any]] = {
    "_DAY_MS": DAY_MS,
    "_MIN_EVENT_MS": MIN_EVENT_MS,
    "_MAX_EVENT_MS": MAX_EVENT_MS,
    "_MIN_DATE_DAYS": MIN_DATE_DAYS,
    "_MIN_BIRTH_YEAR": MIN_BIRTH_YEAR,
    "_LATEST_BIRTH_YEAR": _LATEST_BIRTH_YEAR,
    "_FIRST_YEAR": _FIRST_YEAR,
    "_YEAR_START_MS": _YEAR_START_MS,
    "_LOWEST_DAY": _LOWEST_DAY,
    "_UNBOUNDED": float("inf"),
    "_DEPARTMENTS": DEPARTMENTS,
    "_UNSCANNED": _UNSCANNED,
    "_NIR_MIN_LENGTH": _NIR_MIN_LENGTH,
    "_find_nir": _find_nir_fast,
    "_holds_no_nir": _holds_no_nir,
    "_is_uuid": _UUID_RE.fullmatch,
    "_LOWER_HEX_BYTES": b"0123456789abcdef",
    "_is_ccam": _CCAM_RE.fullmatch,
    "_is_atc": _ATC_RE.fullmatch,
    "_is_cip13": _cip13_is_valid,
    "_VALID_CIP13": _VALID_CIP13,
}


# --------------------------------------------------------------------------------------
# What the schema says about each top-level field
# --------------------------------------------------------------------------------------

_PRIMITIVE_TYPES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
_COMPLEX_TYPES: Final = frozenset({"record", "error", "enum", "array", "map", "fixed"})


def _branches(kind: Any, named: Mapping[str, Any]) -> list[str]:
    """The Avro type names a field's value may have (``"record"``, ``"enum"``, ...),
    resolving unions and references to named types; ``"?"`` for anything unrecognised."""
    if isinstance(kind, list):
        return [branch for item in kind for branch in _branches(item, named)]
    if isinstance(kind, dict):
        inner = kind.get("type")
        if isinstance(inner, str) and (inner in _PRIMITIVE_TYPES or inner in _COMPLEX_TYPES):
            return [inner]
        return _branches(inner, named)
    if isinstance(kind, str):
        if kind in _PRIMITIVE_TYPES:
            return [kind]
        if kind in named:
            return _branches(named[kind], named)
    return ["?"]


@dataclass(frozen=True)
class _Field:
    index: int
    name: str
    branches: tuple[str, ...]

    @property
    def var(self) -> str:
        return f"v{self.index}"

    @property
    def nullable(self) -> bool:
        return "null" in self.branches

    @property
    def label(self) -> str:
        """The field for a comment: its name if that is a plain identifier."""
        if _IDENTIFIER.fullmatch(self.name) and self.name.isascii():
            return self.name
        return f"field {self.index}"


def _fields(schema: RegisteredSchema) -> list[_Field]:
    plain = schema.plain
    named = plain.get("__named_schemas") or {}
    return [
        _Field(index, str(field["name"]), tuple(_branches(field["type"], named)))
        for index, field in enumerate(plain["fields"])
    ]


# --------------------------------------------------------------------------------------
# Code generation
# --------------------------------------------------------------------------------------


def _or_null(field: _Field, condition: str) -> str:
    return f"{field.var} is None or ({condition})" if field.nullable else condition


def _string_rule(field: _Field) -> str | None:
    """Condition for a string rule (the value's shape also rules out a NIR token)."""
    v = field.var
    if field.name == "event_id":
        shape = f"_is_uuid({v})"  # a UUID: every NIR-shaped match in it is exempt (E2)
    elif field.name in _HEX_LENGTHS:
        # all ASCII, and nothing left once the bytes 0-9 a-f are deleted: a hash of 32 or
        # more hex digits holds no NIR (E1); a shorter one is scanned
        length = _HEX_LENGTHS[field.name]
        shape = (
            f"len({v}) == {length:d} and {v}.isascii()"
            f" and not {v}.encode().translate(None, _LOWER_HEX_BYTES)"
        )
        if length < _HASH_MIN_LENGTH:
            shape += f" and _find_nir({v}) is None"
    elif field.name == "residence_department":
        shape = f"{v} in _DEPARTMENTS"  # at most 3 characters
    elif field.name == "act_code":
        shape = f"_is_ccam({v})"  # 7 characters
    elif field.name == "cip13":
        shape = f"({v} in _VALID_CIP13 or _is_cip13({v}))"  # 13 characters
    elif field.name == "atc_code":
        shape = f"_is_atc({v})"  # 7 characters
    else:
        return None
    return _or_null(field, f"type({v}) is str and {shape}")


def _int_rule(field: _Field) -> str | None:
    """Condition for a rule on an int that does not involve another field."""
    v = field.var
    if field.name == "sex":
        bounds = f"1 <= {v} <= 2"
    elif field.name == "prestation_nature":
        bounds = f"1000 <= {v} <= 9999"
    elif field.name == "quantity":
        bounds = f"{v} >= 1"
    elif field.name.endswith(_AMOUNT_SUFFIX):
        bounds = f"{v} >= 0"
    else:
        return None
    return _or_null(field, f"type({v}) is int and {bounds}")


def _generic(field: _Field) -> str:
    """Condition for a field no rule reads: the reference's NIR scan finds nothing in it."""
    v = field.var
    kinds = set(field.branches) - {"null"}
    if kinds <= {"boolean", "int", "long", "float", "double"}:
        return f"type({v}) in _UNSCANNED"
    if kinds <= {"string", "enum"}:
        return _or_null(
            field,
            f"type({v}) is str and (len({v}) < _NIR_MIN_LENGTH or _find_nir({v}) is None)",
        )
    return f"_holds_no_nir({v})"


def checker_source(schema: RegisteredSchema) -> str:
    """The Python source of the fast path of ``checker_for(schema)`` (for review)."""
    fields = _fields(schema)
    by_name = {field.name: field for field in fields}
    if len(by_name) != len(fields):  # a name used twice: no decoded record fits
        return "def check(record):\n    return _reference(record)\n"
    lines = [
        "def check(record):",
        f"    if type(record) is not dict or len(record) != {len(fields):d}:",
        "        return _reference(record)",
    ]
    if fields:
        # itemgetter of several names gives a tuple, of one name the value itself
        names = ", ".join(field.var for field in fields)
        lines += [
            "    try:",
            f"        {names} = _values(record)",
            "    except KeyError:",
            "        return _reference(record)",
        ]

    def require(field: _Field | None, condition: str) -> None:
        if field is not None:
            lines.append(f"    # {field.label}")
        lines.append(f"    if not ({condition}):")
        lines.append("        return _reference(record)")

    done: set[str] = set()
    event = by_name.get("event_time")
    if event is not None:
        e = event.var
        require(
            event, _or_null(event, f"type({e}) is int and _MIN_EVENT_MS <= {e} < _MAX_EVENT_MS")
        )
        done.add(event.name)
    birth = by_name.get("birth_year")
    if birth is not None:
        b = birth.var
        condition = f"type({b}) is int and _MIN_BIRTH_YEAR <= {b} <= _LATEST_BIRTH_YEAR"
        if event is not None:
            not_after_event = f"{event.var} >= _YEAR_START_MS[{b} - _FIRST_YEAR]"
            if event.nullable:
                not_after_event = f"({event.var} is None or {not_after_event})"
            condition += f" and {not_after_event}"
        require(birth, _or_null(birth, condition))
        done.add(birth.name)
    dates = [by_name[name] for name in _DATE_FIELDS if name in by_name]
    if dates:
        if birth is None:
            lines.append("    lowest = _MIN_DATE_DAYS")
        elif birth.nullable:
            lines.append(
                f"    lowest = _MIN_DATE_DAYS if {birth.var} is None"
                f" else _LOWEST_DAY[{birth.var} - _FIRST_YEAR]"
            )
        else:
            lines.append(f"    lowest = _LOWEST_DAY[{birth.var} - _FIRST_YEAR]")
        # a date may start at most one day after the event: day * DAY_MS <= ms + DAY_MS
        if event is None:
            lines.append("    latest = _UNBOUNDED")
        elif event.nullable:
            lines.append(
                f"    latest = _UNBOUNDED if {event.var} is None else {event.var} // _DAY_MS + 1"
            )
        else:
            lines.append(f"    latest = {event.var} // _DAY_MS + 1")
        for date_field in dates:
            d = date_field.var
            require(
                date_field, _or_null(date_field, f"type({d}) is int and lowest <= {d} <= latest")
            )
            done.add(date_field.name)
    for field in fields:
        if field.name in done:
            continue
        condition = _string_rule(field) or _int_rule(field) or _generic(field)
        require(field, condition)
    care, settlement = by_name.get("care_start_date"), by_name.get("settlement_date")
    if care is not None and settlement is not None:
        require(
            None,
            _nulls_pass([care, settlement], f"{settlement.var} >= {care.var}"),
        )
    reimbursed = by_name.get("reimbursed_amount_cents")
    if reimbursed is not None:
        for bound_name in ("base_amount_cents", "paid_amount_cents"):
            bound = by_name.get(bound_name)
            if bound is not None:
                require(None, _nulls_pass([reimbursed, bound], f"{reimbursed.var} <= {bound.var}"))
    lines.append("    return None")
    return "\n".join(lines) + "\n"


def _nulls_pass(fields: list[_Field], condition: str) -> str:
    """``condition``, true as well when one of the (nullable) fields is None."""
    guards = [f"{field.var} is None" for field in fields if field.nullable]
    return " or ".join([*guards, f"({condition})" if guards else condition])


def _build(schema: RegisteredSchema, reference: Checker) -> Checker:
    source = checker_source(schema)
    names = tuple(str(field["name"]) for field in schema.plain["fields"])
    namespace: dict[str, Any] = dict(_BASE_NAMESPACE)
    namespace["__name__"] = __name__
    namespace["_reference"] = reference
    if names:
        namespace["_values"] = itemgetter(*names)
    code = compile(source, f"<health-data checker for schema id {schema.id}>", "exec")
    exec(code, namespace)  # noqa: S102 - source made of fixed templates (see checker_source)
    return cast(Checker, namespace["check"])


def checker_for(schema: RegisteredSchema) -> Checker:
    """A function returning exactly ``check_record(schema.topic, record)`` for records decoded
    with ``schema``, faster. Build it once per schema and keep it."""
    topic = schema.topic

    def reference(record: Mapping[str, Any]) -> Violation | None:
        return check_record(topic, record)

    return _build(schema, reference)
