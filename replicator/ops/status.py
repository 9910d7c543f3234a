"""`replicator status`: where each store stands, per partition, from durable facts only.

It reads Kafka and the stores directly (never the service), so it answers while the service
is down, stuck or was never started:

- a partition's first retained offset and its end (last offset + 1: the high watermark,
  corrected by a read from there, `KafkaView.ends`);
- each store's committed offset (its group `<group_id>.<store>`);
- lag in records: end - committed; lag in seconds: now - timestamp of the first record at or
  after the committed offset, measured by the lag monitor of the service itself
  (`telemetry.lag.LagMonitor.check`), so both agree; 0 when the store holds every record;
- the last object written: the key with the highest last offset under the partition's
  prefix, listed from a little before the committed offset (`OpsContext.list_partition`), so
  a listing stays short however many objects the partition has;
- the catch-up state, derived (see `catch_up_state`): what the service is doing in memory is
  not durable, but how far a store's durable progress lies behind the end is;
- dead letters by reason: the `dlq.reason` header of the last `limit` records of each
  partition of the dead-letter topic (a window; the report says which offsets and times it
  covers). A record resent after a lost acknowledgement is counted once (by its origin).

`build_status` is the pure part: plain values in, the report out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaException

from replicator.errors import StoreError
from replicator.kafka.deadletter import H_OFFSET, H_PARTITION, H_REASON, H_TOPIC
from replicator.kafka.view import KafkaUnavailable
from replicator.keys import parse_key
from replicator.model import TP
from replicator.ops.context import OpsContext, Progress
from replicator.stores.retirement import retired_stores
from replicator.telemetry.lag import LagMonitor
from replicator.telemetry.metrics import Metrics

# Catch-up states, from the worst to the best (a store's state is its worst partition's).
BEHIND_RETENTION = "behind_retention"  # committed below the first retained offset
NO_PROGRESS = "no_progress"  # nothing committed while the partition holds records
BEHIND = "behind"  # further behind the end than the live stream ever is
LIVE = "live"  # at the end, or within what the live stream holds open
RETIRED = "retired"  # a cutover retired the store: it is no longer written
STATES = (BEHIND_RETENTION, NO_PROGRESS, BEHIND, LIVE, RETIRED)

EXIT_OK = 0
EXIT_UNAVAILABLE = 3

DEFAULT_DEAD_LETTER_WINDOW = 10_000


@dataclass(frozen=True)
class Thresholds:
    """How far behind the end a store may be and still count as live: the live stream
    holds up to a chunk open per partition (cut by count, bytes or `flush_interval_s`) and
    a chunk in flight, and commits every `commit_interval_s`."""

    live_records: int
    live_seconds: float

    @classmethod
    def from_settings(cls, chunk_max_records: int, flush_interval_s: float) -> Thresholds:
        return cls(live_records=2 * chunk_max_records, live_seconds=2 * flush_interval_s + 30.0)


@dataclass(frozen=True)
class PartitionFacts:
    topic: str
    partition: int
    low: int  # first retained offset
    end: int  # last offset + 1

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)


@dataclass(frozen=True)
class StoreFacts:
    """What was read for one store and one partition."""

    committed: int | None  # next offset to write; None: nothing committed
    oldest_timestamp_s: float | None  # the first record at or after it; None: there is none
    last_key: str | None  # the key with the highest last offset; None: no object (or unread)


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic, as far as status needs it."""

    partition: int
    offset: int
    timestamp_ms: int
    headers: Mapping[str, str]


@dataclass
class DeadLetterWindow:
    topic: str
    window: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition: [from, end)
    records: int = 0
    distinct: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    by_origin_topic: dict[str, int] = field(default_factory=dict)
    first_time: str | None = None
    last_time: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "window": {str(p): {"from": a, "end": b} for p, (a, b) in sorted(self.window.items())},
            "records": self.records,
            "distinct": self.distinct,
            "by_reason": dict(sorted(self.by_reason.items())),
            "by_origin_topic": dict(sorted(self.by_origin_topic.items())),
            "first_time": self.first_time,
            "last_time": self.last_time,
            "error": self.error,
        }


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def tally_dead_letters(
    topic: str, window: Mapping[int, tuple[int, int]], records: Iterable[DeadLetter]
) -> DeadLetterWindow:
    """Counts by `dlq.reason` (and by origin topic) of the records read from the window. A
    record resent by the at-least-once dead-letter producer (same origin topic, partition,
    offset and reason) counts once in `distinct` and the tallies; `records` counts them all.
    A record without a reason header counts under "(none)"."""
    out = DeadLetterWindow(topic=topic, window=dict(window))
    seen: set[tuple[str, str, str, str]] = set()
    first: int | None = None
    last: int | None = None
    for rec in records:
        out.records += 1
        if rec.timestamp_ms > 0:
            first = rec.timestamp_ms if first is None else min(first, rec.timestamp_ms)
            last = rec.timestamp_ms if last is None else max(last, rec.timestamp_ms)
        reason = rec.headers.get(H_REASON) or "(none)"
        origin_topic = rec.headers.get(H_TOPIC)
        if origin_topic is not None:
            origin = (
                origin_topic,
                rec.headers.get(H_PARTITION, ""),
                rec.headers.get(H_OFFSET, ""),
                reason,
            )
            if origin in seen:
                continue
            seen.add(origin)
        out.distinct += 1
        out.by_reason[reason] = out.by_reason.get(reason, 0) + 1
        key = origin_topic or "(unknown)"
        out.by_origin_topic[key] = out.by_origin_topic.get(key, 0) + 1
    out.first_time = iso_ms(first) if first is not None else None
    out.last_time = iso_ms(last) if last is not None else None
    return out


def catch_up_state(
    committed: int | None,
    low: int,
    end: int,
    lag_seconds: float,
    retired: bool,
    thresholds: Thresholds,
) -> str:
    """The catch-up state of one store on one partition, from durable facts:

    - retired: a cutover record retires the store (the service no longer writes it);
    - no_progress: nothing committed while the partition holds records (never started, or
      its group was deleted);
    - behind_retention: committed below the first retained offset: records the store never
      got are gone from Kafka (`replicator verify` says which);
    - live: at the end, or less than `live_records` behind and its oldest missing record
      younger than `live_seconds` (what the live stream holds open);
    - behind: anything further (a store catching up, or a service that stopped)."""
    if retired:
        return RETIRED
    if committed is None:
        return LIVE if end <= low else NO_PROGRESS
    if committed < low:
        return BEHIND_RETENTION
    lag = max(end - committed, 0)
    if lag == 0 or (lag <= thresholds.live_records and lag_seconds <= thresholds.live_seconds):
        return LIVE
    return BEHIND


def worst(states: Iterable[str]) -> str:
    found = set(states)
    return next((s for s in STATES if s in found), LIVE)


@dataclass
class StatusReport:
    at: str
    group_id: str
    stores: list[str]
    thresholds: Thresholds
    partitions: list[dict[str, Any]] = field(default_factory=list)
    store_summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead_letters: DeadLetterWindow | None = None
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_UNAVAILABLE if self.error is not None else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "replicator-status",
            "version": 1,
            "at": self.at,
            "group_id": self.group_id,
            "error": self.error,
            "thresholds": {
                "live_records": self.thresholds.live_records,
                "live_seconds": self.thresholds.live_seconds,
            },
            "stores": self.store_summary,
            "partitions": self.partitions,
            "dead_letters": self.dead_letters.to_json() if self.dead_letters else None,
        }

    def render(self) -> str:
        """The human view: one line per store, one per store and partition, dead letters."""
        lines = [f"status at {self.at}, group {self.group_id}"]
        if self.error is not None:
            lines.append(f"ERROR: {self.error}")
            return "\n".join(lines)
        rows: list[tuple[str, ...]] = [("store", "state", "lag records", "max lag s", "")]
        for name, s in self.store_summary.items():
            rows.append(
                (
                    name,
                    s["state"],
                    f"{s['lag_records']:,}",
                    f"{s['max_lag_seconds']:.1f}",
                    f"error: {s['error']}" if s["error"] else "",
                )
            )
        lines += _table(rows)
        lines.append("")
        rows = [  # a new table
            ("partition", "store", "committed", "end", "lag rec", "lag s", "state", "last object")
        ]
        for p in self.partitions:
            for name, s in p["stores"].items():
                committed = "-" if s["committed"] is None else f"{s['committed']:,}"
                rows.append(
                    (
                        f"{p['topic']}/{p['partition']}",
                        name,
                        committed,
                        f"{p['end_offset']:,}",
                        f"{s['lag_records']:,}",
                        f"{s['lag_seconds']:.1f}",
                        s["state"],
                        s["last_object"] or "-",
                    )
                )
        lines += _table(rows)
        dead = self.dead_letters
        if dead is not None:
            lines.append("")
            span = ", ".join(
                f"{p}:{a}-{b - 1}" for p, (a, b) in sorted(dead.window.items()) if b > a
            )
            if dead.error is not None:
                lines.append(f"dead letters ({dead.topic}): ERROR: {dead.error}")
            else:
                times = (
                    f", {dead.first_time} to {dead.last_time}"
                    if dead.first_time is not None
                    else ""
                )
                lines.append(
                    f"dead letters in {dead.topic}, last records (partition:offsets "
                    f"{span or 'none'}{times}): {dead.distinct:,} distinct"
                    + (f" ({dead.records:,} with resends)" if dead.records != dead.distinct else "")
                )
                lines += [f"  {reason:<24} {n:>9,}" for reason, n in sorted(dead.by_reason.items())]
        return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def build_status(
    at: str,
    group_id: str,
    stores: list[str],
    partitions: list[PartitionFacts],
    facts: Mapping[str, Mapping[TP, StoreFacts]],
    retired: set[str],
    store_errors: Mapping[str, str],
    dead_letters: DeadLetterWindow | None,
    thresholds: Thresholds,
    now: float,
) -> StatusReport:
    """The report from plain values (`now`: Unix time the lag in seconds is measured at)."""
    report = StatusReport(at, group_id, list(stores), thresholds, dead_letters=dead_letters)
    states: dict[str, list[str]] = {s: [] for s in stores}
    totals = dict.fromkeys(stores, 0)
    max_seconds = dict.fromkeys(stores, 0.0)
    for part in partitions:
        per_store: dict[str, Any] = {}
        for store in stores:
            f = facts.get(store, {}).get(part.tp, StoreFacts(None, None, None))
            position = max(f.committed if f.committed is not None else part.low, part.low)
            lag_records = max(part.end - position, 0)
            seconds = (
                round(max(now - f.oldest_timestamp_s, 0.0), 3)
                if f.oldest_timestamp_s is not None
                else 0.0
            )
            state = catch_up_state(
                f.committed, part.low, part.end, seconds, store in retired, thresholds
            )
            last = parse_key(f.last_key) if f.last_key is not None else None
            per_store[store] = {
                "committed": f.committed,
                "lag_records": lag_records,
                "lag_seconds": seconds,
                "state": state,
                "last_object": f.last_key,
                "last_object_offset": last.last if last is not None else None,
                # an object past the committed offset: written, its commit still to come
                "uncommitted_object": last is not None
                and (f.committed is None or last.last >= f.committed),
            }
            states[store].append(state)
            totals[store] += lag_records
            max_seconds[store] = max(max_seconds[store], seconds)
        report.partitions.append(
            {
                "topic": part.topic,
                "partition": part.partition,
                "low_watermark": part.low,
                "end_offset": part.end,
                "stores": per_store,
            }
        )
    for store in stores:
        report.store_summary[store] = {
            "state": RETIRED if store in retired else worst(states[store]),
            "retired": store in retired,
            "lag_records": totals[store],
            "max_lag_seconds": max_seconds[store],
            "error": store_errors.get(store),
        }
    return report


# ---------------------------------------------------------------------- reading (I/O)
def collect_status(
    ctx: OpsContext,
    topics: list[str] | None = None,
    partitions: list[int] | None = None,
    thresholds: Thresholds | None = None,
    dead_letter_window: int = DEFAULT_DEAD_LETTER_WINDOW,
    progress: Progress | None = None,
) -> StatusReport:
    """Read every fact from Kafka and the stores, then `build_status`. BadArgument for a
    filter naming nothing; a Kafka that cannot be read gives a report with `error` (exit 3);
    a store that cannot be listed is named in its summary."""
    s = ctx.settings
    th = thresholds or Thresholds.from_settings(s.chunk_max_records, s.flush_interval_s)
    now = time.time()  # lag in seconds is measured at the report's time (`at`)
    at = iso_ms(int(now * 1000))
    try:
        tps = ctx.targets(topics, partitions)
        committed = ctx.committed(tps)
        ends = ctx.kafka.ends(tps)
        lows = {tp: ctx.kafka.low(tp) for tp in tps}
        oldest = _oldest_timestamps(ctx)
    except KafkaUnavailable as exc:
        return StatusReport(at, s.group_id, list(ctx.stores), th, error=str(exc))
    parts = [PartitionFacts(t, p, lows[(t, p)], ends[(t, p)]) for t, p in tps]
    retired = retired_stores(list(ctx.stores.values()))
    errors: dict[str, str] = {}
    facts: dict[str, dict[TP, StoreFacts]] = {}
    for store in ctx.stores:
        facts[store] = {}
        for tp in tps:
            c = committed[store].get(tp)
            last: str | None = None
            if store not in errors:
                try:
                    last = _last_key(ctx, store, tp, c)
                except StoreError as exc:
                    errors[store] = str(exc)
            facts[store][tp] = StoreFacts(c, oldest.get(store, {}).get(tp), last)
    dead = read_dead_letters(ctx, dead_letter_window, progress) if dead_letter_window > 0 else None
    return build_status(
        at, s.group_id, list(ctx.stores), parts, facts, retired, errors, dead, th, now
    )


def _oldest_timestamps(ctx: OpsContext) -> dict[str, dict[TP, float | None]]:
    """Per store and partition, the timestamp of the first record at or after its committed
    offset (None: none), read as the service's lag monitor reads it."""
    monitor = LagMonitor(ctx.settings, Metrics())
    try:
        snapshot = monitor.check()
    except KafkaException as exc:
        raise KafkaUnavailable(f"kafka: cannot read the lag: {exc}") from None
    finally:
        monitor.close()
    return {
        store: {tp: lag.oldest_timestamp_s for tp, lag in per_store.items()}
        for store, per_store in snapshot.stores.items()
    }


def _last_key(ctx: OpsContext, store: str, tp: TP, committed: int | None) -> str | None:
    """The key with the highest last offset under the partition's prefix. The listing starts
    a little before the committed offset (the object holding committed - 1 and any written
    after it) and covers the whole partition only when nothing is committed."""
    first = committed - 1 if committed else None
    best: tuple[int, str] | None = None
    for info in ctx.list_partition(store, tp, first=first):
        key = parse_key(info.key)
        if key is not None and (best is None or key.last > best[0]):
            best = (key.last, info.key)
    return best[1] if best is not None else None


def _headers(raw: object) -> dict[str, str]:
    """A record's headers as text (a value that is not UTF-8 is left out)."""
    pairs = raw.items() if isinstance(raw, dict) else raw if isinstance(raw, list) else []
    out: dict[str, str] = {}
    for name, value in pairs:
        if isinstance(value, bytes):
            with contextlib.suppress(UnicodeDecodeError):
                out[str(name)] = value.decode()
        elif isinstance(value, str):
            out[str(name)] = value
    return out


def read_dead_letters(
    ctx: OpsContext, limit: int, progress: Progress | None = None
) -> DeadLetterWindow:
    """The last `limit` records of each partition of the dead-letter topic, tallied."""
    topic = ctx.settings.dead_letter_topic
    try:
        numbers = ctx.kafka.partitions(topic)
        tps = [(topic, p) for p in numbers]
        ends = ctx.kafka.ends(tps)
        window = {
            p: (max(ctx.kafka.low((topic, p)), ends[(topic, p)] - limit), ends[(topic, p)])
            for p in numbers
        }
    except KafkaUnavailable as exc:
        return DeadLetterWindow(topic=topic, error=str(exc))
    if progress is not None:
        progress.start(sum(b - a for a, b in window.values()))
    records: list[DeadLetter] = []
    try:
        for p, (first, end) in sorted(window.items()):
            for msg in ctx.kafka.read_range((topic, p), first, end - 1):
                offset = msg.offset()
                if offset is None:
                    continue
                records.append(
                    DeadLetter(p, offset, int(msg.timestamp()[1]), _headers(msg.headers()))
                )
                if progress is not None:
                    progress.advance()
    except KafkaUnavailable as exc:
        out = tally_dead_letters(topic, window, records)
        out.error = str(exc)
        return out
    return tally_dead_letters(topic, window, records)
