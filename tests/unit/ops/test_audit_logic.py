"""The audit's classification on plain values: one offset (`classify`, a table of cases) and
a whole partition (`audit_partition`) against a naive oracle that decodes every object and
classifies each offset alone, on generated partitions, dead letters and damaged stores."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tracemalloc
from collections.abc import Mapping, Sequence

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from replicator.config import Settings
from replicator.container import (
    FORMAT_VERSION,
    LEGACY_FORMAT,
    encode_container,
    encode_envelope,
    read_container,
    stored_records,
)
from replicator.kafka.deadletter import (
    H_KEY_SHA256,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TIMESTAMP,
    H_TOPIC,
    H_VALUE_SHA256,
)
from replicator.keys import object_key
from replicator.model import RawRecord, RecordHeaders
from replicator.ops.audit_logic import (
    DEAD_LETTER_ENTRY_BYTES,
    DEAD_LETTER_PLACE,
    EQUAL,
    OTHER,
    OUTSIDE,
    DeadLetter,
    FindingRange,
    Holding,
    Kind,
    Klass,
    ObjectRef,
    SourceRecord,
    add_dead_letter,
    add_to_runs,
    audit_partition,
    classify,
    dead_letter_origin,
    sha256_hex,
    source_batches,
    stored_in_runs,
    wire_payload,
    wire_payload_py,
)

SCHEMA = json.dumps({"type": "record", "name": "E", "fields": [{"name": "v", "type": "string"}]})
PARSED = fastavro.parse_schema(json.loads(SCHEMA))
SID = 7
TOPIC = "t"
TS0 = 1_700_000_000_000


def body(text: str) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, PARSED, {"v": text})
    return out.getvalue()


def wire(text: str) -> bytes:
    return b"\x00" + SID.to_bytes(4, "big") + body(text)


def src(offset: int, text: str = "", key: bytes | None = b"k") -> SourceRecord:
    return SourceRecord(offset, TS0 + offset, key, wire(text or f"v{offset}"))


def dl(s: SourceRecord, reason: str = "schema") -> DeadLetter:
    return DeadLetter(reason, sha256_hex(s.key), sha256_hex(s.value), s.timestamp_ms)


# ---------------------------------------------------------------------- one offset
S = src(5)
CASES: list[
    tuple[
        str,
        bool,
        SourceRecord | None,
        DeadLetter | None,
        dict[str, list[Holding]],
        Klass | None,
        set[tuple[Kind, str]],
    ]
] = [
    ("stored in both", False, S, None, {"a": [EQUAL], "b": [EQUAL]}, Klass.STORED, set()),
    ("in one store only", False, S, None, {"a": [EQUAL], "b": []}, None, {(Kind.MISSING, "b")}),
    (
        "in none",
        False,
        S,
        None,
        {"a": [], "b": []},
        None,
        {(Kind.MISSING, "a"), (Kind.MISSING, "b")},
    ),
    ("altered in one", False, S, None, {"a": [OTHER], "b": [EQUAL]}, None, {(Kind.ALTERED, "a")}),
    (
        "two objects",
        False,
        S,
        None,
        {"a": [EQUAL, EQUAL], "b": [EQUAL]},
        None,
        {(Kind.DOUBLED, "a")},
    ),
    (
        "outside its key range",
        False,
        S,
        None,
        {"a": [OUTSIDE], "b": [EQUAL]},
        None,
        {(Kind.ALTERED, "a")},
    ),
    ("dead-lettered", False, S, dl(S), {"a": [], "b": []}, Klass.DEAD_LETTERED, set()),
    (
        "dead-lettered and stored",
        False,
        S,
        dl(S),
        {"a": [EQUAL], "b": []},
        None,
        {(Kind.DOUBLED, "a")},
    ),
    (
        "dead letter of other bytes",
        False,
        S,
        dl(src(5, "other")),
        {"a": [], "b": []},
        None,
        {(Kind.ALTERED, DEAD_LETTER_PLACE)},
    ),
    ("no record", False, None, None, {"a": [], "b": []}, Klass.NO_RECORD, set()),
    (
        "stored, no source",
        False,
        None,
        None,
        {"a": [OTHER], "b": []},
        None,
        {(Kind.UNEXPECTED, "a")},
    ),
    (
        "dead letter, no source",
        False,
        None,
        dl(S),
        {"a": [], "b": []},
        None,
        {(Kind.UNEXPECTED, DEAD_LETTER_PLACE)},
    ),
    (
        "behind retention, nothing",
        True,
        None,
        None,
        {"a": [], "b": []},
        Klass.BEHIND_RETENTION,
        set(),
    ),
]


def test_classify_table() -> None:
    for name, below, s, d, held, klass, found in CASES:
        got_class, got = classify(below, s, d, held)
        assert got_class == klass, name
        assert {(f.kind, f.where) for f in got} == found, name
        assert (got_class is None) == bool(got), name


# ---------------------------------------------------------------------- dead letters
def test_dead_letter_origin_reads_headers_and_value_hashes() -> None:
    s = src(9)
    headers: list[tuple[str, str | bytes | None]] = [
        (H_REASON, b"oversized"),
        (H_TOPIC, TOPIC.encode()),
        (H_PARTITION, b"2"),
        (H_OFFSET, b"9"),
        (H_TIMESTAMP, str(s.timestamp_ms).encode()),
        (H_VALUE_SHA256, hashlib.sha256(s.value or b"").hexdigest().encode()),
        (H_KEY_SHA256, hashlib.sha256(b"k").hexdigest().encode()),
    ]
    found = dead_letter_origin(headers, None, None)
    assert found is not None
    tp, offset, entry = found
    assert (tp, offset, entry.reason) == ((TOPIC, 2), 9, "oversized")
    # the original record's headers come first: one of our names among them is not ours
    spoofed: list[tuple[str, str | bytes | None]] = [(H_OFFSET, b"-1"), (H_REASON, b"none")]
    assert dead_letter_origin([*spoofed, *headers], None, None) == found
    assert entry.matches(s)
    assert not entry.matches(src(9, "other"))
    # no reason, or no origin: not a dead letter of ours
    assert dead_letter_origin(headers[1:], None, None) is None
    assert dead_letter_origin([h for h in headers if h[0] != H_OFFSET], None, None) is None
    index: dict[int, DeadLetter] = {}
    for _ in range(3):
        add_dead_letter(index, 9, DeadLetter("schema", None, None, None))
    assert index[9].copies == 3


# ---------------------------------------------------------------------- a whole partition
@st.composite
def partitions(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(1, 40))
    kinds = draw(st.lists(st.sampled_from("rrrrrmd"), min_size=n, max_size=n))
    low = draw(st.integers(0, n // 3))
    source = [src(o, key=None if o % 5 == 0 else b"k") for o in range(n) if kinds[o] != "m"]
    dead = {s.offset: dl(s) for s in source if kinds[s.offset] == "d"}
    # the service's cuts: consecutive ranges over all offsets
    cuts: list[tuple[int, int]] = []
    first = 0
    while first < n:
        size = draw(st.integers(1, 8))
        cuts.append((first, min(n - 1, first + size - 1)))
        first += size
    mutations = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b"]),
                st.sampled_from(["drop", "alter", "copy", "store_dead", "phantom", "lose"]),
                st.integers(0, n - 1),
            ),
            max_size=3,
        )
    )
    batch = draw(st.integers(1, 12))  # how the Kafka read cuts the source into batches
    return {
        "n": n,
        "low": low,
        "source": source,
        "dead": dead,
        "cuts": cuts,
        "mut": mutations,
        "batch": batch,
    }


def build_stores(p: Mapping[str, object]) -> dict[str, dict[str, tuple[int, int, bytes]]]:
    source: list[SourceRecord] = p["source"]  # type: ignore[assignment]
    dead: dict[int, DeadLetter] = p["dead"]  # type: ignore[assignment]
    cuts: list[tuple[int, int]] = p["cuts"]  # type: ignore[assignment]
    by_offset = {s.offset: s for s in source}
    contents: dict[str, dict[tuple[int, int], list[RawRecord]]] = {}
    for store in ("a", "b"):
        contents[store] = {
            (a, b): [
                RawRecord(
                    o, by_offset[o].timestamp_ms, by_offset[o].key, (by_offset[o].value or b"")[5:]
                )
                for o in range(a, b + 1)
                if o in by_offset and o not in dead
            ]
            for a, b in cuts
        }
    for store, what, at in p["mut"]:  # type: ignore[attr-defined]
        objs = contents[store]
        home = (
            next(c for c in objs if c[0] <= at <= c[1])
            if any(c[0] <= at <= c[1] for c in objs)
            else None
        )
        if what == "drop" and home:
            objs[home] = [r for r in objs[home] if r.offset != at]
        elif what == "alter" and home:
            objs[home] = [
                r._replace(body=body("changed")) if r.offset == at else r for r in objs[home]
            ]
        elif what == "copy" and at in by_offset:
            s = by_offset[at]
            extra = RawRecord(at, s.timestamp_ms, s.key, (s.value or b"")[5:])
            objs[(at, at)] = [*objs.get((at, at), []), extra]
        elif what == "store_dead" and at in dead and home:
            s = by_offset[at]
            objs[home] = sorted(
                [*objs[home], RawRecord(at, s.timestamp_ms, s.key, (s.value or b"")[5:])]
            )
        elif what == "phantom" and at not in by_offset and home:
            objs[home] = sorted([*objs[home], RawRecord(at, TS0, None, body("ghost"))])
        elif what == "lose" and home:
            del objs[home]
    out: dict[str, dict[str, tuple[int, int, bytes]]] = {}
    for store, objs in contents.items():
        out[store] = {}
        for (a, b), recs in objs.items():
            key = object_key(TOPIC, 0, a, b)
            meta = {"first_offset": str(a), "last_offset": str(b)}
            data = encode_container(
                key, {SID: SCHEMA} if recs else {}, recs, [SID] * len(recs), meta
            )
            out[store][key] = (a, b, data)
    return out


def oracle(
    p: Mapping[str, object], stores: Mapping[str, Mapping[str, tuple[int, int, bytes]]]
) -> tuple[dict[str, int], set[tuple[int, Kind, str, str]]]:
    n: int = p["n"]  # type: ignore[assignment]
    low: int = p["low"]  # type: ignore[assignment]
    by_offset = {s.offset: s for s in p["source"]}  # type: ignore[attr-defined]
    dead: dict[int, DeadLetter] = p["dead"]  # type: ignore[assignment]
    held: dict[str, dict[int, list[Holding]]] = {s: {} for s in stores}
    for store, objs in stores.items():
        for a, b, data in objs.values():
            for rec in stored_records(read_container(data)):
                s = by_offset.get(rec.offset)
                h: Holding
                if not a <= rec.offset <= b:
                    h = OUTSIDE
                elif rec.offset < low:
                    h = rec
                elif s is not None and (s.timestamp_ms, s.key, s.value) == (
                    rec.timestamp_ms,
                    rec.key,
                    b"\x00" + rec.schema_id.to_bytes(4, "big") + rec.body,
                ):
                    h = EQUAL
                else:
                    h = OTHER
                held[store].setdefault(rec.offset, []).append(h)
    counts = {k.value: 0 for k in Klass}
    found: set[tuple[int, Kind, str, str]] = set()
    for o in range(n):
        below = o < low
        klass, fs = classify(
            below,
            None if below else by_offset.get(o),
            None if below else dead.get(o),
            {s: held[s].get(o, []) for s in stores},
        )
        if klass is not None:
            counts[klass.value] += 1
        found |= {(o, f.kind, f.where, f.detail) for f in fs}
    return counts, found


@settings(max_examples=300, deadline=None)
@given(partitions())
def test_sweep_matches_the_oracle(p: dict[str, object]) -> None:
    stores = build_stores(p)
    n: int = p["n"]  # type: ignore[assignment]
    low: int = p["low"]  # type: ignore[assignment]
    source: Sequence[SourceRecord] = p["source"]  # type: ignore[assignment]
    refs = {
        s: [ObjectRef(s, k, a, b, len(d)) for k, (a, b, d) in objs.items()]
        for s, objs in stores.items()
    }
    reads: list[tuple[str, str]] = []

    def read(store: str, key: str) -> bytes:
        reads.append((store, key))
        return stores[store][key][2]

    account = audit_partition(
        (TOPIC, 0),
        0,
        n,
        low,
        refs,
        source_batches([s for s in source if s.offset >= low], p["batch"]),  # type: ignore[arg-type]
        p["dead"],  # type: ignore[arg-type]
        read,
    )
    counts, found = oracle(p, stores)
    got = {
        (o, f.kind, f.where, f.detail) for f in account.findings for o in range(f.first, f.last + 1)
    }
    assert got == found
    assert account.counts == counts
    # every offset has a class or a finding, and each object was read once
    with_finding = {o for o, *_ in found}
    assert account.accounted + len(with_finding) == n
    assert sorted(reads) == sorted({(s, k) for s, objs in stores.items() for k in objs})
    assert len(account.objects) == len(reads)
    if not p["mut"]:
        assert not account.findings


def test_a_reserved_folder_is_not_a_topic() -> None:
    for name in ("_audit", "_cutover"):
        with pytest.raises(ValidationError, match="reserved name"):
            Settings(kafka_bootstrap="k:9092", topics=["a", name], stores=["s3"], s3_bucket="b")


@st.composite
def columns(
    draw: st.DrawFn,
) -> tuple[list[int], list[int], list[bytes | None], list[bytes | None], dict[int, int]]:
    n = draw(st.integers(0, 12))
    offsets = sorted(draw(st.sets(st.integers(0, 1 << 40), min_size=n, max_size=n)))
    stamps = draw(st.lists(st.integers(-(1 << 50), 1 << 50), min_size=n, max_size=n))
    keys = draw(st.lists(st.one_of(st.none(), st.binary(max_size=200)), min_size=n, max_size=n))
    ids = draw(st.lists(st.integers(0, (1 << 32) - 1), min_size=1, max_size=4))
    value = st.one_of(
        st.builds(
            lambda sid, b: b"\x00" + sid.to_bytes(4, "big") + b,
            st.sampled_from([*ids, 99]),
            st.binary(max_size=300),
        ),
        st.none(),
        st.binary(max_size=6),  # not the wire format (or an empty body)
    )
    values = draw(st.lists(value, min_size=n, max_size=n))
    branches = {sid: b for b, sid in enumerate(sorted(ids))}
    return offsets, stamps, keys, values, branches


_HEADER_LISTS: st.SearchStrategy[list[tuple[str, bytes | None]] | None] = st.one_of(
    st.none(),
    st.just([]),
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "é"]), st.one_of(st.none(), st.binary(max_size=9))),
        min_size=1,
        max_size=3,
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    columns(),
    st.integers(0, 13),
    st.integers(0, 13),
    st.sets(st.integers(0, 12)),
    st.one_of(st.none(), st.lists(_HEADER_LISTS, min_size=13, max_size=13)),
)
def test_the_compiled_payload_is_the_python_one(
    cols: tuple[list[int], list[int], list[bytes | None], list[bytes | None], dict[int, int]],
    start: int,
    end: int,
    dead_at: set[int],
    heads: list[RecordHeaders | None] | None,
) -> None:
    """wire_payload (C, or Python where a record has headers) makes the bytes of
    wire_payload_py, and both are the envelopes container.encode_envelope makes of the
    records not skipped: without a headers field (`heads` None: format 2) or with each
    record's headers (format 3)."""
    offsets, stamps, keys, values, branches = cols
    if heads is not None:
        heads = heads[: len(offsets)]
    fmt = LEGACY_FORMAT if heads is None else FORMAT_VERSION
    skip = {
        offsets[i]: dl(SourceRecord(offsets[i], 0, None, None)) for i in dead_at if i < len(offsets)
    }
    made = wire_payload(offsets, stamps, keys, values, start, end, skip, branches, heads)
    assert made == wire_payload_py(offsets, stamps, keys, values, start, end, skip, branches, heads)
    kept = [i for i in range(start, min(end, len(offsets))) if offsets[i] not in skip]
    storable = all(
        (v := values[i]) is not None
        and len(v) >= 5
        and v[0] == 0
        and int.from_bytes(v[1:5], "big") in branches
        for i in kept
    )
    if not storable:
        assert made is None
        return
    assert made == (
        b"".join(
            encode_envelope(
                offsets[i],
                stamps[i],
                keys[i],
                (values[i] or b"")[5:],
                branches[int.from_bytes((values[i] or b"")[1:5], "big")],
                None if heads is None else heads[i],
                fmt,
            )
            for i in kept
        ),
        len(kept),
        stamps[kept[0]] if kept else None,
        stamps[kept[-1]] if kept else None,
    )


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.text(max_size=300)), min_size=1, max_size=300))
def test_the_dead_letter_index_costs_at_most_what_it_counts(
    entries: list[tuple[int, str]],
) -> None:
    """The memory bound of the dead-letter index (DEAD_LETTER_ENTRY_BYTES and the reason
    string per offset, nothing for a resend) is an upper bound of what it holds."""
    made = [
        DeadLetter(reason, sha256_hex(b"k%d" % o), sha256_hex(b"v%d" % o), TS0 + o)
        for o, reason in entries
    ]
    index: dict[int, DeadLetter] = {}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        counted = sum(add_dead_letter(index, o, d) for (o, _), d in zip(entries, made, strict=True))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert counted == sum(DEAD_LETTER_ENTRY_BYTES + sys.getsizeof(d.reason) for d in index.values())
    assert sum(d.copies for d in index.values()) == len(entries)
    # what the entries themselves hold (made before the index, as the reader makes them)
    held = sum(
        sys.getsizeof(d) + sys.getsizeof(d.reason) + 2 * sys.getsizeof(d.key_sha256) + 32 + 28
        for d in index.values()
    )
    assert grown + held <= counted


_SOME_HEADERS: list[RecordHeaders | None] = [
    None,
    [("a", b"1")],
    [("dup", b"x"), ("dup", None), ("é", b"\xff")],
    [],
]


@settings(max_examples=60, deadline=None)
@given(
    heads=st.lists(st.sampled_from(_SOME_HEADERS), min_size=8, max_size=8),
    fmt=st.sampled_from([LEGACY_FORMAT, FORMAT_VERSION]),
    changed=st.one_of(st.none(), st.integers(0, 7)),
)
def test_headers_are_compared_for_format_3_objects_only(
    heads: list[RecordHeaders | None], fmt: str, changed: int | None
) -> None:
    """An object of format 3 holds each record's headers: the same list as the source's is
    `stored`, any other list (here: one record's headers replaced) is `altered` at that
    offset. An object of format 2 never held them: it is `stored` whatever they are."""
    source = [src(o)._replace(headers=heads[o]) for o in range(8)]
    kept = [
        RawRecord(s.offset, s.timestamp_ms, s.key, (s.value or b"")[5:], s.headers) for s in source
    ]
    if changed is not None:
        other = [("other", b"?")] if heads[changed] != [("other", b"?")] else None
        kept[changed] = kept[changed]._replace(headers=other)
    key = object_key(TOPIC, 0, 0, 7)
    data = encode_container(
        key,
        {SID: SCHEMA},
        kept,
        [SID] * 8,
        {"topic": TOPIC, "partition": "0", "first_offset": "0", "last_offset": "7"},
        format_version=fmt,
    )
    account = audit_partition(
        (TOPIC, 0),
        0,
        8,
        0,
        {"s3": [ObjectRef("s3", key, 0, 7, len(data))]},
        source_batches(source),
        {},
        lambda store, k: data,
    )
    if changed is None or fmt == LEGACY_FORMAT:
        assert account.findings == [] and account.counts["stored"] == 8
    else:
        assert [(f.kind, f.first, f.last) for f in account.findings] == [
            (Kind.ALTERED, changed, changed)
        ]


def _range(kind: Kind, where: str, first: int, last: int) -> FindingRange:
    return FindingRange(kind, where, first, last, "")


@pytest.mark.parametrize(
    ("offsets", "findings", "stored"),
    [
        ([], [], 0),
        ([5, 6, 7, 9], [], 4),
        ([5, 5, 6, 3], [], 2),  # an offset seen again, or out of order, counts once
        # a re-driven record missing from one store, or both: not stored
        ([10, 11, 12], [_range(Kind.MISSING, "s3", 11, 11)], 2),
        (
            [10, 11, 12],
            [_range(Kind.MISSING, "s3", 11, 11), _range(Kind.MISSING, "azure", 11, 11)],
            2,
        ),
        ([10, 11, 12], [_range(Kind.MISSING, "s3", 0, 100)], 0),
        (
            [10, 11, 12, 20],
            [_range(Kind.MISSING, "s3", 9, 10), _range(Kind.ALTERED, "azure", 12, 30)],
            1,
        ),
        (
            [10, 11, 12],
            [_range(Kind.MISSING, "s3", 10, 11), _range(Kind.MISSING, "azure", 11, 12)],
            0,
        ),
        # doubled and unexpected leave the record stored
        ([10, 11], [_range(Kind.DOUBLED, "s3", 10, 11), _range(Kind.UNEXPECTED, "s3", 11, 11)], 2),
    ],
)
def test_the_stored_re_driven_records_are_counted_without_those_in_findings(
    offsets: list[int], findings: list[FindingRange], stored: int
) -> None:
    runs: list[list[int]] = []
    for offset in offsets:
        add_to_runs(runs, offset)
    assert stored_in_runs(runs, findings) == stored


@given(
    st.sets(st.integers(0, 60)),
    st.lists(
        st.tuples(st.sampled_from(list(Kind)), st.integers(0, 60), st.integers(0, 8)),
        max_size=6,
    ),
)
def test_stored_re_driven_records_match_a_set_oracle(
    offsets: set[int], holes: list[tuple[Kind, int, int]]
) -> None:
    runs: list[list[int]] = []
    for offset in sorted(offsets):
        add_to_runs(runs, offset)
    findings = [_range(kind, "s3", first, first + size) for kind, first, size in holes]
    hidden = {
        o
        for f in findings
        if f.kind in (Kind.MISSING, Kind.ALTERED)
        for o in range(f.first, f.last + 1)
    }
    assert stored_in_runs(runs, findings) == len(offsets - hidden)
    assert len(runs) <= len(offsets)
