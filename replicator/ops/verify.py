"""`replicator verify`: prove, at a moment, that both stores hold the same data (P1-P3, P8).

For every selected partition, concurrently (a thread pool, one task per partition): list each
store's objects under the partition's prefix (paginated by the store), read each store's
committed offset (its group `<group_id>.<store>`) and Kafka's first retained offset, then
apply `findings.check_partition`. Then, for every object that differs between the
stores, read it from each store and compare it record by record with what Kafka holds
(`findings.compare_records`), so the report names the offsets concerned and which store
holds the right object.

An object whose copies differ only by format (one store holds the chunk as the previous
version wrote it, format 2 without the record headers, the other as this version writes
it, with the same records: `container.same_chunk`) is no finding: the key is listed under
the partition's `format_switch` instead. Records are compared by timestamp, key and event,
and by headers where both sides keep them (format 3 objects and Kafka).

Time filters (`since`, `until`) become offsets with `KafkaView.offset_for_time`; objects that
end below a time filter's start are neither checked nor compared. Without a filter,
coverage is checked from the first retained offset, and objects below it (history Kafka no
longer holds) are still compared across stores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from replicator.container import read_container, same_chunk
from replicator.errors import ReplicatorError, StoreError
from replicator.kafka.view import KafkaUnavailable
from replicator.model import TP
from replicator.ops.context import OpsContext, Progress
from replicator.ops.findings import (
    DecodedObject,
    Finding,
    FindingKind,
    PartitionCheck,
    PartitionReport,
    StoreListing,
    VerifyReport,
    check_partition,
    compare_records,
    decode_object,
    utc_now,
)
from replicator.stores.retirement import retired_stores

log = logging.getLogger("replicator.verify")


@dataclass
class VerifyOptions:
    topics: list[str] | None = None
    partitions: list[int] | None = None
    since_ms: int | None = None  # record time, milliseconds since the epoch (UTC)
    until_ms: int | None = None
    concurrency: int = 8
    deep: bool = True  # record-level comparison of the objects that differ
    deep_limit: int = 1000  # ... of at most this many objects per run (each reads Kafka)

    def filters(self) -> dict[str, object]:
        return {
            "topics": self.topics,
            "partitions": self.partitions,
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
        }


def run_verify(
    ctx: OpsContext, options: VerifyOptions, progress: Progress | None = None
) -> VerifyReport:
    """The report; never raises for a store or Kafka failure (they make it 'unchecked'),
    only BadArgument for a filter naming nothing."""
    report = VerifyReport(
        stores=list(ctx.stores),
        group_id=ctx.settings.group_id,
        filters=options.filters(),
        started_at=utc_now(),
    )
    try:
        tps = ctx.targets(options.topics, options.partitions)
        # Committed offsets before the listings: a store only commits what it holds, so
        # everything below these offsets is listed even while the service keeps writing.
        committed = ctx.committed(tps)
        checks = _checks(ctx, tps, options)
    except KafkaUnavailable as exc:
        report.error = str(exc)
        report.finished_at = utc_now()
        return report
    if progress is not None:
        progress.start(len(tps))
    report.retired = sorted(retired_stores(list(ctx.stores.values())))

    def one(tp: TP) -> PartitionReport:
        try:
            return _check_one(ctx, checks[tp], committed, progress)
        finally:
            if progress is not None:
                progress.advance()

    with ThreadPoolExecutor(max_workers=max(1, options.concurrency)) as pool:
        report.partitions = list(pool.map(one, tps))
    for part in report.partitions:
        settle_format_switch(ctx, part)
    if options.deep:
        compared = 0
        for part in report.partitions:
            for finding in part.findings:
                if finding.kind is not FindingKind.DIFFERS:
                    continue
                if compared >= options.deep_limit:
                    finding.detail = "record-level comparison skipped: over the limit of this run"
                    continue
                deep_compare(ctx, finding, part.low_watermark)
                compared += 1
    report.finished_at = utc_now()
    return report


def settle_format_switch(ctx: OpsContext, part: PartitionReport) -> None:
    """Drop the `differs` findings whose copies are one chunk in two formats (the previous
    version's copy in one store, this version's in another: `container.same_chunk`); their
    keys go to `part.format_switch`. A copy that cannot be read leaves the finding."""
    kept: list[Finding] = []
    for finding in part.findings:
        if finding.kind is FindingKind.DIFFERS and finding.key is not None:
            copies = read_objects_bytes(ctx, finding.key, finding.sources)
            if len(copies) == len(finding.sources) and _one_chunk(list(copies.values())):
                part.format_switch.append(finding.key)
                continue
        kept.append(finding)
    part.findings = kept
    if part.status == "diverged" and not kept:
        part.status = "aligned"


def _one_chunk(copies: list[bytes]) -> bool:
    """Whether these copies of one key are one chunk: every copy of an earlier format holds
    what the newest-format copy holds, and the newest-format copies are equal bytes."""
    formats: list[str] = []
    for data in copies:
        try:
            formats.append(read_container(data).format)
        except ValueError:
            return False
    newest = max(formats)
    reference = [d for d, f in zip(copies, formats, strict=True) if f == newest]
    if any(d != reference[0] for d in reference):
        return False
    return all(
        same_chunk(d, reference[0]) for d, f in zip(copies, formats, strict=True) if f != newest
    )


def read_objects_bytes(ctx: OpsContext, key: str, stores: list[str]) -> dict[str, bytes]:
    """Each store's object at `key`; a store that cannot read it is left out."""
    out: dict[str, bytes] = {}
    for store in stores:
        try:
            out[store] = ctx.read(store, key)
        except StoreError as exc:
            log.warning("read_failed", extra={"replicator_fields": {"error": str(exc)}})
    return out


def _checks(ctx: OpsContext, tps: list[TP], options: VerifyOptions) -> dict[TP, PartitionCheck]:
    filtered = options.since_ms is not None or options.until_ms is not None
    ends = ctx.kafka.ends(tps) if filtered else {}
    out: dict[TP, PartitionCheck] = {}
    for tp in tps:
        low = ctx.kafka.low(tp)
        start = low
        until: int | None = None
        if options.since_ms is not None:
            start = max(low, ctx.kafka.offset_for_time(tp, options.since_ms, ends[tp]))
        if options.until_ms is not None:
            until = ctx.kafka.offset_for_time(tp, options.until_ms, ends[tp])
        out[tp] = PartitionCheck(
            topic=tp[0],
            partition=tp[1],
            start=start,
            until=until,
            compare_from=start if filtered else 0,
            low_watermark=low,
            retention_check=options.since_ms is None,
        )
    return out


def _check_one(
    ctx: OpsContext,
    check: PartitionCheck,
    committed: dict[str, dict[TP, int | None]],
    progress: Progress | None,
) -> PartitionReport:
    tp = (check.topic, check.partition)
    filtered = check.compare_from > 0 or check.until is not None
    count: Callable[[int], None] | None = (
        partial(progress.count, "objects listed") if progress is not None else None
    )
    listings: dict[str, StoreListing] = {}
    try:
        for store in ctx.stores:
            objects = ctx.list_partition(
                store,
                tp,
                first=check.start if filtered else None,
                last=check.until if check.until is not None else None,
                count=count,
            )
            listings[store] = StoreListing(committed[store].get(tp), objects)
    except StoreError as exc:
        return PartitionReport(
            topic=tp[0],
            partition=tp[1],
            status="unchecked",
            start=check.start,
            until=check.until,
            low_watermark=check.low_watermark,
            committed={s: committed[s].get(tp) for s in ctx.stores},
            error=str(exc),
        )
    return check_partition(check, listings)


def read_objects(
    ctx: OpsContext, key: str, stores: list[str]
) -> dict[str, tuple[bytes, DecodedObject]]:
    """Each store's object at `key` (bytes and records); a store that cannot read it is
    left out."""
    out: dict[str, tuple[bytes, DecodedObject]] = {}
    for store in stores:
        try:
            data = ctx.read(store, key)
        except StoreError as exc:
            log.warning("read_failed", extra={"replicator_fields": {"error": str(exc)}})
            continue
        out[store] = (data, decode_object(key, data))
    return out


def deep_compare(ctx: OpsContext, finding: Finding, low_watermark: int) -> None:
    """Fill `finding.records`: each holder's object against Kafka's records (or, below the
    first retained offset, against the other holder's object)."""
    assert finding.key is not None
    tp = (finding.topic, finding.partition)
    objects = read_objects(ctx, finding.key, finding.sources)
    expected = None
    if finding.first >= low_watermark:
        try:
            expected = ctx.kafka_prints(tp, finding.first, finding.last)
        except (KafkaUnavailable, ReplicatorError) as exc:
            finding.detail = (finding.detail + "; " if finding.detail else "") + str(exc)
    finding.records = compare_records(
        finding.first, finding.last, expected, {s: obj for s, (_, obj) in objects.items()}
    )
    unreadable = [s for s in finding.sources if s not in objects]
    if unreadable:
        finding.detail = (finding.detail + "; " if finding.detail else "") + (
            f"could not read it from {', '.join(unreadable)}"
        )
