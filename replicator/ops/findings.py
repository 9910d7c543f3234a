"""What `replicator verify` concludes, as pure functions over plain values (no client here).

For one partition, given each store's committed offset and its listing (key, size, MD5), and
the offsets to check:

- coverage, per store: from `start` (the first retained offset, or the start of a time
  filter) up to the store's committed offset, every offset lies in exactly one object:
  a `gap` names offsets no object covers, an `overlap` two objects sharing offsets (P1, P2);
- alignment, across stores: for what every store has committed (objects that end below the
  lowest committed offset), the same keys with the same size and MD5 (P3): `missing` names a
  key a store lacks where it holds no other object, `cut_mismatch` a key a store lacks but
  covers with other objects, `differs` a key both hold with other bytes.

For an object that differs, `compare_records` names the offsets concerned: records the
object lacks, holds without reason, or holds with other content, against the records Kafka
still has (or, when Kafka no longer retains them, against the other store's object).

Offsets are inclusive ranges `(first, last)`, as in object keys.
"""

from __future__ import annotations

import bisect
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import fastavro

from replicator.container import normalized_headers
from replicator.keys import ChunkKey, parse_key
from replicator.model import TP
from replicator.stores.base import ObjectInfo

Range = tuple[int, int]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FindingKind(str, Enum):
    GAP = "gap"  # offsets below the store's committed offset that no object covers
    OVERLAP = "overlap"  # two objects of one store cover the same offsets
    MISSING = "missing"  # a key the other store(s) hold, absent here, offsets not covered here
    CUT_MISMATCH = "cut_mismatch"  # a key absent here whose offsets other objects cover here
    DIFFERS = "differs"  # the same key with another size or MD5
    BEHIND_RETENTION = "behind_retention"  # committed below the first retained offset


@dataclass
class RecordDiff:
    """One store's object compared record by record with the reference (Kafka, else the
    other store's object)."""

    store: str
    verdict: str  # matches_kafka, differs_from_kafka, undecodable, unknown
    reference: str  # "kafka" or the name of the other store
    records: int = 0
    missing: list[Range] = field(default_factory=list)  # expected offsets absent here
    unexpected: list[Range] = field(default_factory=list)  # offsets held here without reason
    altered: list[Range] = field(default_factory=list)  # offsets held with other content
    error: str | None = None  # why the object could not be read entirely

    @property
    def concerned(self) -> list[Range]:
        return merge_ranges([*self.missing, *self.unexpected, *self.altered])


@dataclass
class Finding:
    kind: FindingKind
    topic: str
    partition: int
    store: str  # the store where the problem is
    first: int
    last: int
    key: str | None = None  # the object concerned
    other_keys: list[str] = field(default_factory=list)  # objects it overlaps / other cuts
    sources: list[str] = field(default_factory=list)  # stores that hold `key`
    detail: str = ""
    sizes: dict[str, int] = field(default_factory=dict)
    md5s: dict[str, str | None] = field(default_factory=dict)
    suspect: str | None = None  # for an overlap: the object not matching the other store
    records: list[RecordDiff] = field(default_factory=list)  # for `differs`, filled by I/O

    def describe(self) -> str:
        where = f"{self.topic}/{self.partition} {self.store}"
        rng = f"offsets {self.first}-{self.last}"
        if self.kind is FindingKind.GAP:
            text = f"{where}: gap: {rng} are in no object ({self.detail})"
        elif self.kind is FindingKind.OVERLAP:
            text = f"{where}: overlap: {rng} lie in {self.key} and in {', '.join(self.other_keys)}"
            if self.suspect:
                text += f"; {self.suspect} is not the other store's cut"
        elif self.kind is FindingKind.MISSING:
            text = f"{where}: missing: {self.key} ({rng}), held by {', '.join(self.sources)}"
        elif self.kind is FindingKind.CUT_MISMATCH:
            text = (
                f"{where}: cut mismatch: {self.key} ({rng}) of {', '.join(self.sources)} is cut "
                f"here as {', '.join(self.other_keys)}"
            )
        elif self.kind is FindingKind.DIFFERS:
            sizes = ", ".join(
                f"{s} {n} bytes md5 {self.md5s.get(s)}" for s, n in self.sizes.items()
            )
            text = f"{where}: differs: {self.key} ({rng}): {sizes}"
            if self.detail:
                text += f" ({self.detail})"
        else:
            text = f"{where}: {self.kind.value}: {rng} ({self.detail})"
        for diff in self.records:
            text += "\n      " + describe_record_diff(diff)
        return text

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["kind"] = self.kind.value
        return out


def describe_record_diff(diff: RecordDiff) -> str:
    if diff.verdict == "matches_kafka":
        return f"{diff.store}: matches Kafka ({diff.records} records)"
    parts = []
    if diff.missing:
        parts.append(f"lacks offsets {format_ranges(diff.missing)}")
    if diff.unexpected:
        parts.append(f"holds unexpected offsets {format_ranges(diff.unexpected)}")
    if diff.altered:
        parts.append(f"holds other content at offsets {format_ranges(diff.altered)}")
    if diff.error:
        parts.append(f"unreadable: {diff.error}")
    against = "Kafka" if diff.reference == "kafka" else f"the {diff.reference} object"
    return f"{diff.store}: {diff.verdict} against {against}: " + (
        "; ".join(parts) or "no record differs"
    )


@dataclass
class StoreListing:
    """One store's view of one partition: its committed offset (next offset to write, None
    when nothing is committed) and the objects listed under the partition's prefix."""

    committed: int | None
    objects: Sequence[ObjectInfo]


@dataclass
class PartitionCheck:
    """The offsets to check in one partition."""

    topic: str
    partition: int
    start: int  # coverage is checked from here (first retained offset or time filter)
    until: int | None = None  # ... up to here (exclusive), else up to each committed offset
    compare_from: int = 0  # objects ending below this are not compared across stores
    low_watermark: int = 0
    retention_check: bool = True  # a committed offset below `start` is a finding


@dataclass
class PartitionReport:
    topic: str
    partition: int
    status: str  # aligned, diverged, unchecked
    start: int
    until: int | None
    low_watermark: int
    committed: dict[str, int | None] = field(default_factory=dict)
    common_committed: int | None = None
    objects: dict[str, int] = field(default_factory=dict)  # every object of the partition
    bytes: dict[str, int] = field(default_factory=dict)
    compared: int = 0  # keys compared across stores
    foreign: dict[str, list[str]] = field(default_factory=dict)  # keys not of this service
    # keys whose copies differ only by format: one store holds the chunk as the previous
    # version wrote it (format 2, no headers), another as this one does (same records)
    format_switch: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "findings"}
        out["findings"] = [f.to_json() for f in self.findings]
        return out


@dataclass(frozen=True)
class _Obj:
    key: str
    first: int
    last: int
    size: int
    md5: str | None


def _parse(tp: TP, objects: Iterable[ObjectInfo]) -> tuple[list[_Obj], list[str]]:
    parsed: list[_Obj] = []
    foreign: list[str] = []
    seen: set[str] = set()
    for info in objects:
        key: ChunkKey | None = parse_key(info.key)
        if key is None or (key.topic, key.partition) != tp:
            foreign.append(info.key)
            continue
        if info.key in seen:
            continue
        seen.add(info.key)
        parsed.append(_Obj(info.key, key.first, key.last, info.size, info.md5_hex))
    parsed.sort(key=lambda o: (o.first, o.last))
    return parsed, foreign


def check_partition(check: PartitionCheck, listings: Mapping[str, StoreListing]) -> PartitionReport:
    """Coverage per store and alignment across stores for one partition."""
    tp = (check.topic, check.partition)
    report = PartitionReport(
        topic=check.topic,
        partition=check.partition,
        status="aligned",
        start=check.start,
        until=check.until,
        low_watermark=check.low_watermark,
    )
    objs: dict[str, list[_Obj]] = {}
    for store, listing in listings.items():
        parsed, foreign = _parse(tp, listing.objects)
        objs[store] = parsed
        report.committed[store] = listing.committed
        report.objects[store] = len(parsed)
        report.bytes[store] = sum(o.size for o in parsed)
        if foreign:
            report.foreign[store] = foreign

    def in_scope(o: _Obj) -> bool:
        return o.last >= check.compare_from and (check.until is None or o.first < check.until)

    # -- coverage and overlaps, per store
    for store, parsed in objs.items():
        committed = listings[store].committed
        report.findings.extend(_overlaps(tp, store, [o for o in parsed if in_scope(o)]))
        if committed is None:
            continue
        if committed < check.start:
            if check.retention_check and committed < check.low_watermark:
                report.findings.append(
                    Finding(
                        FindingKind.BEHIND_RETENTION,
                        tp[0],
                        tp[1],
                        store,
                        committed,
                        check.low_watermark - 1,
                        detail=f"committed offset {committed} is below the first retained "
                        f"offset {check.low_watermark}: Kafka no longer holds these records",
                    )
                )
            continue
        limit = committed if check.until is None else min(committed, check.until)
        report.findings.extend(_gaps(tp, store, parsed, check.start, limit, committed))

    # -- alignment across stores, for what every store has committed
    committed_all = [listings[s].committed for s in objs]
    common = (
        None
        if not committed_all or any(c is None for c in committed_all)
        else min(c for c in committed_all if c is not None)
    )
    report.common_committed = common
    if common is not None and len(objs) > 1:
        by_key: dict[str, dict[str, _Obj]] = {}
        for store, parsed in objs.items():
            for o in parsed:
                if o.last < common and in_scope(o):
                    by_key.setdefault(o.key, {})[store] = o
        report.compared = len(by_key)
        starts = {store: [o.first for o in parsed] for store, parsed in objs.items()}
        for key in sorted(by_key):
            holders = by_key[key]
            sample = next(iter(holders.values()))
            for store, parsed in objs.items():
                if store in holders:
                    continue
                covering = _covering(parsed, starts[store], sample.first, sample.last)
                kind = FindingKind.CUT_MISMATCH if covering else FindingKind.MISSING
                report.findings.append(
                    Finding(
                        kind,
                        tp[0],
                        tp[1],
                        store,
                        sample.first,
                        sample.last,
                        key=key,
                        other_keys=[o.key for o in covering],
                        sources=sorted(holders),
                    )
                )
            if len(holders) > 1:
                values = {(o.size, o.md5) for o in holders.values()}
                unknown = any(o.md5 is None for o in holders.values())
                if len(values) > 1 or unknown:
                    report.findings.append(
                        Finding(
                            FindingKind.DIFFERS,
                            tp[0],
                            tp[1],
                            ",".join(sorted(holders)),
                            sample.first,
                            sample.last,
                            key=key,
                            sources=sorted(holders),
                            sizes={s: o.size for s, o in sorted(holders.items())},
                            md5s={s: o.md5 for s, o in sorted(holders.items())},
                            detail="MD5 unknown" if unknown and len(values) == 1 else "",
                        )
                    )
    # An overlapping object that the other store does not hold is the suspect one; the other
    # store's lack of it is then no finding of its own.
    suspects = set()
    for finding in report.findings:
        if finding.kind is FindingKind.OVERLAP:
            finding.suspect = _suspect(finding, objs)
            if finding.suspect is not None:
                suspects.add(finding.suspect)
    report.findings = [
        f for f in report.findings if not (f.kind is FindingKind.CUT_MISMATCH and f.key in suspects)
    ]
    report.findings.sort(key=lambda f: (f.first, f.kind.value, f.store, f.key or ""))
    if report.findings:
        report.status = "diverged"
    return report


def _overlaps(tp: TP, store: str, parsed: list[_Obj]) -> list[Finding]:
    out: list[Finding] = []
    widest: _Obj | None = None  # the object reaching furthest so far
    for o in parsed:
        if widest is not None and o.first <= widest.last:
            out.append(
                Finding(
                    FindingKind.OVERLAP,
                    tp[0],
                    tp[1],
                    store,
                    o.first,
                    min(o.last, widest.last),
                    key=widest.key,
                    other_keys=[o.key],
                )
            )
        if widest is None or o.last > widest.last:
            widest = o
    return out


def _gaps(
    tp: TP, store: str, parsed: list[_Obj], start: int, limit: int, committed: int
) -> list[Finding]:
    out: list[Finding] = []
    nxt = start

    def gap(first: int, last: int) -> None:
        out.append(
            Finding(
                FindingKind.GAP,
                tp[0],
                tp[1],
                store,
                first,
                last,
                detail=f"below the committed offset {committed}",
            )
        )

    for o in parsed:
        if nxt >= limit:
            break
        if o.last < nxt:
            continue
        if o.first > nxt:
            gap(nxt, min(o.first, limit) - 1)
        nxt = max(nxt, o.last + 1)
    if nxt < limit:
        gap(nxt, limit - 1)
    return out


def _covering(parsed: list[_Obj], starts: list[int], first: int, last: int) -> list[_Obj]:
    """Objects of one store sharing an offset with [first, last]."""
    out = []
    j = bisect.bisect_right(starts, last) - 1
    while j >= 0 and parsed[j].first >= first:  # start inside the range: they overlap
        out.append(parsed[j])
        j -= 1
    # Objects starting before it overlap when they reach `first`; in a store without
    # overlaps only the nearest one can, so a short scan back is enough.
    scanned = 0
    while j >= 0 and scanned < 64:
        if parsed[j].last >= first:
            out.append(parsed[j])
        j -= 1
        scanned += 1
    out.sort(key=lambda o: (o.first, o.last))
    return out


def _suspect(finding: Finding, objs: Mapping[str, list[_Obj]]) -> str | None:
    assert finding.key is not None
    candidates = [finding.key, *finding.other_keys]
    others = [s for s in objs if s != finding.store]
    if not others:
        return None
    known = {o.key: o for s in others for o in objs[s]}
    foreign = [k for k in candidates if k not in known]
    return foreign[0] if len(foreign) == 1 else None


# ---------------------------------------------------------------------- record level
@dataclass(frozen=True)
class RecordPrint:
    """What identifies a record's content: its timestamp, key and event (canonical JSON),
    and its headers in order (None: not known, as in a format-2 object, which did not keep
    them). `same_print` compares two prints; `==` leaves the headers out."""

    timestamp_ms: int
    key: bytes | None
    value: str
    headers: tuple[tuple[str, bytes | None], ...] | None = field(default=None, compare=False)


def same_print(a: RecordPrint, b: RecordPrint) -> bool:
    """The same record: timestamp, key and event, and the headers where both prints know
    them (a format-2 object's records are compared without headers)."""
    return a == b and (a.headers is None or b.headers is None or a.headers == b.headers)


def same_prints(a: Mapping[int, RecordPrint], b: Mapping[int, RecordPrint]) -> bool:
    return a.keys() == b.keys() and all(same_print(p, b[o]) for o, p in a.items())


@dataclass
class DecodedObject:
    records: dict[int, RecordPrint]
    error: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))


def millis(value: Any) -> int:
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return (moment - _EPOCH) // timedelta(milliseconds=1)
    return int(value)


def decode_object(key: str, data: bytes) -> DecodedObject:
    """Every record of a container file, by offset; `error` says why reading stopped early
    or where the file contradicts its key."""
    out = DecodedObject(records={})
    parsed = parse_key(key)
    try:
        reader = fastavro.reader(io.BytesIO(data))
        out.metadata = {
            k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in reader.metadata.items()
        }
        for item in reader:
            if not isinstance(item, dict):
                out.error = "a record is not an Avro record"
                break
            offset = int(item["offset"])
            if offset in out.records:
                out.error = f"offset {offset} appears twice"
            out.records[offset] = RecordPrint(
                millis(item["timestamp"]),
                item.get("key"),
                canonical(item.get("value")),
                normalized_headers(item["headers"]) if "headers" in item else None,
            )
    except Exception as exc:  # fastavro raises many types on corrupt input
        out.error = f"{type(exc).__name__} after {len(out.records)} records"
    if parsed is not None and out.error is None:
        first = out.metadata.get("replicator.first_offset")
        last = out.metadata.get("replicator.last_offset")
        if first != str(parsed.first) or last != str(parsed.last):
            out.error = f"header says offsets {first}-{last}, the key {parsed.first}-{parsed.last}"
        outside = [o for o in out.records if not parsed.first <= o <= parsed.last]
        if outside:
            out.error = f"records outside the key's range: {format_ranges(to_ranges(outside))}"
    return out


def compare_records(
    first: int,
    last: int,
    expected: Mapping[int, RecordPrint] | None,
    objects: Mapping[str, DecodedObject],
) -> list[RecordDiff]:
    """Each store's object against what Kafka holds for [first, last] (`expected`: its good
    records), or, when Kafka no longer holds the range (`expected` None), against the other
    store's object."""
    out: list[RecordDiff] = []
    for store, obj in sorted(objects.items()):
        if expected is not None:
            reference: Mapping[int, RecordPrint] = expected
            ref_name = "kafka"
        else:
            others = [(s, o) for s, o in sorted(objects.items()) if s != store]
            if not others:
                out.append(RecordDiff(store, "unknown", "none", len(obj.records), error=obj.error))
                continue
            ref_name, ref_obj = others[0]
            reference = ref_obj.records
        missing = [o for o in reference if first <= o <= last and o not in obj.records]
        unexpected = [o for o in obj.records if o not in reference]
        altered = [
            o for o, r in obj.records.items() if o in reference and not same_print(reference[o], r)
        ]
        diff = RecordDiff(
            store=store,
            verdict="",
            reference=ref_name,
            records=len(obj.records),
            missing=to_ranges(missing),
            unexpected=to_ranges(unexpected),
            altered=to_ranges(altered),
            error=obj.error,
        )
        clean = not (missing or unexpected or altered or obj.error)
        if expected is not None:
            diff.verdict = "matches_kafka" if clean else "differs_from_kafka"
            if obj.error and not clean:
                diff.verdict = "undecodable"
        else:
            diff.verdict = "undecodable" if obj.error else "unknown"
        out.append(diff)
    return out


def right_stores(diffs: Sequence[RecordDiff]) -> list[str]:
    """The stores whose object can be trusted: it matches Kafka, or, when Kafka no longer
    holds the range, it reads entirely while the others' do not."""
    matching = [d.store for d in diffs if d.verdict == "matches_kafka"]
    if matching or any(d.reference == "kafka" for d in diffs):
        return matching
    readable = [d.store for d in diffs if d.error is None]
    return readable if 0 < len(readable) < len(diffs) else []


# ---------------------------------------------------------------------- ranges
def to_ranges(offsets: Iterable[int]) -> list[Range]:
    out: list[Range] = []
    for o in sorted(set(offsets)):
        if out and o == out[-1][1] + 1:
            out[-1] = (out[-1][0], o)
        else:
            out.append((o, o))
    return out


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    out: list[Range] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def format_ranges(ranges: Sequence[Range], limit: int = 20) -> str:
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"... ({len(ranges) - limit} more ranges)")
    return ", ".join(parts)


# ---------------------------------------------------------------------- the whole report
EXIT_ALIGNED = 0
EXIT_DIVERGED = 1
EXIT_UNCHECKED = 3


@dataclass
class VerifyReport:
    stores: list[str]
    group_id: str
    filters: dict[str, Any]
    started_at: str
    finished_at: str = ""
    partitions: list[PartitionReport] = field(default_factory=list)
    error: str | None = None  # the check could not even start
    retired: list[str] = field(default_factory=list)  # stores a cutover record retires

    @property
    def findings(self) -> list[Finding]:
        return [f for p in self.partitions for f in p.findings]

    @property
    def status(self) -> str:
        if any(p.status == "diverged" for p in self.partitions):
            return "diverged"
        if self.error is not None or any(p.status == "unchecked" for p in self.partitions):
            return "unchecked"
        return "aligned"

    @property
    def exit_code(self) -> int:
        return {"aligned": EXIT_ALIGNED, "diverged": EXIT_DIVERGED}.get(self.status, EXIT_UNCHECKED)

    def totals(self) -> dict[str, Any]:
        return {
            "partitions": len(self.partitions),
            "unchecked": sum(1 for p in self.partitions if p.status == "unchecked"),
            "objects": {s: sum(p.objects.get(s, 0) for p in self.partitions) for s in self.stores},
            "bytes": {s: sum(p.bytes.get(s, 0) for p in self.partitions) for s in self.stores},
            "compared": sum(p.compared for p in self.partitions),
            "findings": len(self.findings),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "replicator-verify-report",
            "version": 1,
            "status": self.status,
            "exit_code": self.exit_code,
            "stores": self.stores,
            "group_id": self.group_id,
            "filters": self.filters,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "retired": self.retired,
            "totals": self.totals(),
            "partitions": [p.to_json() for p in self.partitions],
        }

    def dumps(self) -> bytes:
        return report_json(self.to_json())

    def summary(self, max_findings: int = 50) -> str:
        t = self.totals()
        lines = [
            f"verify: {t['partitions']} partition(s), stores {', '.join(self.stores)}, "
            f"{t['compared']:,} key(s) compared across stores"
        ]
        for store in self.stores:
            lines.append(
                f"  {store:<6} {t['objects'][store]:>10,} objects  {t['bytes'][store] / 1e6:10.2f} MB"
            )
        if self.retired:
            lines.append(
                f"  note: a cutover record retires {', '.join(self.retired)}: it is no longer "
                "written, so it is compared only up to its committed offsets"
            )
        if self.error:
            lines.append(f"could not check: {self.error}")
        for p in self.partitions:
            if p.status == "unchecked":
                lines.append(f"  {p.topic}/{p.partition}: could not check: {p.error}")
        findings = self.findings
        for f in findings[:max_findings]:
            lines.append("  " + f.describe())
        if len(findings) > max_findings:
            lines.append(f"  ... and {len(findings) - max_findings} more (see the JSON report)")
        verdict = {
            "aligned": "ALIGNED: both stores hold the same objects, with no gap and no overlap",
            "diverged": f"DIVERGED: {len(findings)} finding(s)",
            "unchecked": "COULD NOT CHECK everything (see above)",
        }[self.status]
        lines.append(f"result: {verdict} (exit {self.exit_code})")
        return "\n".join(lines)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def report_json(value: Mapping[str, Any]) -> bytes:
    """The one shape of every JSON document the operator tools write (verify, replay and
    repair reports, the cutover record): indented, keys sorted, one final newline."""
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
