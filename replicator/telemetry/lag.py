"""Each store's lag, from its durable progress in Kafka, by a thread of its own.

The service loop knows where it stands in memory; an SRE needs to know what is *in each
store*. Every `lag_interval_s` the monitor reads, with Kafka clients of its own:

- the partitions of every replicated topic (metadata), every `OLDEST_REFRESH_INTERVALS`
  checks and after a check failed (partitions are added rarely; a new one is seen within
  that many intervals);
- the high watermark of each partition (one ListOffsets request per broker), and its low
  watermark every few checks (it moves only with retention);
- each store's committed offsets (its progress group `<group_id>.<store>`, read with
  `committed()` by a consumer that never subscribes and never commits);
- the timestamp of the oldest record not yet in each store: the first record at or after the
  store's committed offset. For a partition this replica owns, the service itself read that
  record when it opened the chunk starting there (`replicator.telemetry.firsts`): no request.
  Otherwise (another replica's partition, a dead letter or a record without a timestamp
  first, a position from before this replica's run) it is read by a consumer assigned
  there, each partition paused once it has answered (one read per new position:
  a position that does not move costs nothing; a partition whose positions move at every
  check is read again every `OLDEST_REFRESH_INTERVALS` checks, and at once when the store
  reaches the end).

and exports, for every configured store (down or not) and every partition:

    replicator_store_committed_offset   committed offset (low watermark while none)
    replicator_high_watermark_offset    per partition (no store label)
    replicator_store_lag_records        max(high watermark - committed offset, 0)
    replicator_store_lag_seconds        now - timestamp of the first record at or after the
                                        committed offset; 0 when there is no such record

Lag in records keeps standard Kafka semantics. On a broker whose high watermark lags behind
its log (the Tansu broker of the local stack reports the base offset of the last batch + 1
after a batched produce, not the last offset + 1) it reads too low,
possibly 0; lag in seconds does not depend on the watermark: it is measured from the record
itself, so it stays > 0 as long as a record at or after the committed offset exists. Alert
on lag in seconds.

A record without a timestamp (CreateTime -1) is aged from the moment the monitor first saw it
waiting. While the broker cannot be read, the last positions are kept, lag in seconds keeps
growing from the timestamps already known, and replicator_lag_check_errors_total counts the
failed checks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaTP
from confluent_kafka.admin import AdminClient

# (its defining module: the package does not re-export it for type checkers)
from confluent_kafka.admin._listoffsets import OffsetSpec

from replicator.config import Settings
from replicator.kafka.progress import ProgressLog
from replicator.logs import fields
from replicator.model import TP
from replicator.telemetry.firsts import FirstRecords
from replicator.telemetry.metrics import Metrics

log = logging.getLogger("replicator.lag")

LATEST: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
EARLIEST: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]

# A record's timestamp type when the producer set none (librdkafka's TIMESTAMP_NOT_AVAILABLE).
_NO_TIMESTAMP = 0

# A partition whose store positions move at every check (a store catching up) has its oldest
# record read again every this many checks, not at each: each read is a fetch at a position
# the broker must look up (on the local broker about 15 ms of its CPU per partition, a
# check of 12 partitions and two stores at different positions 0.2 to 0.4 s). In between,
# lag in seconds keeps the age of the record read last, which the store has since passed.
OLDEST_REFRESH_INTERVALS = 6

# The reader of oldest records wants one record per partition, not a prefetch. By default
# librdkafka keeps fetching an assigned partition until 100,000 records or the queue's
# kilobytes are waiting, and asks for up to max.partition.fetch.bytes at a time: each check
# of a store that moves (every check, while it catches up) made the broker read and send a
# megabyte or more per partition for one timestamp. With these, a partition is fetched once
# (queued.min.messages: one record waiting is enough) and the broker sends the first record
# batch at the position and no more (a batch larger than max.partition.fetch.bytes is still
# returned whole, so the first record always arrives).
#
# Those thresholds hold for the reader's one queue, which every partition of a round feeds:
# once one partition's batch waits there (a producer's batch is commonly hundreds of KB),
# every other partition is "queue full" and its fetch postponed by fetch.queue.backoff.ms,
# 1 s by default. A round then answered one partition a second, and a check of more than
# about 10 such partitions ended at its timeout with the rest unknown (lag in seconds then
# 0, or stale). Measured on the local broker: 12 partitions answered at 1, 2, ... 12 s; with
# 10 ms, all 12 within 0.2 s, with the same 12 fetches. The reader drains its queue at every
# turn, so the short backoff adds no fetch.
OLDEST_READER_FETCH: dict[str, int] = {
    "fetch.wait.max.ms": 100,
    "max.partition.fetch.bytes": 1024,
    "queued.min.messages": 1,
    "queued.max.messages.kbytes": 64,
    "fetch.queue.backoff.ms": 10,
}


class _Stopped(Exception):
    """stop() was called during a check: it ends without exporting anything."""


@dataclass(frozen=True)
class PartitionLag:
    committed: int
    high_watermark: int
    records: int
    oldest_timestamp_s: float | None  # None: the store holds every record (or unknown yet)


@dataclass
class LagSnapshot:
    """One check's result: per store, per partition."""

    at: float  # Unix time
    high_watermarks: dict[TP, int] = field(default_factory=dict)
    stores: dict[str, dict[TP, PartitionLag]] = field(default_factory=dict)

    def seconds(self, store: str, tp: TP, now: float | None = None) -> float:
        oldest = self.stores[store][tp].oldest_timestamp_s
        if oldest is None:
            return 0.0
        return max((time.time() if now is None else now) - oldest, 0.0)


class LagMonitor:
    """Reads lag from Kafka every `settings.lag_interval_s` in a daemon thread and exports it.

    `start()` / `stop()` run the thread; `check()` runs one check in the calling thread
    (tests). The Kafka clients are opened on first use and closed by `stop()` / `close()`.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        firsts: FirstRecords | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._clock = clock
        self._firsts = firsts  # the service's own answers, for the partitions it owns
        self._timeout = max(1.0, min(10.0, settings.lag_interval_s * 2))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: Consumer | None = None
        self._progress: dict[str, ProgressLog] = {}
        # (tp, offset) -> Unix time of the first record at or after that offset
        self._oldest: dict[tuple[TP, int], float] = {}
        self._first_seen: dict[tuple[TP, int], float] = {}
        self._read_at: dict[TP, float] = {}  # monotonic time of each partition's last read
        self._admin: AdminClient | None = None
        self._lows: dict[TP, int] = {}  # low watermarks, read every few checks
        self._lows_read_at: float | None = None
        self._lows_due: set[TP] = set()  # a read found the position out of range
        self._exported: set[TP] = set()
        self._tps: list[TP] | None = None  # the replicated partitions, from metadata
        self._tps_read_at = 0.0
        self._failing = False
        self.last: LagSnapshot | None = None
        self.broker_ok = False  # the last check reached the broker

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LagMonitor:
        self._thread = threading.Thread(target=self._run, name="lag-monitor", daemon=True)
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread (it closes its clients). A check in progress ends at its next
        step; the wait is bounded by `timeout` (default: one Kafka request's timeout + 5 s)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            timeout = self._timeout + 5.0 if timeout is None else timeout
            thread.join(timeout)
            if thread.is_alive():
                log.warning("lag_monitor_stop_timeout", extra=fields(timeout_s=timeout))
                return  # it still uses its clients: the process exit closes them
        self.close()

    def close(self) -> None:
        closers = [progress.close for progress in self._progress.values()]
        closers += [self._reader.close] if self._reader else []
        for close in closers:
            try:
                close()
            except (KafkaException, RuntimeError):
                log.debug("lag_consumer_close_failed", exc_info=True)
        self._progress.clear()
        self._reader = None
        self._admin = None  # the client has no close: dropping it ends its threads

    def _run(self) -> None:
        log.info(
            "lag_monitor_started",
            extra=fields(interval_s=self.settings.lag_interval_s, stores=self.settings.stores),
        )
        try:
            next_at = time.monotonic()
            while not self._stop.is_set():
                self.check_safely()
                next_at += self.settings.lag_interval_s
                next_at = max(next_at, time.monotonic())  # a slow check does not pile up
                self._stop.wait(next_at - time.monotonic())
        finally:
            self.close()
            log.info("lag_monitor_stopped")

    # ------------------------------------------------------------------ one check
    def check_safely(self) -> None:
        """One check; a failure is counted and logged once, and lag in seconds keeps
        growing from what is known."""
        try:
            self.check()
        except _Stopped:
            return
        except Exception as exc:
            # KafkaException: the broker cannot be read. Anything else is a bug, which must
            # not stop lag reporting for good either: both are counted, logged once per
            # streak, and tried again at the next interval.
            self.broker_ok = False
            self._tps = None  # the partitions are read again (one may have gone)
            self.metrics.lag_errors.inc()
            if not self._failing:
                log.warning(
                    "lag_check_failed",
                    extra=fields(bootstrap=self.settings.kafka_bootstrap, error=str(exc)),
                    exc_info=not isinstance(exc, KafkaException),
                )
            self._failing = True
            self._age_known()

    def check(self) -> LagSnapshot:
        """Read every store's position and lag from Kafka and export them."""
        s = self.settings
        reader = self._reader_consumer()
        tps = self._partitions(reader)
        watermarks = self._watermarks(tps)
        positions: dict[str, dict[TP, int]] = {}
        for name in s.stores:
            self._check_stop()
            committed = self._committed(name, tps)
            positions[name] = {}
            for tp in tps:
                offset = committed.get(tp)
                positions[name][tp] = offset if offset is not None else watermarks[tp][0]
        # Below the low watermark (retention), the oldest record still there is at it.
        wanted = {
            (tp, max(pos, watermarks[tp][0]))
            for per_store in positions.values()
            for tp, pos in per_store.items()
        }
        read_at = time.monotonic()
        unknown = self._known_to_service(wanted - set(self._oldest))
        due = self._reads_due(positions, watermarks, unknown, read_at)
        empty = self._read_oldest(reader, due, self._clock())
        for tp, _offset in due:
            self._read_at[tp] = read_at
        self._forget_except(wanted)

        snapshot = LagSnapshot(at=self._clock())
        for tp in tps:
            snapshot.high_watermarks[tp] = watermarks[tp][1]
        for store, per_store in positions.items():
            snapshot.stores[store] = {}
            for tp, pos in per_store.items():
                key = (tp, max(pos, watermarks[tp][0]))
                records = max(watermarks[tp][1] - pos, 0)
                oldest = self._oldest.get(key)
                if oldest is None and key not in empty and records > 0:
                    # not read in time: keep the last known age rather than report 0
                    oldest = self._previous_oldest(store, tp)
                snapshot.stores[store][tp] = PartitionLag(
                    committed=pos,
                    high_watermark=watermarks[tp][1],
                    records=records,
                    oldest_timestamp_s=oldest,
                )
        self._export(snapshot)
        self.last = snapshot
        self.broker_ok = True
        if self._failing:
            log.info("lag_check_recovered")
            self._failing = False
        return snapshot

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped

    # ------------------------------------------------------------------ Kafka reads
    def _reader_consumer(self) -> Consumer:
        if self._reader is None:
            self._reader = Consumer(
                {
                    **self.settings.kafka_common(),
                    # never subscribes nor commits: the id only satisfies the client
                    "group.id": f"{self.settings.group_id}.lag-monitor",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "enable.partition.eof": True,  # "no record there" answers at once
                    "auto.offset.reset": "error",  # out of range: no record, not a re-read
                    **OLDEST_READER_FETCH,
                    "client.id": self.settings.client_id("replicator-lag-monitor"),
                }
            )
        return self._reader

    def _watermarks(self, tps: list[TP]) -> dict[TP, tuple[int, int]]:
        """(low, high) watermark per partition: the high ones at every check, the low ones
        (which move only with retention) every `OLDEST_REFRESH_INTERVALS` checks, for a new
        partition, and after a read found its position out of range. Each is one ListOffsets
        request per broker for all partitions, not two per partition."""
        now = time.monotonic()
        refresh = (
            self._lows_read_at is None
            or now - self._lows_read_at >= self.settings.lag_interval_s * OLDEST_REFRESH_INTERVALS
        )
        lows_wanted = self._lows_wanted(tps, refresh)
        highs = self._list_offsets(tps, LATEST)
        if lows_wanted:
            self._lows.update(self._list_offsets(lows_wanted, EARLIEST))
            self._lows_due.difference_update(lows_wanted)
        if refresh:
            self._lows_read_at = now
        return {tp: (max(self._lows[tp], 0), max(highs[tp], 0)) for tp in tps}

    def _lows_wanted(self, tps: list[TP], refresh: bool) -> list[TP]:
        if refresh:
            return list(tps)
        return [tp for tp in tps if tp not in self._lows or tp in self._lows_due]

    def _list_offsets(self, tps: list[TP], spec: OffsetSpec) -> dict[TP, int]:
        self._check_stop()
        if self._admin is None:
            self._admin = AdminClient(
                {
                    **self.settings.kafka_common(),
                    "client.id": self.settings.client_id("replicator-lag-monitor"),
                }
            )
        futures = self._admin.list_offsets(
            {KafkaTP(*tp): spec for tp in tps}, request_timeout=self._timeout
        )
        out: dict[TP, int] = {}
        for ktp, future in futures.items():
            out[(ktp.topic, ktp.partition)] = future.result().offset
        return out

    def _partitions(self, reader: Consumer) -> list[TP]:
        """The replicated topics' partitions: read from metadata every
        `OLDEST_REFRESH_INTERVALS` checks (a metadata request at each check was one of the
        requests a lag check asked of the broker every interval), and after a failed check."""
        now = time.monotonic()
        refresh_s = self.settings.lag_interval_s * OLDEST_REFRESH_INTERVALS
        if self._tps is None or now - self._tps_read_at >= refresh_s:
            self._tps = self._read_partitions(reader)
            self._tps_read_at = now
        return self._tps

    def _read_partitions(self, reader: Consumer) -> list[TP]:
        metadata = reader.list_topics(timeout=self._timeout)
        tps: list[TP] = []
        for topic in self.settings.topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                raise KafkaException(
                    KafkaError(
                        KafkaError.UNKNOWN_TOPIC_OR_PART,
                        f"topic {topic} not found: {meta.error if meta else 'absent'}",
                    )
                )
            tps.extend((topic, p) for p in sorted(meta.partitions))
        return tps

    def _committed(self, store: str, tps: list[TP]) -> dict[TP, int | None]:
        progress = self._progress.get(store)
        if progress is None:
            progress = ProgressLog(
                self.settings.kafka_common(),
                self.settings.progress_group(store),
                client_id=self.settings.client_id(f"replicator-lag-monitor-{store}"),
            )
            self._progress[store] = progress
        return progress.committed(tps, timeout=self._timeout)

    def _known_to_service(self, unknown: set[tuple[TP, int]]) -> set[tuple[TP, int]]:
        """Take from the service the positions it knows (chunk starts of the partitions it
        owns, whose first record it read); returns those left for the broker."""
        firsts = self._firsts
        if firsts is None:
            return unknown
        left: set[tuple[TP, int]] = set()
        for key in unknown:
            known = firsts.get(*key)
            if known is None:
                left.add(key)
            else:
                self._oldest[key] = known
        return left

    def _reads_due(
        self,
        positions: dict[str, dict[TP, int]],
        watermarks: dict[TP, tuple[int, int]],
        unknown: set[tuple[TP, int]],
        now: float,
    ) -> set[tuple[TP, int]]:
        """The positions whose oldest record is read in this check, among those not known.

        A position is read when the store is at the end (by the high watermark: the answer
        then says whether it holds everything, and lag in seconds returns to 0 at once), when
        nothing is known of the store's age there, or when its partition was last read
        `OLDEST_REFRESH_INTERVALS` checks ago or more. Otherwise the age of the record last
        read there is kept: it is that of a record the store has since passed, so lag in
        seconds errs high (when timestamps grow with offsets, as they do with CreateTime),
        by at most that long, until the next read."""
        refresh_s = self.settings.lag_interval_s * OLDEST_REFRESH_INTERVALS
        due: set[tuple[TP, int]] = set()
        for store, per_store in positions.items():
            for tp, pos in per_store.items():
                key = (tp, max(pos, watermarks[tp][0]))
                if key not in unknown:
                    continue
                read_at = self._read_at.get(tp)
                if (
                    watermarks[tp][1] - pos <= 0
                    or self._previous_oldest(store, tp) is None
                    or read_at is None
                    or now - read_at >= refresh_s
                ):
                    due.add(key)
        return due

    def _previous_oldest(self, store: str, tp: TP) -> float | None:
        previous = self.last.stores.get(store, {}).get(tp) if self.last is not None else None
        return previous.oldest_timestamp_s if previous is not None else None

    def _read_oldest(
        self, reader: Consumer, wanted: set[tuple[TP, int]], now: float
    ) -> set[tuple[TP, int]]:
        """Find the timestamp of the first record at or after each (partition, offset), into
        the cache; returns the positions with no record at or after them. One partition is
        assigned once per round, so two stores at different positions of one partition take
        two rounds. Positions not answered before the timeout stay unknown."""
        per_tp: dict[TP, list[int]] = {}
        for tp, offset in sorted(wanted):
            per_tp.setdefault(tp, []).append(offset)
        empty: set[tuple[TP, int]] = set()
        deadline = time.monotonic() + self._timeout
        while per_tp and time.monotonic() < deadline:
            self._check_stop()
            round_ = {tp: offsets.pop(0) for tp, offsets in per_tp.items()}
            per_tp = {tp: offsets for tp, offsets in per_tp.items() if offsets}
            reader.assign([KafkaTP(t, p, o) for (t, p), o in round_.items()])
            pending = dict(round_)
            paused: set[TP] = set()
            try:
                while pending and time.monotonic() < deadline and not self._stop.is_set():
                    for msg in reader.consume(num_messages=500, timeout=0.1):
                        self._take(msg, pending, empty, now)
                    paused |= self._pause_answered(reader, round_, pending, paused)
            finally:
                if paused:  # librdkafka keeps a partition paused through unassign and assign
                    reader.resume([KafkaTP(*tp) for tp in paused])
                reader.unassign()
        return empty

    @staticmethod
    def _pause_answered(
        reader: Consumer, round_: dict[TP, int], pending: dict[TP, int], paused: set[TP]
    ) -> set[TP]:
        """Pause the partitions of this round already answered. Left assigned, each would be
        fetched again as soon as its record left the queue (queued.min.messages is 1), at
        every turn until the slowest partition answers: a fetch at a position the broker must
        look up, for a record nobody wants (on the local broker a round of 12 partitions at
        depth takes seconds, the answered ones fetched again all along). They are resumed
        before the unassign: librdkafka keeps a partition paused through unassign and the
        next assign, where it would never answer again."""
        answered = [tp for tp in round_ if tp not in pending and tp not in paused]
        if answered:
            reader.pause([KafkaTP(*tp) for tp in answered])
        return set(answered)

    def _take(
        self, msg: Message, pending: dict[TP, int], empty: set[tuple[TP, int]], now: float
    ) -> None:
        topic, partition = msg.topic(), msg.partition()
        if topic is None or partition is None:
            return
        tp = (topic, partition)
        offset = pending.get(tp)
        if offset is None:
            return
        err = msg.error()
        if err is not None:
            if err.code() in (
                KafkaError._PARTITION_EOF,
                KafkaError._AUTO_OFFSET_RESET,
                KafkaError.OFFSET_OUT_OF_RANGE,
            ):
                # nothing at or after that offset: the store holds every record (or
                # retention passed it: the low watermark is read again at the next check)
                empty.add((tp, offset))
                if err.code() != KafkaError._PARTITION_EOF:
                    self._lows_due.add(tp)
                del pending[tp]
            return
        got = msg.offset()
        if got is None or got < offset:
            return
        ts_type, ts_ms = msg.timestamp()
        if ts_type == _NO_TIMESTAMP or ts_ms <= 0:
            oldest = self._first_seen.setdefault((tp, offset), now)
        else:
            oldest = ts_ms / 1000.0
        self._oldest[(tp, offset)] = oldest
        del pending[tp]

    def _forget_except(self, wanted: set[tuple[TP, int]]) -> None:
        """Keep the cache to the positions in use: it stays as small as the partition count."""
        for cache in (self._oldest, self._first_seen):
            for key in [k for k in cache if k not in wanted]:
                del cache[key]

    # ------------------------------------------------------------------ export
    def _export(self, snapshot: LagSnapshot) -> None:
        m = self.metrics
        seen = set(snapshot.high_watermarks)
        for (topic, partition), high in snapshot.high_watermarks.items():
            m.high_watermark.labels(topic, str(partition)).set(high)
        for store, per_store in snapshot.stores.items():
            for tp, lag in per_store.items():
                labels = (store, tp[0], str(tp[1]))
                m.store_committed.labels(*labels).set(lag.committed)
                m.lag_records.labels(*labels).set(lag.records)
                m.lag_seconds.labels(*labels).set(snapshot.seconds(store, tp, snapshot.at))
        for tp in self._exported - seen:  # a partition that no longer exists
            with contextlib.suppress(KeyError):
                m.high_watermark.remove(tp[0], str(tp[1]))
            for store in snapshot.stores:
                for gauge in (m.store_committed, m.lag_records, m.lag_seconds):
                    with contextlib.suppress(KeyError):
                        gauge.remove(store, tp[0], str(tp[1]))
        self._exported = seen
        m.lag_updated.set(snapshot.at)

    def _age_known(self) -> None:
        """The broker cannot be read: lag in seconds still grows from the known records."""
        if self.last is None:
            return
        now = self._clock()
        for store, per_store in self.last.stores.items():
            for tp in per_store:
                self.metrics.lag_seconds.labels(store, tp[0], str(tp[1])).set(
                    self.last.seconds(store, tp, now)
                )
