"""`replicator replay`: drive an offset or time range of some partitions into one or both
stores again, whether the service runs or not (P7). Over data already present it creates
nothing (P2).

How a replay computes the same keys as the service:

- the cuts already made are taken from the objects in every configured store (their keys
  give first and last offsets) into a `CutPlan`, and a `PartitionChunker` with the service's
  own rules (`REPLICATOR_CHUNK_*`) cuts the records read from Kafka, decoded and checked as
  the service does (a bad record is covered but not stored);
- a range must start on a chunk boundary, so it is extended to the enclosing known cuts:
  its start moves back to the start of the object that holds it (or, between objects, to the
  end of the previous object + 1, or to the first retained offset when there is none), its
  end forward to the end of the object that holds it (or to the start of the next object
  - 1);
- it ends at the highest committed offset of any store: past it the service is still
  cutting (an open chunk, a wall-clock flush) and writes those offsets itself.

Each chunk is encoded once (`pipeline.encode_chunk`) and created only if absent in each
chosen store. A key another store already holds is written with that store's bytes when its
records are the same (encodings may differ between library versions; a copy never does), so
both stores keep the same MD5. A key the chosen store holds with other bytes is a conflict:
it is reported, never overwritten (see `verify --repair --force-overwrite`).

A replay does not move the stores' consumer groups unless asked (`advance=True`): then a
store whose committed offset lies inside the replayed range moves to its end.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from replicator.chunking import Chunk, CutPlan, PartitionChunker, PlanConflict
from replicator.container import EncodedChunk, encode_chunk
from replicator.errors import ConflictError, StoreError
from replicator.kafka.view import KafkaUnavailable
from replicator.keys import parse_key
from replicator.model import TP
from replicator.ops.context import OpsContext, Progress
from replicator.ops.findings import decode_object, same_prints
from replicator.stores.base import ObjectInfo, PutOutcome

log = logging.getLogger("replicator.replay")

Cut = tuple[int, int]

EXIT_OK = 0
EXIT_CONFLICTS = 1
EXIT_UNAVAILABLE = 3


@dataclass(frozen=True)
class RangeRequest:
    """Offsets [first, last] of one partition (None: from the first retained offset / up to
    the highest committed offset)."""

    tp: TP
    first: int | None = None
    last: int | None = None


@dataclass
class PartitionReplay:
    topic: str
    partition: int
    requested: tuple[int | None, int | None]
    start: int | None = None  # the effective range, after alignment
    end: int | None = None
    notes: list[str] = field(default_factory=list)
    records_read: int = 0
    bad_records: int = 0
    chunks: int = 0
    written: dict[str, list[str]] = field(default_factory=dict)  # keys created per store
    copied: dict[str, list[str]] = field(default_factory=dict)  # of them: another store's bytes
    skipped: dict[str, int] = field(default_factory=dict)  # already present
    conflicts: list[dict[str, str]] = field(default_factory=list)
    advanced: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    unavailable: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReplayReport:
    stores: list[str]
    dry_run: bool
    partitions: list[PartitionReplay] = field(default_factory=list)
    error: str | None = None

    @property
    def exit_code(self) -> int:
        if self.error is not None or any(p.unavailable for p in self.partitions):
            return EXIT_UNAVAILABLE
        if any(p.error or p.conflicts for p in self.partitions):
            return EXIT_CONFLICTS
        return EXIT_OK

    def written(self, store: str) -> int:
        return sum(len(p.written.get(store, [])) for p in self.partitions)

    def skipped(self, store: str) -> int:
        return sum(p.skipped.get(store, 0) for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "replicator-replay-report",
            "version": 1,
            "stores": self.stores,
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "error": self.error,
            "totals": {
                s: {"written": self.written(s), "skipped": self.skipped(s)} for s in self.stores
            },
            "partitions": [p.to_json() for p in self.partitions],
        }

    def summary(self) -> str:
        verb = "would write" if self.dry_run else "wrote"
        lines = []
        for p in self.partitions:
            head = f"{p.topic}/{p.partition}"
            if p.start is not None and p.end is not None and p.end >= p.start:
                head += f" offsets {p.start}-{p.end}"
            counts = ", ".join(
                f"{s}: {verb} {len(p.written.get(s, []))}"
                + (f" ({len(p.copied[s])} copied)" if p.copied.get(s) else "")
                + f", skipped {p.skipped.get(s, 0)}"
                for s in self.stores
            )
            lines.append(
                f"  {head}: {p.chunks} chunk(s), {p.records_read} record(s) read "
                f"({p.bad_records} bad, covered not stored); {counts}"
            )
            lines.extend(f"    note: {n}" for n in p.notes)
            lines.extend(
                f"    CONFLICT {c['store']}: {c['key']}: {c['reason']}" for c in p.conflicts
            )
            for store, offset in p.advanced.items():
                lines.append(f"    {store}: committed offset moved to {offset}")
            if p.error:
                lines.append(f"    ERROR: {p.error}")
        if self.error:
            lines.append(f"ERROR: {self.error}")
        totals = ", ".join(
            f"{s}: {verb} {self.written(s)}, skipped {self.skipped(s)}" for s in self.stores
        )
        lines.append(
            f"replay{' (dry run)' if self.dry_run else ''}: {totals} (exit {self.exit_code})"
        )
        return "\n".join(lines)


def resolve_times(
    ctx: OpsContext, tps: list[TP], from_ms: int | None, to_ms: int | None
) -> list[RangeRequest]:
    """A time range as offset ranges: from the first record at or after `from_ms` to the
    last record before `to_ms`."""
    ends = ctx.kafka.ends(tps)
    out = []
    for tp in tps:
        first = ctx.kafka.offset_for_time(tp, from_ms, ends[tp]) if from_ms is not None else None
        last = ctx.kafka.offset_for_time(tp, to_ms, ends[tp]) - 1 if to_ms is not None else None
        out.append(RangeRequest(tp, first, last))
    return out


def run_replay(
    ctx: OpsContext,
    requests: list[RangeRequest],
    targets: list[str],
    dry_run: bool = False,
    advance: bool = False,
    extra_cuts: Mapping[TP, list[Cut]] | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    report = ReplayReport(stores=list(targets), dry_run=dry_run)
    if progress is not None:
        progress.start(len(requests))
    for req in requests:
        part = PartitionReplay(req.tp[0], req.tp[1], (req.first, req.last))
        report.partitions.append(part)
        try:
            _replay_partition(
                ctx,
                req,
                targets,
                dry_run,
                advance,
                (extra_cuts or {}).get(req.tp, []),
                part,
                progress,
            )
        except (KafkaUnavailable, StoreError) as exc:
            part.error = str(exc)
            part.unavailable = True
        except PlanConflict as exc:
            part.error = f"the stores disagree on cuts ({exc}): run `replicator verify`"
        if progress is not None:
            progress.advance()
    return report


def _sorted_cuts(listings: Mapping[str, list[ObjectInfo]], tp: TP) -> list[Cut]:
    cuts: set[Cut] = set()
    for objects in listings.values():
        for info in objects:
            key = parse_key(info.key)
            if key is not None and (key.topic, key.partition) == tp:
                cuts.add((key.first, key.last))
    return sorted(cuts)


def _replay_partition(
    ctx: OpsContext,
    req: RangeRequest,
    targets: list[str],
    dry_run: bool,
    advance: bool,
    extra: list[Cut],
    part: PartitionReplay,
    progress: Progress | None = None,
) -> None:
    tp = req.tp
    committed = {s: c[tp] for s, c in ctx.committed([tp]).items()}
    known = [c for c in committed.values() if c is not None]
    low = ctx.kafka.low(tp)
    if not known:
        part.notes.append("no store has committed anything: the service writes it itself")
        return
    limit = max(known)
    first = req.first if req.first is not None else low
    last = req.last if req.last is not None else limit - 1
    if last > limit - 1:
        part.notes.append(
            f"end {last} lowered to {limit - 1}, the highest committed offset - 1: the service "
            "writes what follows itself"
        )
        last = limit - 1
    if first > last:
        part.notes.append("nothing to replay in this range")
        return

    listings = {s: ctx.list_partition(s, tp, first, last) for s in ctx.stores}
    index: dict[str, dict[str, ObjectInfo]] = {}
    for store, objects in listings.items():
        for info in objects:
            index.setdefault(info.key, {})[store] = info
    cuts = sorted(set(_sorted_cuts(listings, tp)) | set(extra))
    start, end = _align(cuts, first, last, low, limit, part.notes)
    part.start, part.end = start, end
    if end < start:
        part.notes.append("nothing to replay once aligned to the known cuts")
        return
    plan = CutPlan()
    for a, b in cuts:
        if b >= start and a <= end:
            plan.add(a, b)  # PlanConflict: overlapping, different cuts inside the range
    if (start, end) != (first, last):
        part.notes.append(f"range {first}-{last} aligned to the known cuts: {start}-{end}")

    chunker = PartitionChunker(tp[0], tp[1], ctx.rules, start, plan)
    last_read = start - 1
    for msg in ctx.kafka.read_range(tp, start, end):
        record, schema_id = ctx.decode(msg)
        offset = msg.offset()
        assert offset is not None
        last_read = offset
        part.records_read += 1
        if progress is not None:
            progress.count("records read")
        if record is None:
            part.bad_records += 1
        for chunk in chunker.add(offset, record, schema_id, 0.0):
            _write(ctx, chunk, targets, index, dry_run, part)
    if last_read < end:
        probe = ctx.kafka.read_one(tp, last_read + 1)
        probe_offset = probe.offset() if probe is not None else None
        if probe_offset is not None and probe_offset <= end:
            raise KafkaUnavailable(
                f"kafka: reading {tp[0]}/{tp[1]} stopped at offset {last_read} before {end}"
            )
    for chunk in chunker.cut_at_boundary(end + 1):
        _write(ctx, chunk, targets, index, dry_run, part)

    if advance and not dry_run:
        for store in targets:
            c = committed.get(store)
            clean = not any(x["store"] == store for x in part.conflicts)
            if c is not None and start <= c <= end and clean:
                ctx.advance(store, {tp: end + 1})
                part.advanced[store] = end + 1


def _align(
    cuts: list[Cut], first: int, last: int, low: int, limit: int, notes: list[str]
) -> tuple[int, int]:
    """The range extended to chunk boundaries (see the module docstring)."""
    containing = next((c for c in cuts if c[0] <= first <= c[1]), None)
    before = [c[1] for c in cuts if c[1] < first]
    if containing is not None:
        start = containing[0]
    elif before:
        start = max(before) + 1
    else:
        start = min(low, first)
    while start < low:  # what Kafka no longer holds cannot be cut again
        held = next((c for c in cuts if c[0] <= start <= c[1]), None)
        if held is not None:
            notes.append(
                f"offsets {held[0]}-{held[1]} begin below the first retained offset {low}: "
                "that object cannot be rebuilt from Kafka (verify --repair copies it from a "
                "store that holds it)"
            )
            start = held[1] + 1
        else:
            nxt = min((c[0] for c in cuts if c[0] > start), default=low)
            stop = min(low, nxt)
            notes.append(f"offsets {start}-{stop - 1} are no longer in Kafka")
            start = stop
    end_cut = next((c for c in cuts if c[0] <= last <= c[1]), None)
    if end_cut is not None:
        end = end_cut[1]
        if end >= limit:  # an object past every committed offset: the service's to finish
            end = end_cut[0] - 1
    else:
        after = [c for c in cuts if c[0] > last]
        end = min(after[0][0] - 1, limit - 1) if after else limit - 1
    return start, end


def _write(
    ctx: OpsContext,
    chunk: Chunk,
    targets: list[str],
    index: Mapping[str, Mapping[str, ObjectInfo]],
    dry_run: bool,
    part: PartitionReplay,
) -> None:
    s = ctx.settings
    enc = encode_chunk(chunk, ctx.registry, s.codec, s.deflate_level)
    part.chunks += 1
    held = index.get(enc.key, {})
    prints = None

    def same_records(store: str) -> bool:
        nonlocal prints
        if prints is None:
            prints = {
                r.offset: ctx.record_print(r, sid)
                for r, sid in zip(chunk.records, chunk.schema_ids, strict=True)
            }
        obj = decode_object(enc.key, ctx.read(store, enc.key))
        return obj.error is None and same_prints(obj.records, prints)

    for store in targets:
        mine = held.get(store)
        if mine is not None:
            if mine.md5_hex == enc.md5.hex() or same_records(store):
                part.skipped[store] = part.skipped.get(store, 0) + 1
            else:
                part.conflicts.append(
                    {
                        "store": store,
                        "key": enc.key,
                        "reason": f"exists with other records than Kafka's (md5 {mine.md5_hex}, "
                        f"rebuilt {enc.md5.hex()}): run `replicator verify --repair`",
                    }
                )
            continue
        data, md5, source = enc.data, enc.md5, "kafka"
        for other, info in held.items():
            if other == store or info.md5_hex == enc.md5.hex():
                continue
            if same_records(other):
                data = ctx.read(other, enc.key)
                md5, source = hashlib.md5(data).digest(), other
            else:
                part.notes.append(
                    f"{other} holds {enc.key} with other records than Kafka's: "
                    "run `replicator verify --repair`"
                )
            break
        _put(ctx, store, enc, data, md5, source, dry_run, part)


def _put(
    ctx: OpsContext,
    store: str,
    enc: EncodedChunk,
    data: bytes,
    md5: bytes,
    source: str,
    dry_run: bool,
    part: PartitionReplay,
) -> None:
    if dry_run:
        outcome = PutOutcome.CREATED
    else:
        try:
            outcome = ctx.stores[store].create_if_absent(enc.key, data, md5, enc.metadata)
        except ConflictError as exc:
            part.conflicts.append({"store": store, "key": enc.key, "reason": str(exc)})
            return
    if outcome is PutOutcome.ALREADY_PRESENT:
        part.skipped[store] = part.skipped.get(store, 0) + 1
        return
    part.written.setdefault(store, []).append(enc.key)
    if source != "kafka":
        part.copied.setdefault(store, []).append(enc.key)
    log.info(
        "replayed",
        extra={"replicator_fields": {"store": store, "key": enc.key, "source": source}},
    )
