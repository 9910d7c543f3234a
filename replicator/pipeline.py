"""The service: Kafka -> decode + check -> chunks -> one container file -> every store.

One thread runs the loop below; puts run on a small thread pool per store ("lane").

    live consumer (group <group_id>)          catch-up consumer per lagging store
        |                                         |
    decode + check --bad--> dead-letter topic     decode + check (no dead letter: done live)
        |                                         |
    PartitionChunker (rules + CutPlan)         PartitionChunker (same CutPlan)
        |                                         |
    encode once -> each LIVE lane             encode -> that lane only
        |                                         |
    lane: create-if-absent puts, in order per partition, then commit <group_id>.<store>

Why a lane falls out of the live stream and how it comes back (P4, bounded memory):
- a put that keeps failing past `write_retry_s`, or a lane whose queued bytes pass its share
  of `max_buffer_bytes` while another lane keeps up, marks the lane DOWN: its queue is
  dropped (nothing is committed for it, so nothing is lost) and the other lanes go on;
- a DOWN lane is probed every `health_interval_s`; when it answers, it lists its own objects
  past its position (to find objects written but not committed before a crash), then
  catches up from its own committed offsets: the objects another store has already written
  for the known cuts are copied from that store (the same bytes, no decoding:
  `catchup_copy`), and the rest is read from Kafka with a consumer of its own, cutting
  exactly as the live stream did (the CutPlan holds every cut made since its position); it
  joins the live stream again partition by partition when it reaches the live chunker's
  open chunk. A copy that fails (the object is missing or unreadable in the source) makes
  that partition read Kafka for that object, then copying resumes.
- when no lane takes a partition, the live consumer pauses it: memory stays bounded.

Every partition's cuts are shared through its CutPlan: at assignment it is filled from the
objects already in the reachable stores, so a restart or a new owner cuts exactly as before.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import Enum
from types import FrameType
from typing import Any, TypeVar, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaTP

from replicator import __version__
from replicator.checks_native import extension
from replicator.chunking import Chunk, ChunkRules, CutPlan, PartitionChunker, PlanConflict
from replicator.config import Settings
from replicator.container import RawRecord, encode_container, object_metadata
from replicator.daemonpool import DaemonPool
from replicator.deadletter import DeadLetterError, DeadLetterWriter, read_limit
from replicator.errors import ConflictError, StoreError
from replicator.judge import Item, Verdict, judge_batch, judge_items, start_pool
from replicator.keys import object_key, offset_marker, parse_key, partition_prefix
from replicator.logs import EventBudget, fields
from replicator.metrics import Metrics
from replicator.progress import TP, ProgressLog
from replicator.schemas import SchemaRegistry
from replicator.stores.base import PutOutcome, Store

log = logging.getLogger("replicator.pipeline")

MAX_JUDGED_BATCHES = 4  # batches with a judge at once: bounds memory and latency
# When its queue is full (fetch_buffer_kbytes), librdkafka postpones the next fetch of a
# partition by fetch.queue.backoff.ms, 1000 by default: a loop that drains the queue in less
# than that then waits for records with nothing to do (measured: about 0.7 s of every second
# idle, docs/performance.md). 20 ms keeps the queue fed at the cost of a few more wake-ups.
FETCH_QUEUE_BACKOFF_MS = 20
# A lane past its share of max_buffer_bytes first holds the loop: it stops taking records
# from the consumer's queue (librdkafka stops fetching once that queue is full) while the
# stores drain. Only past this long does it pause the partitions: a pause throws away what
# librdkafka has fetched and resuming waits for a new fetch (about 0.5 s each time, measured
# in the benchmark), while a hold costs nothing; but a held loop serves no rebalance, so a
# long wait goes back to pausing, which does.
HOLD_BEFORE_PAUSE_S = 1.0
HOLD_WAIT_S = 0.005
# How often the loop, waiting for a store call of its own (a listing, a probe), looks whether
# a stop was asked for: a store that never answers must not hold a SIGTERM.
STOP_POLL_S = 0.05

T = TypeVar("T")


class Stopping(Exception):
    """A stop was asked for while the loop waited for a store: what it waited for is
    abandoned (nothing depends on it but work that will not happen)."""


@dataclass(frozen=True)
class EncodedChunk:
    topic: str
    partition: int
    first: int
    last: int
    key: str
    data: bytes
    md5: bytes
    records: int
    metadata: dict[str, str]

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)


def encode_chunk(chunk: Chunk, registry: SchemaRegistry, codec: str, level: int) -> EncodedChunk:
    """Encode once; the same buffer goes to every store."""
    key = str(chunk.key)
    schemas = {sid: registry.get(sid).schema_json for sid in set(chunk.schema_ids)}
    meta = {
        "topic": chunk.topic,
        "partition": str(chunk.partition),
        "first_offset": str(chunk.first),
        "last_offset": str(chunk.last),
        "records": str(len(chunk.records)),
        "skipped": str(chunk.skipped),
    }
    data = encode_container(
        key, schemas, chunk.records, chunk.schema_ids, meta, codec=codec, level=level
    )
    return EncodedChunk(
        topic=chunk.topic,
        partition=chunk.partition,
        first=chunk.first,
        last=chunk.last,
        key=key,
        data=data,
        md5=hashlib.md5(data).digest(),
        records=len(chunk.records),
        metadata=meta,
    )


def too_slow(lanes: dict[str, tuple[int, bool]], share: int) -> list[str]:
    """The lanes to drop from the live stream, given each UP lane's (queued bytes, has live
    partitions): one past its share while another live lane keeps up (under half its share).
    When every queue grows together the bottleneck is shared, and none is dropped (the live
    consumer pauses instead)."""
    return [
        name
        for name, (pending, _live) in lanes.items()
        if pending > share
        and any(
            other != name and live and queued <= share // 2
            for other, (queued, live) in lanes.items()
        )
    ]


def live_consumer_config(settings: Settings) -> dict[str, Any]:
    """The live consumer's settings (the group member that owns partitions).

    On SIGTERM the consumer is closed (`Consumer.close()`), which sends LeaveGroup, also
    while its JoinGroup is still pending: the group rebalances at once instead of waiting
    for the session to expire. Nothing is ever committed to this group (each store's
    progress is a group of its own, see progress.py)."""
    return {
        **settings.kafka_common(),
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
        "queued.max.messages.kbytes": settings.fetch_buffer_kbytes,
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        "heartbeat.interval.ms": max(settings.session_timeout_ms // 5, 500),
        "partition.assignment.strategy": "range",
        "enable.partition.eof": False,
        "client.id": f"replicator-{__version__}",
    }


class CopyFailed(Exception):
    """An object could not be copied from another store: read Kafka for it instead."""

    def __init__(self, source: str, key: str, detail: str) -> None:
        super().__init__(f"copy of {key} from {source} failed: {detail}")
        self.source = source
        self.key = key
        self.detail = detail


def coords(msg: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed record (never None for a record)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


class LaneMode(str, Enum):
    UP = "up"
    DOWN = "down"


@dataclass
class ChunkJob:
    """A chunk on its way to the stores: its range now, its bytes when the encoder is done."""

    topic: str
    partition: int
    first: int
    last: int
    records: int
    nbytes: int  # raw bytes of its records: what the memory bound counts
    encoded: Future[EncodedChunk]

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)


@dataclass
class InFlight:
    chunk: ChunkJob
    future: Future[PutOutcome]


@dataclass
class CatchUp:
    """A lagging lane's own reader of Kafka, from its committed offsets to the live stream."""

    consumer: Consumer
    chunkers: dict[TP, PartitionChunker] = field(default_factory=dict)
    copying: set[TP] = field(default_factory=set)  # partitions that copied from another store
    # after a failed copy, a partition reads Kafka up to here (the failed object's end)
    kafka_until: dict[TP, int] = field(default_factory=dict)


@dataclass
class Lane:
    """One store: its client, its pool of puts, its position per partition."""

    store: Store
    executor: DaemonPool
    mode: LaneMode = LaneMode.UP
    positions: dict[TP, int] = field(default_factory=dict)  # durable: next offset to write
    committed: dict[TP, int] = field(default_factory=dict)  # last value committed to Kafka
    dispatched: dict[TP, int] = field(default_factory=dict)  # end + 1 of the last chunk queued
    inflight: dict[TP, deque[InFlight]] = field(default_factory=dict)
    live: set[TP] = field(default_factory=set)  # partitions fed by the live stream
    conflicted: set[TP] = field(default_factory=set)
    pending_bytes: int = 0
    catchup: CatchUp | None = None
    probe: Future[None] | None = None
    next_probe_at: float = 0.0
    down_reason: str = ""
    progress: ProgressLog | None = None

    @property
    def name(self) -> str:
        return self.store.name


@dataclass
class PartitionState:
    tp: TP
    chunker: PartitionChunker
    plan: CutPlan
    ready: bool = True  # False: waits for a down store's listing to know its cuts
    paused: bool = False


@dataclass
class RunStats:
    """What a run did, for the CLI summary and the tests."""

    records_in: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    values_dropped: int = 0  # dead letters sent without their value (too large, refused)
    objects: dict[str, dict[str, int]] = field(default_factory=dict)
    records_out: dict[str, int] = field(default_factory=dict)


class Replicator:
    def __init__(
        self,
        settings: Settings,
        stores: list[Store],
        registry: SchemaRegistry,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.rules = ChunkRules(
            max_records=settings.chunk_max_records,
            max_bytes=settings.chunk_max_bytes,
            window_ms=settings.chunk_window_s * 1000,
            flush_interval_s=settings.flush_interval_s,
        )
        self.kafka_conf = settings.kafka_common()
        self.lanes = [
            Lane(
                store=s,
                executor=DaemonPool(settings.write_concurrency + 1, f"put-{s.name}"),
            )
            for s in stores
        ]
        self.parts: dict[TP, PartitionState] = {}
        self.stats = RunStats()
        self._stop = threading.Event()
        # When the stop was asked for, plus shutdown_timeout_s: every wait of the shutdown
        # (the drain, a revoke's drain, the final commit) ends by then.
        self._stop_deadline: float | None = None
        self._abort = threading.Event()  # second signal: stop retrying puts at once
        self._consumer: Consumer | None = None
        self._dlq: DeadLetterWriter | None = None
        self._last_commit = 0.0
        self._next_prepare_at = 0.0
        self._dlq_dirty = False
        self._dlq_error = ""  # why the last flush of the dead-letter producer failed
        self.last_loop_at = time.monotonic()
        self.broker_up = False
        self._max_lane_bytes = settings.max_buffer_bytes // max(len(self.lanes), 1)
        self._held_since: float | None = None  # since when a full lane holds the loop
        self._judges: ProcessPoolExecutor | None = None
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        self._copier = DaemonPool(4, "copy")  # reads another store: may hang with it
        # The loop's own store calls (listings, deletes, probes), waited for by `_store_call`.
        self._calls = DaemonPool(2 * max(len(self.lanes), 1), "store-call")
        self._judged: deque[
            tuple[
                list[Message],
                list[PartitionState],
                list[Item],
                Future[tuple[list[Verdict], list[bytes | None]]],
            ]
        ] = deque()
        self._schema_topics = dict(settings.schema_topics)
        self._dead_letter_logs = EventBudget(per_window=100, window_s=60.0)

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.settings.shutdown_timeout_s
        self._stop.set()

    def _deadline(self) -> float:
        """The shutdown's deadline: shutdown_timeout_s after the stop was asked for."""
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.settings.shutdown_timeout_s
        return self._stop_deadline

    def _store_call(self, fn: Callable[[], T]) -> T:
        """Call a store from the loop's thread, but give up at once when a stop is asked
        for (raising `Stopping`): the call goes on, abandoned, on a daemon thread."""
        future = self._calls.submit(fn)
        while True:
            done, _pending = wait([future], timeout=STOP_POLL_S)
            if done:
                return future.result()
            if self._stop.is_set():
                future.cancel()
                raise Stopping

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            if self._stop.is_set():
                log.warning("second_signal_exit", extra=fields(signal=signum))
                self._abort.set()
                # Nothing committed is lost by exiting now: progress only ever moves after
                # the store holds the object (P1), and a re-run creates nothing twice (P2).

                os._exit(128 + signum)
            log.info("stopping", extra=fields(signal=signum))
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, until: Callable[[Replicator], bool] | None = None) -> RunStats:
        """Run until stopped (signal, `stop()`, or `until(self)` returning True)."""
        s = self.settings
        log.info(
            "starting",
            extra=fields(
                version=__version__, stores=[ln.name for ln in self.lanes], topics=s.topics
            ),
        )
        if extension() is None:
            log.warning(
                "compiled_checks_missing",
                extra=fields(
                    detail="replicator._fastcheck is not built (pip install builds it): "
                    "records are judged in Python, same verdicts, several times slower"
                ),
            )
        for lane in self.lanes:
            lane.progress = ProgressLog(self.kafka_conf, s.progress_group(lane.name))
            self.metrics.store_up.labels(lane.name).set(0)
            self._probe_now(lane, initial=True)
        # The dead-letter producer takes what the dead-letter topic takes; a dead letter
        # over it goes without its value (replicator/deadletter.py, docs/guarantees.md).
        limit = read_limit(self.kafka_conf, s.dead_letter_topic)
        self.metrics.dead_letter_max_bytes.set(limit.max_message_bytes)
        self._dlq = DeadLetterWriter(
            self.kafka_conf,
            s.dead_letter_topic,
            max_message_bytes=limit.max_message_bytes,
            on_dropped=self._dead_letter_value_dropped,
        )
        if s.decode_workers > 0:
            self._judges = start_pool(s.decode_workers, s.schemas_dir, s.max_record_bytes)
        consumer = Consumer({**live_consumer_config(s), "error_cb": self._kafka_error})
        self._consumer = consumer
        consumer.subscribe(
            s.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        log.info("joining_group", extra=fields(group=s.group_id))
        try:
            while not self._stop.is_set():
                self._turn(consumer)
                if until is not None and until(self):
                    break
        except Stopping:
            pass  # a store call was abandoned for the stop: the shutdown follows
        finally:
            self._shutdown(consumer)
        return self.stats

    def _shutdown(self, consumer: Consumer) -> None:
        """Finish the puts under way until the deadline (shutdown_timeout_s after the stop
        was asked for), commit what the stores hold, leave the group. A put still running
        then is abandoned, uncommitted: its thread is a daemon and the process exits without
        it (the next owner of the partition finds its object, if it lands, as uncommitted)."""
        deadline = self._deadline()
        log.info(
            "draining",
            extra=fields(
                timeout_s=self.settings.shutdown_timeout_s,
                remaining_s=round(max(deadline - time.monotonic(), 0.0), 3),
            ),
        )
        self._drop_judged()  # not committed: whoever owns the partitions next reads them again
        for lane in self.lanes:
            self._drain(lane, None, deadline)
        abandoned = {
            lane.name: n
            for lane in self.lanes
            if (n := sum(len(q) for q in lane.inflight.values()))
        }
        if abandoned:
            log.warning("puts_abandoned", extra=fields(stores=abandoned))
        # What is left of the shutdown budget, at least a second: a dead-letter topic that
        # does not answer must not hold the exit past it.
        self._commit(force=True, dlq_timeout=max(deadline - time.monotonic(), 1.0))
        try:
            consumer.close()
        except KafkaException:
            log.warning("consumer_close_failed", exc_info=True)
        for lane in self.lanes:
            if lane.catchup is not None:
                lane.catchup.consumer.close()
                lane.catchup = None
            lane.executor.shutdown(wait=False, cancel_futures=True)
            if lane.progress is not None:
                lane.progress.close()
            lane.store.close()
        if self._dlq is not None:
            self._dlq.close(timeout=max(deadline - time.monotonic(), 1.0))
        if self._judges is not None:
            self._judges.shutdown(wait=False, cancel_futures=True)
        self._encoder.shutdown(wait=False, cancel_futures=True)
        self._copier.shutdown(wait=False, cancel_futures=True)
        self._calls.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")

    # ------------------------------------------------------------------ the loop
    def _turn(self, consumer: Consumer) -> None:
        now = time.monotonic()
        self.last_loop_at = now
        busy = any(ln.catchup is not None for ln in self.lanes)
        if self._holding(now):
            time.sleep(HOLD_WAIT_S)  # the stores drain on their threads meanwhile
        else:
            msgs = consumer.consume(num_messages=2000, timeout=0.0 if busy else 0.05)
            if msgs:
                self.broker_up = True
            self._take_live(msgs)
        self._apply_judged(wait=False)
        for lane in self.lanes:
            if lane.catchup is not None and lane.mode is LaneMode.UP:
                self._catchup_turn(lane)
        now = time.monotonic()
        for state in self.parts.values():
            if state.ready and state.chunker.flush_due(now):
                chunk = state.chunker.flush()
                if chunk is not None:
                    self._dispatch_live(chunk)
        for lane in self.lanes:
            self._reap(lane)
            self._check_lane(lane, now)
        if now >= self._next_prepare_at:
            self._next_prepare_at = now + self.settings.health_interval_s
            for state in [p for p in self.parts.values() if not p.ready]:
                self._retry_prepare(state)
        self._apply_pause(consumer)
        if now - self._last_commit >= self.settings.commit_interval_s:
            self._commit()

    def _apply_verdict(
        self, msg: Message, verdict: Verdict, live: bool
    ) -> tuple[RawRecord | None, int | None]:
        """The record to keep (with its schema id), or (None, None) for a bad one, which the
        live stream sends to the dead-letter topic (a catching-up store only skips it: the
        live stream did that already)."""
        topic, partition, offset = coords(msg)
        _ts_type, ts = msg.timestamp()
        value = msg.value()
        schema_id, reason, detail = verdict
        if schema_id is not None:
            assert value is not None
            return RawRecord(
                offset=offset, timestamp_ms=ts, key=msg.key(), body=value[5:]
            ), schema_id
        if live:
            assert self._dlq is not None
            self._dlq.send(
                topic=topic,
                partition=partition,
                offset=offset,
                timestamp_ms=ts,
                key=msg.key(),
                value=value,
                reason=reason,
                detail=detail,
            )
            self._dlq_dirty = True
            self.metrics.dead_letters.labels(topic, reason).inc()
            self.stats.dead_lettered[reason] = self.stats.dead_lettered.get(reason, 0) + 1
            suppressed = self._dead_letter_logs.take(reason, time.monotonic())
            if suppressed is not None:  # at most 100 lines a minute per reason
                extra = {"suppressed": suppressed} if suppressed else {}
                log.warning(
                    "dead_lettered",
                    extra=fields(
                        topic=topic,
                        partition=partition,
                        offset=offset,
                        reason=reason,
                        detail=detail,
                        **extra,
                    ),
                )
        return None, None

    def _dead_letter_value_dropped(self, topic: str, reason: str) -> None:
        self.metrics.dead_letter_values_dropped.labels(topic, reason).inc()
        self.stats.values_dropped += 1

    def _judge_now(self, msgs: list[Message]) -> list[Verdict]:
        """The verdicts of these messages, judged here in one batch (the compiled fast path
        takes the good ones; see `judge_items`)."""
        items: list[Item] = []
        for msg in msgs:
            topic = cast(str, msg.topic())
            items.append(
                (
                    self._schema_topics.get(topic, topic),
                    msg.value(),
                    cast(int, msg.offset()),
                    msg.timestamp()[1],
                    msg.key(),
                    msg.headers(),
                )
            )
        return judge_items(self.registry, items, self.settings.max_record_bytes, False)[0]

    def _take_live(self, msgs: list[Message]) -> None:
        """Hand consumed records to the judge: a worker process when configured (the batch's
        verdicts are applied on a later turn, in order), else this thread.

        This loop and `_apply_batch` run once per record on the service's busiest thread:
        they keep to local names and one pass (see docs/performance.md)."""
        taken: list[Message] = []
        states: list[PartitionState] = []
        items: list[Item] = []
        parts = self.parts
        schema_topics = self._schema_topics
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka_error", extra=fields(error=str(err)))
                continue
            topic = cast(str, msg.topic())
            state = parts.get((topic, cast(int, msg.partition())))
            if state is None or not state.ready:
                continue
            taken.append(msg)
            states.append(state)
            items.append(
                (
                    schema_topics.get(topic, topic),
                    msg.value(),
                    cast(int, msg.offset()),
                    msg.timestamp()[1],
                    msg.key(),
                    msg.headers(),
                )
            )
        if not taken:
            return
        # No envelopes: a chunk's are made when it is encoded (`container`, in C), so that
        # an open chunk holds each record's body once, not twice (peak RSS).
        if self._judges is None:
            verdicts, _none = judge_items(
                self.registry, items, self.settings.max_record_bytes, envelopes=False
            )
            self._apply_batch(taken, states, items, verdicts)
            return
        future = self._judges.submit(judge_batch, items, False)
        self._judged.append((taken, states, items, future))

    def _apply_judged(self, wait: bool) -> None:
        """Apply the verdicts of finished batches, oldest first (all of them when `wait`)."""
        while self._judged and (
            wait or self._judged[0][3].done() or len(self._judged) > MAX_JUDGED_BATCHES
        ):
            taken, states, items, future = self._judged.popleft()
            self._apply_batch(taken, states, items, future.result()[0])

    def _drop_judged(self) -> None:
        """Forget batches judged for partition states that no longer exist (a rebalance or a
        seek makes the consumer fetch them again, from the committed position)."""
        for *_batch, future in self._judged:
            future.cancel()
        self._judged.clear()

    def _apply_batch(
        self,
        msgs: list[Message],
        states: list[PartitionState],
        items: list[Item],
        verdicts: list[Verdict],
    ) -> None:
        """Chunk a judged batch, in order: good records are kept, bad ones dead-lettered.
        A record of a partition state that was replaced since (a rebalance, a seek) or that
        is below its chunker's position (already covered) is ignored. The record's fields
        come from `items`, read once from the message by `_take_live`."""
        now = time.monotonic()
        parts = self.parts
        dispatch = self._dispatch_live
        taken = 0
        current: PartitionState | None = None
        valid = False
        batch = zip(msgs, states, items, verdicts, strict=True)
        for msg, state, (_topic, value, offset, timestamp_ms, key, _headers), verdict in batch:
            if state is not current:
                current = state
                valid = state.ready and parts.get(state.tp) is state
            if not valid:
                continue
            chunker = state.chunker
            if offset < chunker.position:
                continue
            taken += 1
            schema_id = verdict[0]
            record: RawRecord | None
            if schema_id is not None:
                record = RawRecord(offset, timestamp_ms, key, cast(bytes, value)[5:])
            else:
                record, _none = self._apply_verdict(msg, verdict, live=True)
            try:
                chunks = chunker.add(offset, record, schema_id, now)
            except PlanConflict as exc:
                self._plan_conflict(state.tp, exc)
                continue
            for chunk in chunks:
                dispatch(chunk)
        self.stats.records_in += taken

    def _plan_conflict(self, tp: TP, exc: PlanConflict) -> None:
        log.error("cut_conflict", extra=fields(topic=tp[0], partition=tp[1], error=str(exc)))
        for lane in self.lanes:
            lane.conflicted.add(tp)
            lane.live.discard(tp)

    def _dispatch_live(self, chunk: Chunk) -> None:
        self.metrics.chunk_records.observe(chunk.last - chunk.first + 1)
        lanes = [ln for ln in self.lanes if (chunk.topic, chunk.partition) in ln.live]
        if not lanes:
            return
        job = self._encode(chunk)
        for lane in lanes:
            self._submit(lane, job)

    def _encode(self, chunk: Chunk) -> ChunkJob:
        """Encode on the encoder thread (zlib releases the GIL there), once for every store."""

        def work() -> EncodedChunk:
            enc = encode_chunk(
                chunk, self.registry, self.settings.codec, self.settings.deflate_level
            )
            self.metrics.chunk_bytes.observe(len(enc.data))
            return enc

        return ChunkJob(
            topic=chunk.topic,
            partition=chunk.partition,
            first=chunk.first,
            last=chunk.last,
            records=len(chunk.records),
            nbytes=sum(len(r.body) for r in chunk.records) + 64,
            encoded=self._encoder.submit(work),
        )

    def _submit(self, lane: Lane, enc: ChunkJob) -> None:
        tp = enc.tp
        expected = lane.dispatched.get(tp)
        if expected is not None and expected != enc.first:
            # A chunk that does not start where the lane stands would leave a gap or an overlap.
            log.error(
                "lane_position_mismatch",
                extra=fields(
                    store=lane.name,
                    topic=tp[0],
                    partition=tp[1],
                    expected=expected,
                    first=enc.first,
                ),
            )
            self._mark_down(lane, f"position mismatch on {tp[0]}/{tp[1]}")
            return
        future = lane.executor.submit(self._put, lane, enc)
        lane.inflight.setdefault(tp, deque()).append(InFlight(enc, future))
        lane.dispatched[tp] = enc.last + 1
        lane.pending_bytes += enc.nbytes

    def _put(self, lane: Lane, job: ChunkJob) -> PutOutcome:
        """One create-if-absent, retried with jittered backoff while the error is transient."""
        enc = job.encoded.result()
        deadline = time.monotonic() + self.settings.write_retry_s
        delay = 0.1
        while True:
            started = time.monotonic()
            try:
                outcome = lane.store.create_if_absent(enc.key, enc.data, enc.md5, enc.metadata)
                self.metrics.put_seconds.labels(lane.name).observe(time.monotonic() - started)
                return outcome
            except StoreError as exc:
                self.metrics.store_errors.labels(lane.name, exc.kind.value).inc()
                if (
                    not exc.retriable
                    or self._abort.is_set()
                    or time.monotonic() + delay > deadline
                    or (self._stop_deadline is not None and time.monotonic() > self._stop_deadline)
                ):
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------------ completions
    def _reap(self, lane: Lane) -> None:
        restart: list[tuple[TP, int]] = []  # partitions whose copy failed, and up to where
        for tp, queue in lane.inflight.items():
            while queue and queue[0].future.done():
                item = queue.popleft()
                lane.pending_bytes -= item.chunk.nbytes
                if item.future.cancelled():
                    continue
                exc = item.future.exception()
                if exc is None:
                    outcome = item.future.result()
                    if lane.positions.get(tp) == item.chunk.first or tp not in lane.positions:
                        lane.positions[tp] = item.chunk.last + 1
                    self._count(lane, outcome.value, item.chunk)
                elif isinstance(exc, ConflictError):
                    self._count(lane, "conflict", item.chunk)
                    log.error(
                        "conflict",
                        extra=fields(
                            store=lane.name,
                            topic=tp[0],
                            partition=tp[1],
                            first=item.chunk.first,
                            last=item.chunk.last,
                            key=exc.key,
                            existing_md5=exc.existing_md5,
                            new_md5=exc.new_md5,
                        ),
                    )
                    lane.conflicted.add(tp)
                    lane.live.discard(tp)
                    self._cancel_partition(lane, tp)
                elif isinstance(exc, CopyFailed):
                    log.warning(
                        "catchup_copy_failed",
                        extra=fields(
                            store=lane.name, source=exc.source, key=exc.key, error=exc.detail
                        ),
                    )
                    self._cancel_partition(lane, tp)
                    restart.append((tp, item.chunk.last + 1))
                else:
                    self._mark_down(lane, str(exc))
                    self._cancel_partition(lane, tp)
        if restart and lane.mode is LaneMode.UP and lane.catchup is not None:
            for tp, until in restart:
                lane.catchup.chunkers.pop(tp, None)
                lane.catchup.kafka_until[tp] = until
            self._start_catchup(lane)  # from the lane's durable position, reading Kafka

    def _count(self, lane: Lane, outcome: str, job: ChunkJob) -> None:
        # The encoded chunk's count: a copied object's is known only once it is read.
        records = job.encoded.result().records if job.encoded.done() else job.records
        self.metrics.objects.labels(lane.name, outcome).inc()
        self.metrics.records.labels(lane.name, outcome).inc(records)
        per = self.stats.objects.setdefault(lane.name, {})
        per[outcome] = per.get(outcome, 0) + 1
        if outcome != "conflict":
            self.stats.records_out[lane.name] = self.stats.records_out.get(lane.name, 0) + records

    def _cancel_partition(self, lane: Lane, tp: TP) -> None:
        """Drop what is queued for a partition; what already runs finishes by itself."""
        queue = lane.inflight.get(tp)
        if not queue:
            lane.dispatched.pop(tp, None)
            return
        for item in queue:
            item.future.cancel()
        lane.dispatched.pop(tp, None)

    def _mark_down(self, lane: Lane, reason: str) -> None:
        if lane.mode is LaneMode.DOWN:
            return
        log.error("store_down", extra=fields(store=lane.name, reason=reason))
        lane.mode = LaneMode.DOWN
        lane.down_reason = reason
        lane.live.clear()
        for tp in list(lane.inflight):
            self._cancel_partition(lane, tp)
        if lane.catchup is not None:
            lane.catchup.consumer.close()
            lane.catchup = None
            self.metrics.catching_up.labels(lane.name).set(0)
        lane.next_probe_at = time.monotonic() + self.settings.health_interval_s
        self.metrics.store_up.labels(lane.name).set(0)

    # ------------------------------------------------------------------ health and catch-up
    def _probe_now(self, lane: Lane, initial: bool = False) -> None:
        try:
            self._store_call(lane.store.health_check)
        except Stopping:
            return  # stopping before the loop starts: nothing will be written
        except StoreError as exc:
            if initial:
                log.error(
                    "store_unavailable_at_start", extra=fields(store=lane.name, error=str(exc))
                )
            lane.mode = LaneMode.DOWN
            lane.down_reason = str(exc)
            lane.next_probe_at = time.monotonic() + self.settings.health_interval_s
            self.metrics.store_up.labels(lane.name).set(0)
            return
        lane.mode = LaneMode.UP
        self.metrics.store_up.labels(lane.name).set(1)

    def _check_lane(self, lane: Lane, now: float) -> None:
        if lane.mode is LaneMode.DOWN:
            if any(lane.inflight.values()):
                return  # wait for the puts already running to end
            if lane.probe is None and now >= lane.next_probe_at:
                lane.probe = lane.executor.submit(lane.store.health_check)
            elif lane.probe is not None and lane.probe.done():
                probe, lane.probe = lane.probe, None
                if probe.exception() is None:
                    log.info("store_back", extra=fields(store=lane.name))
                    lane.mode = LaneMode.UP
                    self.metrics.store_up.labels(lane.name).set(1)
                    self._start_catchup(lane)
                else:
                    lane.next_probe_at = now + self.settings.health_interval_s

    def _start_catchup(self, lane: Lane) -> None:
        """Bring every partition of `lane` that is behind the live stream back to it."""
        catchup = lane.catchup or CatchUp(consumer=self._new_catchup_consumer(lane))
        added: dict[str, int] = {}
        for tp, state in list(self.parts.items()):
            if (
                not state.ready
                or tp in lane.conflicted
                or tp in lane.live
                or tp in catchup.chunkers
            ):
                continue
            pos = lane.positions.get(tp, state.chunker.open_first)
            try:
                self._reconcile_orphans(lane, tp, pos, state.plan)
            except StoreError as exc:
                if lane.catchup is None:
                    catchup.consumer.close()
                self._mark_down(lane, str(exc))
                return
            except Stopping:
                if lane.catchup is None:
                    catchup.consumer.close()
                raise
            if pos >= state.chunker.open_first:
                self._join_live(lane, tp, state.chunker.open_first)
                continue
            catchup.chunkers[tp] = PartitionChunker(tp[0], tp[1], self.rules, pos, state.plan)
            lane.dispatched[tp] = pos
            added[f"{tp[0]}/{tp[1]}"] = pos
        if not catchup.chunkers:
            catchup.consumer.close()
            lane.catchup = None
            return
        if added:
            catchup.consumer.assign(
                [KafkaTP(t, p, c.position) for (t, p), c in catchup.chunkers.items()]
            )
            log.info("catchup_started", extra=fields(store=lane.name, partitions=added))
        lane.catchup = catchup
        self.metrics.catching_up.labels(lane.name).set(len(catchup.chunkers))

    def _new_catchup_consumer(self, lane: Lane) -> Consumer:
        return Consumer(
            {
                **self.kafka_conf,
                "group.id": f"{self.settings.group_id}.{lane.name}.catchup",
                "queued.max.messages.kbytes": self.settings.fetch_buffer_kbytes,
                "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
            }
        )

    def _catchup_turn(self, lane: Lane) -> None:
        catchup = lane.catchup
        assert catchup is not None
        if lane.pending_bytes > self._max_lane_bytes // 2:
            return  # let the puts drain first: memory stays bounded
        if self.settings.catchup_copy:
            copied = [
                tp for tp, c in catchup.chunkers.items() if self._copy_ahead(lane, catchup, tp, c)
            ]
            if copied:
                # Read Kafka from past what was copied (an assign drops what was fetched).
                catchup.consumer.assign(
                    [KafkaTP(t, p, c.position) for (t, p), c in catchup.chunkers.items()]
                )
                if lane.pending_bytes > self._max_lane_bytes // 2:
                    return  # more to copy once these are written: Kafka can wait
        msgs = [
            m for m in catchup.consumer.consume(num_messages=2000, timeout=0.0) if not m.error()
        ]
        verdicts = self._judge_now(msgs)
        done: list[TP] = []
        for msg, verdict in zip(msgs, verdicts, strict=True):
            topic, partition, offset = coords(msg)
            tp = (topic, partition)
            chunker = catchup.chunkers.get(tp)
            state = self.parts.get(tp)
            if chunker is None or state is None or tp in done:
                continue
            boundary = state.chunker.open_first
            if offset >= boundary:
                chunks = chunker.cut_at_boundary(boundary)
            else:
                record, schema_id = self._apply_verdict(msg, verdict, live=False)
                try:
                    chunks = chunker.add(offset, record, schema_id, time.monotonic())
                except PlanConflict as exc:
                    self._plan_conflict(tp, exc)
                    done.append(tp)
                    continue
            for chunk in chunks:
                self._submit(lane, self._encode(chunk))
            if chunker.open_first >= boundary:
                done.append(tp)
        for tp, chunker in list(catchup.chunkers.items()):
            state = self.parts.get(tp)
            if state is None or (tp not in done and chunker.open_first >= state.chunker.open_first):
                done.append(tp)
        for tp in set(done):
            chunker_done = catchup.chunkers.pop(tp, None)
            state = self.parts.get(tp)
            if chunker_done is not None and state is not None and tp not in lane.conflicted:
                self._join_live(lane, tp, chunker_done.open_first)
        if done:
            remaining = [KafkaTP(t, p, c.position) for (t, p), c in catchup.chunkers.items()]
            if remaining:
                catchup.consumer.assign(remaining)
            else:
                catchup.consumer.close()
                lane.catchup = None
                log.info("catchup_done", extra=fields(store=lane.name))
            self.metrics.catching_up.labels(lane.name).set(len(remaining))

    def _copy_ahead(self, lane: Lane, catchup: CatchUp, tp: TP, chunker: PartitionChunker) -> bool:
        """Copy, from another store, the objects of the known cuts that store has already
        written, from where `lane`'s catch-up stands: the same bytes (P3 without re-encoding),
        at the stores' bandwidth instead of decoding Kafka again. Only between chunks: a
        chunk the catch-up has started reading from Kafka is finished from Kafka."""
        state = self.parts.get(tp)
        if (
            state is None
            or chunker.position != chunker.open_first
            or chunker.open_first < catchup.kafka_until.get(tp, 0)
        ):
            return False
        boundary = state.chunker.open_first  # the live stream's open chunk
        moved = False
        while lane.pending_bytes <= self._max_lane_bytes // 2:
            first = chunker.open_first
            last = state.plan.end_for(first)
            if last is None or last >= boundary:
                break
            source = next(
                (
                    ln
                    for ln in self.lanes
                    if ln is not lane
                    and ln.mode is LaneMode.UP
                    and ln.positions.get(tp, -1) > last
                    and tp not in ln.conflicted
                ),
                None,
            )
            if source is None:
                break
            chunker.cut_at_boundary(last + 1)  # follows the plan: one cut, no records
            if tp not in catchup.copying:
                catchup.copying.add(tp)
                log.info(
                    "catchup_copying",
                    extra=fields(
                        store=lane.name,
                        source=source.name,
                        topic=tp[0],
                        partition=tp[1],
                        first=first,
                    ),
                )
            self._submit(lane, self._copy_job(source, tp, first, last))
            moved = True
        return moved

    def _copy_job(self, source: Lane, tp: TP, first: int, last: int) -> ChunkJob:
        key = object_key(tp[0], tp[1], first, last)

        def work() -> EncodedChunk:
            try:
                data = source.store.read(key)
            except StoreError as exc:
                raise CopyFailed(source.name, key, str(exc)) from None
            meta = object_metadata(data)
            expected = {
                "topic": tp[0],
                "partition": str(tp[1]),
                "first_offset": str(first),
                "last_offset": str(last),
            }
            if any(meta.get(k) != v for k, v in expected.items()):
                raise CopyFailed(source.name, key, "its header does not match its key")
            return EncodedChunk(
                topic=tp[0],
                partition=tp[1],
                first=first,
                last=last,
                key=key,
                data=data,
                md5=hashlib.md5(data).digest(),
                records=int(meta.get("records", "0")),
                metadata=meta,
            )

        return ChunkJob(
            topic=tp[0],
            partition=tp[1],
            first=first,
            last=last,
            records=0,
            # Unknown until read (a compressed object is well under the raw bound); counted
            # as a quarter of the lane's share at most, so copies never make it "too slow".
            nbytes=min(self.settings.chunk_max_bytes // 2, self._max_lane_bytes // 4),
            encoded=self._copier.submit(work),
        )

    def _join_live(self, lane: Lane, tp: TP, at: int) -> None:
        lane.live.add(tp)
        lane.dispatched[tp] = at

    # ------------------------------------------------------------------ orphans and plans
    def _list_cuts(self, lane: Lane, tp: TP, start: int) -> list[tuple[int, int]]:
        out = []
        listing = self._store_call(
            lambda: list(
                lane.store.list(
                    partition_prefix(*tp), start_after=offset_marker(tp[0], tp[1], start)
                )
            )
        )
        for info in listing:
            key = parse_key(info.key)
            if (
                key is not None
                and key.topic == tp[0]
                and key.partition == tp[1]
                and key.first >= start
            ):
                out.append((key.first, key.last))
        return out

    def _reconcile_orphans(
        self,
        lane: Lane,
        tp: TP,
        position: int,
        plan: CutPlan,
        listed: list[tuple[int, int]] | None = None,
    ) -> list[tuple[int, int]]:
        """Objects past the lane's committed position were written but never committed (a
        crash between put and commit), or are there already (a replay). One that matches a
        known cut is kept (the next put finds it already present); one that overlaps a known
        cut differently was never committed by anyone and would double offsets: it is deleted.
        Others join the plan. Returns the cuts of the objects kept."""
        if listed is None:
            listed = self._list_cuts(lane, tp, position)
        kept = []
        for first, last in listed:
            if first < position:
                continue
            if plan.end_for(first) == last:
                kept.append((first, last))
                continue
            if plan.overlapping(first, last):
                key = object_key(tp[0], tp[1], first, last)
                log.warning(
                    "uncommitted_object_deleted",
                    extra=fields(
                        store=lane.name,
                        topic=tp[0],
                        partition=tp[1],
                        first=first,
                        last=last,
                        key=key,
                    ),
                )
                self._store_call(functools.partial(lane.store.delete, key))
            else:
                plan.add(first, last)
                kept.append((first, last))
        return kept

    def _fast_forward(self, lane: Lane, tp: TP, position: int, kept: list[tuple[int, int]]) -> int:
        """Move a lane's position past its own objects that follow it without a gap (a replay
        over data already present, or objects written but not committed before a crash):
        each holds every good record of its range, so nothing needs reading again."""
        ends = dict(kept)
        moved = position
        while moved in ends:
            moved = ends[moved] + 1
        if moved != position:
            lane.positions[tp] = moved
            log.info(
                "position_fast_forwarded",
                extra=fields(
                    store=lane.name, topic=tp[0], partition=tp[1], first=position, to=moved
                ),
            )
        return moved

    def _prepare(self, tp: TP) -> PartitionState:
        """Decide where a newly assigned partition starts and which cuts it must follow."""
        commits: dict[str, int | None] = {}
        for lane in self.lanes:
            assert lane.progress is not None
            commits[lane.name] = lane.progress.committed([tp]).get(tp)
        assert self._consumer is not None
        low, _high = self._consumer.get_watermark_offsets(KafkaTP(*tp), timeout=10, cached=False)
        low = max(low, 0)
        pos = {name: (c if c is not None else low) for name, c in commits.items()}
        up = [ln for ln in self.lanes if ln.mode is LaneMode.UP]
        start = max(pos.values())
        floor = min(pos.values())
        plan = CutPlan()
        state = PartitionState(
            tp=tp, chunker=PartitionChunker(tp[0], tp[1], self.rules, start, plan), plan=plan
        )
        for lane in self.lanes:
            lane.positions[tp] = pos[lane.name]
            lane.committed[tp] = pos[lane.name]
            self.metrics.replica_committed.labels(lane.name, tp[0], str(tp[1])).set(pos[lane.name])
        # Committed objects first (they are authoritative), then uncommitted ones.
        listed: dict[str, list[tuple[int, int]]] = {}
        for lane in self.lanes:
            if lane.mode is not LaneMode.UP:
                continue
            try:
                listed[lane.name] = self._list_cuts(lane, tp, floor)
            except StoreError as exc:
                self._mark_down(lane, str(exc))
        for lane in self.lanes:
            for first, last in listed.get(lane.name, []):
                if last < pos[lane.name]:
                    try:
                        plan.add(first, last)
                    except PlanConflict as exc:
                        log.error(
                            "stores_disagree",
                            extra=fields(topic=tp[0], partition=tp[1], error=str(exc)),
                        )
        # A store that is down but ahead of every reachable one has cuts nobody else knows:
        # writing that range now could cut differently from it. Wait until it answers.
        known_until = max([floor] + [pos[ln.name] for ln in self.lanes if ln.name in listed])
        state.ready = known_until >= start
        if not state.ready:
            log.warning(
                "partition_waits_for_store",
                extra=fields(
                    topic=tp[0],
                    partition=tp[1],
                    stores=[ln.name for ln in self.lanes if ln.name not in listed],
                ),
            )
            return state
        ready_lanes = []
        for lane in up:
            if lane.name not in listed:
                continue
            try:
                kept = self._reconcile_orphans(lane, tp, pos[lane.name], plan, listed[lane.name])
            except StoreError as exc:
                self._mark_down(lane, str(exc))
                continue
            if commits[lane.name] is not None:
                # Only from a real commit: with none (a new group, or a broker that lost its
                # log and its groups) objects under these offsets may hold other records, and
                # writing the partition again is what reveals it (as conflicts).
                pos[lane.name] = self._fast_forward(lane, tp, pos[lane.name], kept)
            ready_lanes.append(lane)
        if max(pos.values()) != start:  # a lane moved past its own objects
            start = max(pos.values())
            state.chunker = PartitionChunker(tp[0], tp[1], self.rules, start, plan)
        for lane in ready_lanes:
            if pos[lane.name] >= start:
                self._join_live(lane, tp, start)
        return state

    def _retry_prepare(self, state: PartitionState) -> None:
        for lane in self.lanes:
            if lane.mode is LaneMode.DOWN and lane.probe is None:
                try:
                    self._store_call(lane.store.health_check)
                except StoreError:
                    continue
                lane.mode = LaneMode.UP
        fresh = self._prepare(state.tp)
        if fresh.ready:
            self.parts[state.tp] = fresh
            assert self._consumer is not None
            self._consumer.seek(KafkaTP(state.tp[0], state.tp[1], fresh.chunker.position))
            for lane in self.lanes:
                if lane.mode is LaneMode.UP and state.tp not in lane.live and lane.catchup is None:
                    self._start_catchup(lane)

    # ------------------------------------------------------------------ rebalance
    def _on_assign(self, consumer: Consumer, partitions: list[KafkaTP]) -> None:
        self._drop_judged()
        self.broker_up = True
        log.info(
            "partitions_assigning",
            extra=fields(partitions=sorted(f"{k.topic}/{k.partition}" for k in partitions)),
        )
        assigned: list[KafkaTP] = []
        for ktp in partitions:
            tp = (ktp.topic, ktp.partition)
            try:
                state = self._prepare(tp)
            except Stopping:
                # Stopping while a store is listed: the partitions not prepared yet are not
                # taken (nothing was read or written for them); the shutdown follows.
                log.warning(
                    "assignment_abandoned",
                    extra=fields(
                        partitions=sorted(
                            f"{k.topic}/{k.partition}"
                            for k in partitions
                            if (k.topic, k.partition) not in self.parts
                        )
                    ),
                )
                consumer.assign(assigned)
                return
            self.parts[tp] = state
            assigned.append(KafkaTP(tp[0], tp[1], state.chunker.position))
            log.info(
                "partition_assigned",
                extra=fields(
                    topic=tp[0], partition=tp[1], start=state.chunker.position, ready=state.ready
                ),
            )
        consumer.assign(assigned)
        for lane in self.lanes:
            if lane.mode is LaneMode.UP and lane.catchup is None:
                self._start_catchup(lane)

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaTP]) -> None:
        self._drop_judged()
        tps = {(k.topic, k.partition) for k in partitions}
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        if self._stop_deadline is not None:  # a revoke of the shutdown's: its own bound
            deadline = min(deadline, self._stop_deadline)
        for lane in self.lanes:
            self._drain(lane, tps, deadline)
        self._commit(force=True, dlq_timeout=max(deadline - time.monotonic(), 1.0))
        for tp in tps:
            self.parts.pop(tp, None)
            for lane in self.lanes:
                lane.live.discard(tp)
                lane.conflicted.discard(tp)
                lane.positions.pop(tp, None)
                lane.committed.pop(tp, None)
                lane.dispatched.pop(tp, None)
                lane.inflight.pop(tp, None)
                if lane.catchup is not None:
                    lane.catchup.chunkers.pop(tp, None)
        for lane in self.lanes:
            if lane.catchup is not None:
                remaining = [
                    KafkaTP(t, p, c.position) for (t, p), c in lane.catchup.chunkers.items()
                ]
                if remaining:
                    lane.catchup.consumer.assign(remaining)
                else:
                    lane.catchup.consumer.close()
                    lane.catchup = None
        log.info("partitions_revoked", extra=fields(partitions=sorted(f"{t}/{p}" for t, p in tps)))

    def _drain(self, lane: Lane, tps: set[TP] | None, deadline: float) -> None:
        """Wait (until `deadline`) for the puts of these partitions to end; cancel the rest."""
        futures = [
            item.future
            for tp, queue in lane.inflight.items()
            if tps is None or tp in tps
            for item in queue
        ]
        _done, late = wait(futures, timeout=max(deadline - time.monotonic(), 0))
        for future in late:
            future.cancel()
        self._reap(lane)

    # ------------------------------------------------------------------ commits and pausing
    def _commit(self, force: bool = False, dlq_timeout: float | None = None) -> None:
        self._last_commit = time.monotonic()
        if self._dlq is not None and self._dlq_dirty:
            try:
                self._dlq.flush(timeout=dlq_timeout or (30.0 if force else 10.0))
                self._dlq_dirty = False
                self._dlq_error = ""
                self.metrics.dead_letter_undelivered.set(0)
            except DeadLetterError as exc:
                self._dlq_error = str(exc)[:300]
                self.metrics.dead_letter_undelivered.set(self._dlq.undelivered)
                log.error(
                    "dead_letter_not_acknowledged",
                    extra=fields(error=str(exc), kept=self._dlq.undelivered),
                )
                return  # never move past a bad record that is not safely in the dead-letter topic
        for lane in self.lanes:
            changed = {
                tp: pos for tp, pos in lane.positions.items() if lane.committed.get(tp) != pos
            }
            if not changed or lane.progress is None:
                continue
            try:
                lane.progress.commit(changed)
            except KafkaException as exc:
                log.warning(
                    "commit_failed",
                    extra=fields(
                        store=lane.name,
                        offsets={f"{t}/{p}": o for (t, p), o in changed.items()},
                        error=str(exc),
                    ),
                )
                continue
            lane.committed.update(changed)
            for (topic, partition), pos in changed.items():
                self.metrics.replica_committed.labels(lane.name, topic, str(partition)).set(pos)
        for tp, state in self.parts.items():
            low = min((ln.positions.get(tp, 0) for ln in self.lanes), default=0)
            state.plan.trim_below(low)

    def _holding(self, now: float) -> bool:
        """True while a lane taking live records is past its share of the buffer, for at
        most HOLD_BEFORE_PAUSE_S; `_apply_pause` pauses its partitions after that."""
        full = any(ln.live and ln.pending_bytes > self._max_lane_bytes for ln in self.lanes)
        if not full:
            self._held_since = None
            return False
        if self._held_since is None:
            self._held_since = now
        return now - self._held_since < HOLD_BEFORE_PAUSE_S

    def _apply_pause(self, consumer: Consumer) -> None:
        """Pause a partition no lane takes, or whose lanes have been full for
        HOLD_BEFORE_PAUSE_S (until then the loop holds, see `_holding`); resume otherwise.
        Past a lane's share of the buffer, a lane is dropped to catch up only when another
        lane keeps up (its queue under half its share): when every lane's queue grows
        together, the bottleneck is shared (encoding, this process's CPU), and pausing the
        live consumer is the answer, not a catch-up that would read everything twice."""
        up = {
            ln.name: (ln.pending_bytes, bool(ln.live))
            for ln in self.lanes
            if ln.mode is LaneMode.UP
        }
        for name in too_slow(up, self._max_lane_bytes):
            self._mark_down(
                self.lane(name), "too slow: its queue passed its share of max_buffer_bytes"
            )
        to_pause, to_resume = [], []
        held = self._held_since is not None
        held_long = held and time.monotonic() - (self._held_since or 0.0) >= HOLD_BEFORE_PAUSE_S
        for tp, state in self.parts.items():
            takers = [ln for ln in self.lanes if tp in ln.live]
            full = held_long and any(ln.pending_bytes > self._max_lane_bytes for ln in takers)
            should_pause = not state.ready or not takers or full
            if should_pause and not state.paused:
                to_pause.append(KafkaTP(*tp))
                state.paused = True
            elif not should_pause and state.paused:
                to_resume.append(KafkaTP(*tp))
                state.paused = False
        if to_pause:
            consumer.pause(to_pause)
        if to_resume:
            consumer.resume(to_resume)

    def _kafka_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            if self.broker_up:
                log.error("broker_down", extra=fields(error=str(err)))
            self.broker_up = False
        else:
            log.warning("kafka_error", extra=fields(error=str(err)))

    # ------------------------------------------------------------------ introspection
    def readiness(self) -> dict[str, Any]:
        undelivered = self._dlq.undelivered if self._dlq is not None else 0
        return {
            "broker": self.broker_up,
            "stores": {lane.name: lane.mode is LaneMode.UP for lane in self.lanes},
            # A detail, not a condition of readiness: a dead-letter topic that does not
            # acknowledge holds the commits of every partition (nothing is lost), another
            # replica would not do better, and the alert says it
            # (ReplicatorDeadLetterUndelivered).
            "dead_letter": {
                "delivering": not self._dlq_error,
                "undelivered": undelivered,
                **({"error": self._dlq_error} if self._dlq_error else {}),
            },
        }

    def lane(self, name: str) -> Lane:
        return next(ln for ln in self.lanes if ln.name == name)

    def caught_up(self, ends: dict[TP, int]) -> bool:
        """True when every lane has committed `ends` (next offsets) for every partition."""
        return all(
            lane.committed.get(tp, -1) >= end for lane in self.lanes for tp, end in ends.items()
        )
