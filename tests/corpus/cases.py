"""The bad-input corpus: every kind of record the service must refuse, each with the dead-letter
reason it must get, and the near-misses it must accept.

Built from code (deterministic, no data files) so that every case is readable next to its
expectation. `cases(max_record_bytes)` returns them; `Case.expect` is the set of acceptable
`dlq.reason` values, or None for a record that must pass (be written to both stores).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from replicator.config import DEFAULT_SCHEMAS_DIR
from replicator.devtools.synthetic import SyntheticSource
from replicator.schemas import RegisteredSchema, SchemaRegistry, encode_wire

REGISTRY = SchemaRegistry.load(DEFAULT_SCHEMAS_DIR)
REIMB, PRESC = "snds.reimbursements", "snds.prescriptions"
Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True)
class Case:
    name: str
    topic: str  # the registry topic (REIMB or PRESC)
    value: bytes | None
    expect: frozenset[str] | None  # acceptable dlq.reason values; None: must pass
    key: bytes | None = b"k"
    headers: Headers = field(default_factory=list)


def nir_key(thirteen: str) -> int:
    number = int(thirteen.upper().replace("2A", "19").replace("2B", "18"))
    return 97 - number % 97


def nir(sex: str, year: str, month: str, dept: str, commune: str, order: str) -> str:
    body = f"{sex}{year}{month}{dept}{commune}{order}"
    assert len(body) == 13, body
    return f"{body}{nir_key(body):02d}"


# Valid NIRs, in the forms they are written: compact, spaced, Corsican departments (both
# cases), overseas, the special sexes (3, 4, 7, 8) and an unknown birth month (20, 50..99).
VALID_NIRS: list[str] = [
    nir("1", "85", "05", "78", "006", "084"),
    nir("2", "69", "12", "2A", "004", "123"),
    nir("1", "90", "01", "2B", "033", "001"),
    nir("2", "01", "07", "2a", "120", "456"),
    nir("1", "77", "03", "97", "105", "012"),
    nir("3", "55", "20", "75", "056", "789"),
    nir("8", "12", "50", "13", "055", "300"),
]


def spaced(n: str) -> str:
    return f"{n[0]} {n[1:3]} {n[3:5]} {n[5:7]} {n[7:10]} {n[10:13]} {n[13:]}"


VALID_NIRS += [spaced(VALID_NIRS[0]), spaced(VALID_NIRS[1]), VALID_NIRS[2].replace(" ", " ")]


def spelled(n: str, separator: str) -> str:
    return spaced(n).replace(" ", separator)


# The spellings people and forms use (P10): other separators, several, mixed, the 13
# characters then the key, glued to letters.
_N = VALID_NIRS[0]
VALID_NIRS += [
    spelled(_N, "."),
    spelled(_N, "-"),
    spelled(VALID_NIRS[1], "/"),
    spelled(VALID_NIRS[2], "_"),
    spelled(VALID_NIRS[3], "\t"),
    spelled(_N, "  "),
    spelled(_N, " - "),
    spelled(VALID_NIRS[4], "\u2009"),
    spelled(VALID_NIRS[5], "\u202f"),
    spelled(VALID_NIRS[6], "\n"),
    f"{_N[:13]} {_N[13:]}",
    f"{_N[:13]}-{_N[13:]}",
    "NIR" + _N,
    "x" + VALID_NIRS[1] + "y",
    "a" + _N,  # glued to hex letters, in a run far too short for a hash
    _N + "f",
    "7f" + _N + "e",
]

# Shapes close to a NIR that are not one: they must pass (no false positive).
_good = VALID_NIRS[0]
_corsica = VALID_NIRS[1]
NEAR_MISSES: list[str] = [
    _good[:13] + f"{(int(_good[13:]) % 97) + 1:02d}",  # wrong key
    _corsica[:13] + f"{(int(_corsica[13:]) + 1) % 100:02d}",  # Corsican, wrong key
    _good[:13],  # 13 characters, no key
    "7f" + _good + "00e1",  # glued to a digit
    "0123456789abcdef" + _good + "0123456789abcdef",  # inside a hash (hex run of 47)
    "3fa85f64-5717-4562-b" + _good[:3] + "-" + _good[3:],  # across a UUID's last hyphen
    _good + "1",  # 16 digits: a longer number
    "1" + _good,
    nir("1", "85", "13", "78", "006", "084"),  # month 13 (refused by the layout)
    nir("5", "85", "05", "78", "006", "084"),  # sex 5
    _good[:5] + "2C" + _good[7:],  # department 2C does not exist
    " ".join(_good),  # a separator inside every group
    f"{_good[:2]} {_good[2:]}",  # a separator inside the birth year
]


def _schemas(topic: str) -> tuple[RegisteredSchema, ...]:
    return REGISTRY.versions_for_topic(topic)


def _source() -> SyntheticSource:
    return SyntheticSource(4242, REGISTRY, v2_share=0.0)


def good_record(topic: str, seed: int) -> tuple[bytes, dict[str, Any], RegisteredSchema]:
    """A good record (and its latest schema) of `topic`."""
    source = SyntheticSource(seed, REGISTRY, v2_share=1.0)
    return source.next(topic)


def _wire(schema: RegisteredSchema, record: dict[str, Any]) -> bytes:
    return encode_wire(schema, record)


def string_fields(schema: RegisteredSchema) -> list[str]:
    """Top-level fields that can hold a string (directly or in a union)."""
    out = []
    for f in json.loads(schema.schema_json)["fields"]:
        t = f["type"]
        kinds = t if isinstance(t, list) else [t]
        if any(k == "string" or (isinstance(k, dict) and k.get("type") == "string") for k in kinds):
            out.append(f["name"])
    return out


def cases(max_record_bytes: int) -> list[Case]:
    return list(_cases(max_record_bytes))


def _cases(max_record_bytes: int) -> Iterator[Case]:
    nwf = frozenset({"not_wire_format"})
    und = frozenset({"undecodable"})
    reimb = _schemas(REIMB)[-1]
    presc = _schemas(PRESC)[-1]
    _k, rec, _s = good_record(REIMB, 1)
    good = _wire(reimb, rec)

    # --- malformed wire format -----------------------------------------------------
    yield Case("null value (tombstone)", REIMB, None, nwf)
    yield Case("empty value", REIMB, b"", nwf)
    for n in range(1, 5):
        yield Case(f"{n}-byte value", REIMB, good[:n], nwf)
    yield Case("magic byte 1", REIMB, b"\x01" + good[1:], nwf)
    yield Case("magic byte 0xff", REIMB, b"\xff" + good[1:], nwf)
    yield Case("JSON text", REIMB, json.dumps({"event_id": "x"}).encode(), nwf)
    yield Case("Avro container file magic", REIMB, b"Obj\x01" + good, nwf)
    for sid in (0, 99, 0x7FFFFFFF, 0xFFFFFFFF):
        yield Case(
            f"unknown schema id {sid}",
            REIMB,
            b"\x00" + struct.pack(">I", sid) + good[5:],
            frozenset({"unknown_schema_id"}),
        )
    yield Case(
        "prescription schema on the reimbursements topic",
        REIMB,
        b"\x00" + struct.pack(">I", presc.id) + good[5:],
        frozenset({"wrong_topic_schema"}),
    )
    # --- truncated, corrupt, oversized -------------------------------------------------
    yield Case("header only, empty body", REIMB, good[:5], und)
    body = len(good) - 5
    for cut in (1, 10, body // 2, body - 1):
        yield Case(f"body truncated to {cut} bytes", REIMB, good[: 5 + cut], und)
    yield Case("trailing garbage", REIMB, good + b"\x00\x01", und)
    yield Case("a zero byte appended", REIMB, good + b"\x00", und)
    # the first field is a string: a huge or negative length prefix
    yield Case("string length 2^62", REIMB, good[:5] + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f", und)
    yield Case("negative string length", REIMB, good[:5] + b"\x03" + good[6:], und)
    yield Case(
        "oversized (one byte over the limit)",
        REIMB,
        good[:5] + b"\x00" * (max_record_bytes - 4),
        frozenset({"oversized"}),
    )
    big = dict(rec, care_setting="x" * (max_record_bytes + 10))
    yield Case("oversized valid record", REIMB, _wire(reimb, big), frozenset({"oversized"}))
    # --- wrong types: a body written with another layout than its schema id says ------
    _pk, prec, _ps = good_record(PRESC, 2)
    yield Case(
        "prescription body behind a reimbursement id",
        REIMB,
        b"\x00" + struct.pack(">I", reimb.id) + _wire(presc, prec)[5:],
        frozenset({"undecodable", "invalid_value"}),
    )
    yield Case(
        "v2 body behind the v1 id (extra union at the end)",
        REIMB,
        b"\x00"
        + struct.pack(">I", _schemas(REIMB)[0].id)
        + _wire(reimb, dict(rec, care_setting="home"))[5:],
        und,
    )
    yield Case(
        "enum index out of range",
        REIMB,
        _replace_after_first_string(good, b"\x0c"),  # operation index 6 (3 symbols)
        und,
    )
    # --- impossible values ---------------------------------------------------------------
    inv = frozenset({"invalid_value"})
    impossible: list[tuple[str, dict[str, Any]]] = [
        ("event_time in seconds", {"event_time": rec["event_time"] // 1000}),
        ("event_time in 2150", {"event_time": 5_680_000_000_000}),
        ("event_id not a UUID", {"event_id": "not-a-uuid"}),
        ("beneficiary_id uppercase", {"beneficiary_id": rec["beneficiary_id"].upper()}),
        ("beneficiary_id too short", {"beneficiary_id": rec["beneficiary_id"][:40]}),
        ("birth_year 1700", {"birth_year": 1700}),
        ("birth_year after the event", {"birth_year": 2100}),
        ("sex 3", {"sex": 3}),
        ("department 20", {"residence_department": "20"}),
        ("department 2C", {"residence_department": "2C"}),
        ("negative amount", {"paid_amount_cents": -1}),
        ("reimbursed over base", {"reimbursed_amount_cents": rec["base_amount_cents"] + 1}),
        ("prestation_nature 3 digits", {"prestation_nature": 999}),
        ("act_code lowercase", {"act_code": "deqp003"}),
        ("settlement before care", {"settlement_date": rec["care_start_date"] - 1}),
        ("care date in 1800", {"care_start_date": -62_000, "settlement_date": -61_000}),
    ]
    for name, change in impossible:
        yield Case(name, REIMB, _wire(reimb, dict(rec, **change)), inv)
    presc_impossible: list[tuple[str, dict[str, Any]]] = [
        (
            "cip13 bad check digit",
            {"cip13": prec["cip13"][:12] + str((int(prec["cip13"][12]) + 1) % 10)},
        ),
        ("atc_code level 3", {"atc_code": prec["atc_code"][:4]}),
        ("atc_code group Z", {"atc_code": "Z" + prec["atc_code"][1:]}),
        ("quantity 0", {"quantity": 0}),
        ("pharmacy_id 31 chars", {"pharmacy_id": prec["pharmacy_id"][:31]}),
    ]
    for name, change in presc_impossible:
        yield Case(name, PRESC, _wire(presc, dict(prec, **change)), inv)
    # --- a valid NIR in every string field ----------------------------------------------
    direct = frozenset({"direct_identifier"})
    for schema, base in ((reimb, rec), (presc, prec)):
        for i, name in enumerate(string_fields(schema)):
            value = VALID_NIRS[i % len(VALID_NIRS)]
            yield Case(
                f"NIR in {schema.topic}.{name}",
                schema.topic,
                _wire(schema, dict(base, **{name: value})),
                direct,
            )
    for i, value in enumerate(VALID_NIRS):
        # inside free text, delimited by punctuation and spaces
        text = f"note: {value}, home" if i % 2 else f"({value})"
        yield Case(
            f"NIR form {i} in free text", REIMB, _wire(reimb, dict(rec, care_setting=text)), direct
        )
    # --- a valid NIR in the message key or a header (stored with every record / scanned)
    for i, value in enumerate(VALID_NIRS):
        yield Case(f"NIR form {i} in the key", REIMB, good, direct, key=value.encode())
    yield Case("NIR in a header value", REIMB, good, direct, headers=[("id", _N.encode())])
    yield Case(
        "NIR, spaced with no-break spaces, in a UTF-8 header value",
        REIMB,
        good,
        direct,
        headers=[("a", b"1"), ("ref", spelled(_N, "\u00a0").encode())],
    )
    yield Case("NIR in a header name", REIMB, good, direct, headers=[(f"nir-{_N}", b"")])
    yield Case(
        "NIR in the key, Latin-1", REIMB, good, direct, key=spelled(_N, "\xa0").encode("latin-1")
    )
    # --- near-misses: must pass ----------------------------------------------------------
    for i, value in enumerate(NEAR_MISSES):
        yield Case(
            f"near-miss {i}: {value!r}", REIMB, _wire(reimb, dict(rec, care_setting=value)), None
        )
    # --- broken headers: the value decides, headers never block nor fool the service -----
    yield Case(
        "bad value with spoofed dlq.* headers",
        REIMB,
        b"\x01garbage",
        nwf,
        headers=[("dlq.reason", b"none"), ("dlq.origin.offset", b"-1")],
    )
    yield Case("bad value, header with no value", REIMB, b"", nwf, headers=[("h", None)])
    yield Case(
        "good value, binary and duplicate headers",
        REIMB,
        good,
        None,
        headers=[("\u00e9t\u00e9", b"\xff\xfe\x00"), ("x", b"1"), ("x", b"2"), ("", b"")],
    )
    yield Case(
        "good value, null key and null header", REIMB, good, None, key=None, headers=[("n", None)]
    )
    yield Case("good value, 8 KiB header", REIMB, good, None, headers=[("big", b"h" * 8192)])
    for i, value in enumerate(NEAR_MISSES):
        yield Case(f"near-miss {i} in the key", REIMB, good, None, key=value.encode())
    yield Case(
        "good value, traceparent header",
        REIMB,
        good,
        None,
        headers=[("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-ab18505780060849-91")],
    )


def _replace_after_first_string(value: bytes, byte: bytes) -> bytes:
    """Replace the byte right after the first (string) field of the body."""
    body = value[5:]
    # zig-zag varint length of the first string
    shift, length, i = 0, 0, 0
    while True:
        b = body[i]
        length |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            break
        shift += 7
    length = (length >> 1) ^ -(length & 1)
    end = i + length
    return value[:5] + body[:end] + byte + body[end + 1 :]
