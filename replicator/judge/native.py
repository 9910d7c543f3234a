"""The judge's compiled fast path: programs for ``replicator/judge/_fastcheck.c``.

Why: after the compiled checks (``judge.compiled``), fastavro's decode of each value into a
dict was the largest cost per record left (docs/performance.md). For a writer schema made
only of primitive fields, the C extension walks the Avro body once, without making a Python
object per field, and tests the same *sufficient* conditions as the generated fast path of
``judge.compiled``. It only ever says "good": for any other record (a violation, a
non-ASCII string, an unusual encoding) it says "not sure", and the Python path judges that
record as before, with ``judge.rules.check_record`` naming every reason. It also scans the
message key and headers with the exact NIR rule of ``judge.rules.find_nir`` (ASCII only:
any other byte means "not sure").

This module turns a schema into the extension's program: one operation per top-level field
(how the field is encoded on the wire, which rule applies to it, where the rules across
fields find its value). It returns no program, and the schema always takes the Python path,
when any field is of a kind the extension does not walk (bytes, fixed, nested records,
arrays, maps, unions other than ``[null, X]``) or when a rule's field has a type the rule's
fast condition does not cover.

The extension is built by ``pip install`` (setup.py). Where it could not be built,
``native_programs`` returns None and the service logs it once; the verdicts are the same,
only slower. ``tests/unit/judge/test_native.py`` requires the extension and compares its
verdicts and envelopes with the Python path's.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Final

from replicator.judge.compiled import _LOWEST_DAY, _YEAR_START_MS, _holds_no_nir
from replicator.judge.rules import (
    _AMOUNT_SUFFIX,
    _DATE_FIELDS,
    _FIRST_YEAR,
    _HASH_MIN_LENGTH,
    _HEX_FIELDS,
    _LAST_YEAR,
    DAY_MS,
    MAX_EVENT_MS,
    MIN_BIRTH_YEAR,
    MIN_DATE_DAYS,
    MIN_EVENT_MS,
)
from replicator.schemas import RegisteredSchema, SchemaRegistry

# Wire kinds, rules and slots: the enums at the top of _fastcheck.c, in the same order.
WIRE: Final = {
    "null": 0,
    "boolean": 1,
    "int": 2,
    "long": 3,
    "float": 4,
    "double": 5,
    "string": 6,
    "enum": 7,
}
(R_NONE, R_SCAN, R_UUID, R_HEX, R_DEPT, R_CCAM, R_CIP13, R_ATC, R_RANGE, R_ENUM) = range(10)
(S_EVENT, S_BIRTH, S_CARE, S_SETTLEMENT, S_OTHER_DATE, S_REIMBURSED, S_BASE, S_PAID) = range(8)
_DATE_SLOTS: Final = {"care_start_date": S_CARE, "settlement_date": S_SETTLEMENT}
_AMOUNT_SLOTS: Final = {
    "reimbursed_amount_cents": S_REIMBURSED,
    "base_amount_cents": S_BASE,
    "paid_amount_cents": S_PAID,
}
_STRING_RULES: Final = {
    "event_id": R_UUID,
    "residence_department": R_DEPT,
    "act_code": R_CCAM,
    "cip13": R_CIP13,
    "atc_code": R_ATC,
}
_INT64_MAX: Final = (1 << 63) - 1
_NUMBERS: Final = frozenset({"int", "long"})
_NUMERIC_RULES: Final = frozenset(
    {"event_time", "birth_year", "sex", "prestation_nature", "quantity"}
)
_TEXT_RULES: Final = frozenset({R_UUID, R_HEX, R_DEPT, R_CCAM, R_CIP13, R_ATC})

Op = tuple[int, int, int, int, int, int, bytes | None]


def _kind(node: Any, named: Mapping[str, Any]) -> tuple[str, list[str] | None] | None:
    """(wire kind, enum symbols) of a non-union type, or None if the extension does not walk it."""
    if isinstance(node, str):
        if node in WIRE and node != "enum":
            return node, None
        if node in named:
            return _kind(named[node], named)
        return None
    if isinstance(node, dict):
        inner = node.get("type")
        if inner == "enum":
            symbols = node.get("symbols")
            if isinstance(symbols, list) and all(type(s) is str for s in symbols):
                return "enum", list(symbols)
            return None
        if isinstance(inner, str | dict) and inner not in ("record", "error", "fixed"):
            return _kind(inner, named)
    return None


def _wire(node: Any, named: Mapping[str, Any]) -> tuple[int, str, list[str] | None] | None:
    """(index of the null branch or -1, wire kind, enum symbols) of a field's type."""
    if isinstance(node, list):
        if len(node) != 2:
            return None
        kinds = [_kind(branch, named) for branch in node]
        if None in kinds:
            return None
        names = [kind[0] for kind in kinds if kind is not None]
        if names.count("null") != 1:
            return None
        null_branch = names.index("null")
        value = kinds[1 - null_branch]
        assert value is not None
        return null_branch, value[0], value[1]
    kind = _kind(node, named)
    if kind is None:
        return None
    return -1, kind[0], kind[1]


def program_ops(schema: RegisteredSchema) -> list[Op] | None:
    """The extension's program for records of ``schema``, or None: Python path only."""
    if set(_DATE_FIELDS) - set(_DATE_SLOTS) != {"dispensing_date"}:
        return None  # the date rules changed: the slots above no longer describe them
    plain = schema.plain
    named = plain.get("__named_schemas") or {}
    fields = plain.get("fields")
    if not isinstance(fields, list):
        return None
    names = [str(field["name"]) for field in fields]
    if len(set(names)) != len(names):
        return None
    hex_lengths = dict(_HEX_FIELDS)
    ops: list[Op] = []
    for field, name in zip(fields, names, strict=True):
        wire = _wire(field["type"], named)
        if wire is None:
            return None
        null_branch, kind, symbols = wire
        rule, slot, lo, hi, safe = R_NONE, -1, 0, 0, None
        if name == "event_time":
            rule, slot, lo, hi = R_RANGE, S_EVENT, MIN_EVENT_MS, MAX_EVENT_MS - 1
        elif name == "birth_year":
            rule, slot, lo, hi = R_RANGE, S_BIRTH, MIN_BIRTH_YEAR, _LAST_YEAR - 1
        elif name in _DATE_FIELDS:
            slot = _DATE_SLOTS.get(name, S_OTHER_DATE)
        elif name in _STRING_RULES:
            rule = _STRING_RULES[name]
        elif name in hex_lengths:
            if hex_lengths[name] < _HASH_MIN_LENGTH:
                return None  # a short hex value may hold a NIR: the C walk does not scan it
            rule, lo = R_HEX, hex_lengths[name]
        elif name == "sex":
            rule, lo, hi = R_RANGE, 1, 2
        elif name == "prestation_nature":
            rule, lo, hi = R_RANGE, 1000, 9999
        elif name == "quantity":
            rule, lo, hi = R_RANGE, 1, _INT64_MAX
        elif name.endswith(_AMOUNT_SUFFIX):
            rule, slot, lo, hi = R_RANGE, _AMOUNT_SLOTS.get(name, -1), 0, _INT64_MAX
        elif kind == "string":
            rule = R_SCAN
        elif kind == "enum":
            assert symbols is not None
            rule, safe = R_ENUM, bytes(_holds_no_nir(s) for s in symbols)
        elif kind not in ("null", "boolean", "int", "long", "float", "double"):
            return None
        # A rule's fast condition holds for one type only (judge.compiled): any other
        # type goes to the Python path, which names the reason.
        numeric = name in _NUMERIC_RULES or name in _DATE_FIELDS or name.endswith(_AMOUNT_SUFFIX)
        if (numeric and kind not in _NUMBERS) or (rule in _TEXT_RULES and kind != "string"):
            return None
        ops.append((WIRE[kind], null_branch, rule, slot, lo, hi, safe))
    return ops


def extension() -> ModuleType | None:
    """The compiled extension, or None where it was not built."""
    try:
        return importlib.import_module("replicator.judge._fastcheck")
    except ImportError:
        return None


def compiled(module: ModuleType, schema: RegisteredSchema) -> object | None:
    """The extension's program for ``schema`` (an opaque handle), or None: Python path."""
    ops = program_ops(schema)
    if ops is None:
        return None
    program: object = module.compile(
        schema.topic,
        (schema.id, "", ""),
        ops,
        _FIRST_YEAR,
        MIN_DATE_DAYS,
        DAY_MS,
        _YEAR_START_MS,
        _LOWEST_DAY,
    )
    return program


def native_programs(registry: SchemaRegistry) -> dict[int, object] | None:
    """The programs of every schema the extension can judge, by the big-endian integer of
    the schema id's 4 header bytes; None when the extension is not built."""
    module = extension()
    if module is None:
        return None
    programs: dict[int, object] = {}
    for header, schema in registry.by_header().items():
        program = compiled(module, schema)
        if program is not None:
            programs[int.from_bytes(header, "big")] = program
    return programs
