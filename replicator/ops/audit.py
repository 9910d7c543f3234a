"""`replicator audit`: account for every source offset against Kafka, record by record (P9),
and leave a manifest both stores hold that tools other than ours can check.

The run, for the selected partitions:

1. the dead-letter topic is read once, whole: each record naming an origin (topic,
   partition, offset) with a reason is indexed by its origin (resends counted once);
2. each store's objects of each partition are listed (before Kafka's ends are read, so an
   object the service writes meanwhile is never beyond the source);
3. each partition is audited on a pool of threads (`concurrency`): one consumer that only
   `assign`s (no group, no commit) reads its records once, in order, while each store's
   objects are read once, in offset order (`audit_logic.audit_partition`). Memory per
   partition is bounded by `audit_max_memory_bytes / concurrency`: the source records
   over one object's key range, the objects being compared, the consumer's queue;
4. the manifest (JSON Lines, deterministic bytes for the same inputs) is created in every
   store under `_audit/` (the store's prefix applies): its key names its SHA-256.

What each line of the manifest holds is in docs/runbook.md ("The auditor's check").
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from replicator import __version__
from replicator.errors import ReplicatorError, StoreError
from replicator.kafka.view import KafkaUnavailable
from replicator.model import TP, RecordHeaders
from replicator.ops.audit_logic import (
    DEAD_LETTER_ENTRY_BYTES,
    DeadLetter,
    ObjectRef,
    PartitionAccount,
    SourceBatch,
    WindowTooLarge,
    add_dead_letter,
    add_to_runs,
    audit_partition,
    dead_letter_origin,
    parse_objects,
    stored_in_runs,
)
from replicator.ops.context import OpsContext, Progress
from replicator.ops.findings import utc_now
from replicator.ops.redrive_logic import redriven_origin
from replicator.stores.retirement import retired_stores

log = logging.getLogger("replicator.audit")

AUDIT_PREFIX = "_audit/"  # reserved: never a topic's folder (keys.py: topic/partition/...)
MANIFEST_FORMAT = "replicator-audit-manifest"
MANIFEST_VERSION = 1
EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_UNCHECKED = 3
_FETCH_QUEUE_BACKOFF_MS = 20  # librdkafka's 1000 ms default idles a consumer that drains fast
# A partition's read ends at its end offset: at its last record, or, when the last offsets
# hold no record (transaction markers), once the consumer's position has passed them. A
# silence of the broker is never taken for the end: after _STALL_S of it below the end, the
# partition could not be audited (exit 3), never a false `missing`.
_IDLE_S = 3.0  # a silence this long: the position is checked, and then again every _IDLE_S
_STALL_S = 60.0
_BATCH = 2_000  # records per consume() call at most (the queue's bytes bound them too)


@dataclass
class AuditOptions:
    topics: list[str] | None = None
    partitions: list[int] | None = None
    from_offset: int | None = None
    to_offset: int | None = None  # inclusive
    since_ms: int | None = None
    until_ms: int | None = None  # exclusive
    concurrency: int = 4
    write_manifest: bool = True

    def range_json(self) -> dict[str, Any]:
        return {
            "topics": self.topics,
            "partitions": self.partitions,
            "from_offset": self.from_offset,
            "to_offset": self.to_offset,
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
        }


@dataclass
class AuditReport:
    stores: list[str]
    options: AuditOptions
    settings: dict[str, Any]
    started_at: str = ""
    finished_at: str = ""
    elapsed_s: float = 0.0
    partitions: list[PartitionAccount] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    retired: list[str] = field(default_factory=list)
    foreign: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    manifest_key: str | None = None
    manifest_sha256: str | None = None
    manifest_written: dict[str, str] = field(default_factory=dict)  # store -> outcome

    @property
    def findings(self) -> int:
        return sum(len(p.findings) for p in self.partitions)

    @property
    def status(self) -> str:
        if self.findings:
            return "findings"
        if self.error is not None or any(p.error for p in self.partitions):
            return "unchecked"
        return "clean"

    @property
    def exit_code(self) -> int:
        return {"clean": EXIT_CLEAN, "findings": EXIT_FINDINGS}.get(self.status, EXIT_UNCHECKED)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.partitions:
            for k, v in p.counts.items():
                out[k] = out.get(k, 0) + v
        out["dead_letter_resends"] = sum(p.dead_letter_resends for p in self.partitions)
        out["redriven"] = sum(p.redriven for p in self.partitions)
        out["findings"] = self.findings
        return dict(sorted(out.items()))

    def manifest(self) -> bytes:
        """JSON Lines, keys sorted, in a fixed order: the same inputs give the same bytes
        (no clock, no host, no duration in it)."""
        lines: list[dict[str, Any]] = [
            {
                "type": "header",
                "format": MANIFEST_FORMAT,
                "version": MANIFEST_VERSION,
                "tool": f"replicator {__version__}",
                "stores": self.stores,
                "retired": self.retired,
                "settings": self.settings,
                "range": self.options.range_json(),
                "compared": [
                    "offset",
                    "timestamp",
                    "key",
                    "value bytes",
                    "headers (objects of format 3)",
                ],
                "not_compared": ["headers of records in format-2 objects (not kept there)"],
            }
        ]
        for p in sorted(self.partitions, key=lambda p: (p.topic, p.partition)):
            for obj in p.objects:
                lines.append(obj.to_json())
            lines.append(p.to_json())
        lines.append(
            {
                "type": "summary",
                "status": self.status,
                "totals": self.totals(),
                "dead_letter_topic": self.dead_letters,
                "error": self.error,
            }
        )
        return b"".join(
            json.dumps(line, sort_keys=True, separators=(",", ":")).encode() + b"\n"
            for line in lines
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "replicator-audit-report",
            "version": 1,
            "status": self.status,
            "exit_code": self.exit_code,
            "stores": self.stores,
            "retired": self.retired,
            "range": self.options.range_json(),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "elapsed_s": round(self.elapsed_s, 3),
            "totals": self.totals(),
            "dead_letter_topic": self.dead_letters,
            "error": self.error,
            "foreign_keys": self.foreign,
            "manifest": {
                "key": self.manifest_key,
                "sha256": self.manifest_sha256,
                "written": self.manifest_written,
            },
            "partitions": [{**p.to_json(), "objects": len(p.objects)} for p in self.partitions],
        }

    def summary(self, max_findings: int = 50) -> str:
        t = self.totals()
        records = sum(p.hi - p.lo for p in self.partitions)
        lines = [
            f"audit: {len(self.partitions)} partition(s), {records:,} offsets, stores "
            f"{', '.join(self.stores)}, against Kafka record by record "
            f"({self.elapsed_s:.1f} s)",
            "  "
            + ", ".join(
                f"{k} {t.get(k, 0):,}"
                for k in ("stored", "dead_lettered", "no_record", "behind_retention")
            )
            + f"; dead-letter resends {t['dead_letter_resends']:,}",
        ]
        if t["redriven"]:
            lines.append(
                f"  of the stored: {t['redriven']:,} re-driven dead letter(s) at new offsets "
                "(their origin offsets are counted dead-lettered)"
            )
        if self.retired:
            lines.append(f"  note: {', '.join(self.retired)} retired by a cutover: not audited")
        if t.get("behind_retention"):
            lines.append("  note: offsets behind retention are compared between the stores only")
        for store, keys in sorted(self.foreign.items()):
            lines.append(f"  {store}: {len(keys)} key(s) not written by this service, not read")
        if self.error:
            lines.append(f"could not audit: {self.error}")
        shown = 0
        for p in self.partitions:
            if p.error:
                lines.append(f"  {p.topic}/{p.partition}: could not audit: {p.error}")
            for f in p.findings:
                if shown < max_findings:
                    lines.append(f"  {p.topic}/{p.partition} {f.describe()}")
                shown += 1
        if shown > max_findings:
            lines.append(f"  ... and {shown - max_findings} more (see the manifest)")
        if self.manifest_key:
            lines.append(
                f"  manifest {self.manifest_key} (sha256 {self.manifest_sha256}): "
                + ", ".join(f"{s} {o}" for s, o in sorted(self.manifest_written.items()))
            )
        verdict = {
            "clean": "CLEAN: every offset accounted for",
            "findings": f"FINDINGS: {self.findings} range(s) not accounted for",
            "unchecked": "COULD NOT AUDIT everything (see above)",
        }[self.status]
        lines.append(f"result: {verdict} (exit {self.exit_code})")
        return "\n".join(lines)


def audited_settings(ctx: OpsContext, stores: list[str]) -> dict[str, Any]:
    """What identifies the data audited; no secret, no endpoint."""
    s = ctx.settings
    out: dict[str, Any] = {
        "topics": s.topics,
        "dead_letter_topic": s.dead_letter_topic,
        "group_id": s.group_id,
        "stores": stores,
    }
    if "s3" in stores:
        out["s3"] = {"bucket": s.s3_bucket, "prefix": s.s3_prefix}
    if "azure" in stores:
        out["azure"] = {"container": s.azure_container, "prefix": s.azure_prefix}
    return out


def run_audit(
    ctx: OpsContext, options: AuditOptions, progress: Progress | None = None
) -> AuditReport:
    """The report; a failure of Kafka or a store makes it 'unchecked', never raises
    (except BadArgument for a filter naming nothing). `progress` counts the partitions."""
    t0 = time.monotonic()
    retired = sorted(retired_stores(list(ctx.stores.values())))
    stores = [s for s in ctx.stores if s not in retired]
    report = AuditReport(
        stores=stores,
        options=options,
        settings=audited_settings(ctx, stores),
        started_at=utc_now(),
        retired=retired,
    )
    concurrency = max(1, options.concurrency)
    budget = ctx.settings.audit_max_memory_bytes
    try:
        tps = ctx.targets(options.topics, options.partitions)
        dead_tps = _dead_letter_partitions(ctx)
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            listed = dict(zip(tps, pool.map(lambda tp: _list(ctx, stores, tp), tps), strict=True))
        # Both topics' ends in one read (finding each real end waits for a quiet moment once).
        ends = ctx.kafka.ends([*tps, *dead_tps])
        dead, held = read_dead_letters(ctx, dead_tps, ends, set(tps), report, budget // 2)
        ranges = _ranges(ctx, tps, listed, options, ends)
        # The partitions audited at once share what the dead-letter index leaves.
        share = (budget - held) // concurrency

        if progress is not None:
            progress.start(len(tps))

        def one(tp: TP) -> PartitionAccount:
            account = _audit_one(ctx, tp, ranges[tp], listed[tp], dead.get(tp, {}), share, report)
            if progress is not None:
                progress.advance()
            return account

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            report.partitions = list(pool.map(one, tps))
    except (KafkaUnavailable, DeadLettersTooMany) as exc:
        report.error = str(exc)
    report.elapsed_s = time.monotonic() - t0
    report.finished_at = utc_now()
    if options.write_manifest and report.error is None:
        write_manifest(ctx, report)
    return report


def _list(
    ctx: OpsContext, stores: list[str], tp: TP
) -> dict[str, list[tuple[str, int]]] | StoreError:
    try:
        return {s: [(o.key, o.size) for o in ctx.list_partition(s, tp)] for s in stores}
    except StoreError as exc:
        return exc


def _ranges(
    ctx: OpsContext,
    tps: list[TP],
    listed: dict[TP, dict[str, list[tuple[str, int]]] | StoreError],
    options: AuditOptions,
    ends: dict[TP, int],
) -> dict[TP, tuple[int, int, int, int]]:
    """(lo, hi, low, end) per partition: the audited offsets [lo, hi), the first retained
    offset and the real end of the partition (`ends`: read after the stores were listed)."""
    out: dict[TP, tuple[int, int, int, int]] = {}
    for tp in tps:
        low, end = ctx.kafka.low(tp), ends[tp]
        firsts: list[int] = []
        lasts: list[int] = []
        got = listed[tp]
        if not isinstance(got, StoreError):
            for keys in got.values():
                refs, _ = parse_objects(tp, keys, 0, 1 << 62, "")
                firsts.extend(r.first for r in refs)
                lasts.extend(r.last for r in refs)
        # By default: from the first offset any store holds or the broker retains, to the
        # end of the partition or the last offset a store holds (which is then unexpected).
        lo = min([low, *firsts])
        hi = max([end, *(x + 1 for x in lasts)])
        if options.since_ms is not None:
            lo = ctx.kafka.offset_for_time(tp, options.since_ms, end)
        if options.until_ms is not None:
            hi = ctx.kafka.offset_for_time(tp, options.until_ms, end)
        if options.from_offset is not None:
            lo = (
                max(lo, options.from_offset)
                if options.since_ms is not None
                else options.from_offset
            )
        if options.to_offset is not None:
            # never past the default end: an offset the partition has not reached yet and
            # no store holds is no `no_record` (it may hold a record tomorrow)
            hi = min(hi, options.to_offset + 1)
        out[tp] = (lo, max(lo, hi), low, end)
    return out


def _dead_letter_partitions(ctx: OpsContext) -> list[TP]:
    topic = ctx.settings.dead_letter_topic
    try:
        return [(topic, p) for p in ctx.kafka.partitions(topic)]
    except KafkaUnavailable as exc:
        if "not found" in str(exc):
            return []  # no dead-letter topic: no dead letter
        raise


class DeadLettersTooMany(ReplicatorError):
    """The dead letters of the audited partitions need more memory than the bound allows."""


def read_dead_letters(
    ctx: OpsContext,
    tps: list[TP],
    ends: dict[TP, int],
    wanted: set[TP],
    report: AuditReport,
    limit: int,
) -> tuple[dict[TP, dict[int, DeadLetter]], int]:
    """The dead-letter topic's partitions `tps` read once up to `ends`, indexed by origin
    (only origins in `wanted`), and the index's bytes; counts in `report.dead_letters`.
    DeadLettersTooMany past `limit` bytes (DEAD_LETTER_ENTRY_BYTES and the reason string
    per dead-lettered offset): fewer partitions at a time, or more memory."""
    counts = {"records": 0, "indexed": 0, "without_origin": 0, "other_partitions": 0}
    report.dead_letters = counts
    out: dict[TP, dict[int, DeadLetter]] = {}
    held = 0
    starts = {tp: ctx.kafka.low(tp) for tp in tps}
    todo = {tp: ends[tp] for tp in tps if ends[tp] > starts[tp]}
    for msg in _consume(ctx, todo, starts, ctx.settings.audit_max_memory_bytes):
        counts["records"] += 1
        found = dead_letter_origin(msg[4], msg[2], msg[3])
        if found is None:
            counts["without_origin"] += 1
            continue
        origin, offset, entry = found
        if origin not in wanted:
            counts["other_partitions"] += 1
            continue
        counts["indexed"] += 1
        held += add_dead_letter(out.setdefault(origin, {}), offset, entry)
        if held > limit:
            raise DeadLettersTooMany(
                f"the dead-letter topic names more offsets of the audited partitions than "
                f"half of audit_max_memory_bytes ({limit * 2}) can index (about "
                f"{DEAD_LETTER_ENTRY_BYTES} bytes each): audit fewer partitions at a time "
                "(--topic, --partition) or raise the setting"
            )
    return out, held


Msg = tuple[TP, int, bytes | None, bytes | None, Any, int]  # tp, offset, key, value, headers, ts


def _passed(consumer: Consumer, left: dict[TP, int], quiet_since: float) -> None:
    """After a silence: drop from `left` the partitions whose position has passed their
    stop (the offsets left hold no record); KafkaUnavailable after _STALL_S of silence."""
    positions = consumer.position([TopicPartition(t, p) for t, p in left])
    for tpo in positions:
        tp = (tpo.topic, tpo.partition)
        if tp in left and tpo.offset >= left[tp]:
            del left[tp]
    if left and time.monotonic() - quiet_since >= _STALL_S:
        where = ", ".join(f"{t}/{p} below offset {o}" for (t, p), o in sorted(left.items()))
        raise KafkaUnavailable(f"kafka: no record for {_STALL_S:.0f} s from {where}")


def _consume(
    ctx: OpsContext, stops: dict[TP, int], starts: dict[TP, int], memory: int
) -> Iterator[Msg]:
    """The records of each partition from `starts[tp]` until offset `stops[tp]` (exclusive)
    is reached (see _STALL_S)."""
    if not stops:
        return
    consumer = _consumer(ctx, memory)
    try:
        consumer.assign([TopicPartition(t, p, starts[(t, p)]) for t, p in stops])
        left = {tp: stop for tp, stop in stops.items() if stop > starts[tp]}
        quiet_since = time.monotonic()
        while left:
            try:
                batch = consumer.consume(num_messages=2000, timeout=0.1)
            except KafkaException as exc:
                raise KafkaUnavailable(f"kafka: read failed: {exc}") from None
            if not batch:
                if time.monotonic() - quiet_since >= _IDLE_S:
                    _passed(consumer, left, quiet_since)
                continue
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF and err.fatal():
                        raise KafkaUnavailable(f"kafka: read failed: {err}")
                    continue
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                assert topic is not None and partition is not None and offset is not None
                tp = (topic, partition)
                stop = left.get(tp)
                if stop is None or offset >= stop:
                    continue
                yield tp, offset, msg.key(), msg.value(), msg.headers(), msg.timestamp()[1]
                if offset + 1 >= stop:
                    del left[tp]
            # counted from here: the time the caller spent on these records is no silence
            # of the broker's
            quiet_since = time.monotonic()
    finally:
        consumer.close()


def _consumer(ctx: OpsContext, memory: int) -> Consumer:
    """A consumer that only `assign`s: no group joined, nothing committed. Its queue takes
    an eighth of `memory` (librdkafka may exceed it by one fetch, 1 MiB a partition)."""
    return Consumer(
        {
            **ctx.settings.kafka_common(),
            "group.id": f"{ctx.settings.group_id}.audit",  # never joined, never committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            # Kafka answers a fetch as soon as it has records, whatever this wait; a
            # short one made the local broker (Tansu) answer nothing at all from a deep
            # partition (seen at 400,000 records a partition): its default, then.
            "fetch.wait.max.ms": 500,
            "fetch.queue.backoff.ms": _FETCH_QUEUE_BACKOFF_MS,
            "queued.max.messages.kbytes": max(1024, memory // 8 // 1024),
            "client.id": ctx.settings.client_id("replicator-audit"),
        }
    )


def _source(
    ctx: OpsContext,
    tp: TP,
    start: int,
    stop: int,
    memory: int,
    redriven: Callable[[int], None] | None = None,
) -> Iterator[SourceBatch]:
    """The records of one partition from `start` until offset `stop` (exclusive) is reached
    (see _STALL_S), as columns; `redriven(offset)` is called for each record that carries
    the headers of a re-driven dead letter (`redrive_logic.redriven_origin`). Each
    consume() call's records become four lists in C-level loops (`map` over the Message
    methods), never one Python object per record."""
    if start >= stop:
        return
    consumer = _consumer(ctx, memory)
    try:
        consumer.assign([TopicPartition(tp[0], tp[1], start)])
        left = {tp: stop}
        quiet_since = time.monotonic()
        while left:
            try:
                batch = consumer.consume(num_messages=_BATCH, timeout=0.1)
            except KafkaException as exc:
                raise KafkaUnavailable(f"kafka: read failed: {exc}") from None
            if not batch:
                if time.monotonic() - quiet_since >= _IDLE_S:
                    _passed(consumer, left, quiet_since)
                continue
            if any(map(Message.error, batch)):
                kept: list[Message] = []
                for msg in batch:
                    err = msg.error()
                    if err is None:
                        kept.append(msg)
                    elif err.code() != KafkaError._PARTITION_EOF and err.fatal():
                        raise KafkaUnavailable(f"kafka: read failed: {err}")
                batch = kept
            # a record's offset is never None (only an error's is)
            offsets = cast(list[int], list(map(Message.offset, batch)))
            # one partition's records come in offset order: cut at `stop`
            k = bisect.bisect_left(offsets, stop)
            cut = k < len(offsets)
            if cut:
                batch, offsets = batch[:k], offsets[:k]
            if redriven is not None:
                for offset, headers in zip(offsets, map(Message.headers, batch), strict=True):
                    if headers and redriven_origin(headers) is not None:
                        redriven(offset)
            if batch:
                yield SourceBatch(
                    offsets,
                    [t[1] for t in map(Message.timestamp, batch)],
                    list(map(Message.key, batch)),
                    list(map(Message.value, batch)),
                    cast(list[RecordHeaders | None], list(map(Message.headers, batch))),
                )
            if cut or (offsets and offsets[-1] + 1 >= stop):
                return
            # counted from here: the time the caller spent comparing (store reads, a slow
            # machine) is no silence of the broker's
            quiet_since = time.monotonic()
    finally:
        consumer.close()


def _audit_one(
    ctx: OpsContext,
    tp: TP,
    bounds: tuple[int, int, int, int],
    listed: dict[str, list[tuple[str, int]]] | StoreError,
    dead: dict[int, DeadLetter],
    share: int,
    report: AuditReport,
) -> PartitionAccount:
    lo, hi, low, end = bounds
    if isinstance(listed, StoreError):
        return PartitionAccount(tp[0], tp[1], lo, hi, low, error=str(listed))
    objects: dict[str, list[ObjectRef]] = {}
    for store, keys in listed.items():
        refs, foreign = parse_objects(tp, keys, lo, hi, store)
        objects[store] = refs
        if foreign:
            report.foreign.setdefault(store, []).extend(foreign)
    # Read from the first offset an audited object holds (it may start before lo) to the
    # last (it may end after hi), within what Kafka holds.
    start = max(low, min([lo, *(r.first for refs in objects.values() for r in refs)]))
    stop = min(end, max([hi, *(r.last + 1 for refs in objects.values() for r in refs)]))
    # the re-driven records read (not those dead-lettered again), as runs of offsets; those
    # of them that are stored are counted once the findings are known
    redriven: list[list[int]] = []

    def count(offset: int) -> None:
        if lo <= offset < hi and offset not in dead:
            add_to_runs(redriven, offset)

    try:
        account = audit_partition(
            tp,
            lo,
            hi,
            low,
            objects,
            _source(ctx, tp, start, stop, share, count),
            dead,
            ctx.read,
            max_window_bytes=share // 2,
        )
        account.redriven = stored_in_runs(redriven, account.findings)
        return account
    except (StoreError, KafkaUnavailable, WindowTooLarge, ReplicatorError) as exc:
        return PartitionAccount(tp[0], tp[1], lo, hi, low, error=str(exc))


def manifest_key(data: bytes) -> str:
    return f"{AUDIT_PREFIX}manifest-{hashlib.sha256(data).hexdigest()}.jsonl"


def write_manifest(ctx: OpsContext, report: AuditReport) -> None:
    """Create the manifest in every audited store (create-if-absent: the same audit twice
    finds it already there)."""
    data = report.manifest()
    report.manifest_key = manifest_key(data)
    report.manifest_sha256 = hashlib.sha256(data).hexdigest()
    md5 = hashlib.md5(data).digest()
    for store in report.stores:
        try:
            outcome = ctx.stores[store].create_if_absent(
                report.manifest_key, data, md5, {"format": MANIFEST_FORMAT}
            )
            report.manifest_written[store] = outcome.value
        except StoreError as exc:
            report.manifest_written[store] = f"failed: {exc}"
            report.error = report.error or f"manifest not written to {store}: {exc}"
