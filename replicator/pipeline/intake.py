"""Intake: records from the live consumer to the chunkers, and bad ones to the dead-letter
topic.

`take_live` hands a consumed batch to the judge (this thread, or a worker process whose
verdicts `apply_judged` applies on a later turn, in order); `apply_batch` keeps the good
records in their partition's chunker and dead-letters the bad ones (`apply_verdict`); each
chunk cut goes to the lanes once (`dispatch_live`). The per-record loops are these two.
"""

from __future__ import annotations

import functools
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import cast

from confluent_kafka import KafkaError, Message

from replicator.chunking import Chunk, PlanConflict
from replicator.judge.batch import Item, Verdict, judge_batch, judge_items, start_pool
from replicator.logs import EventBudget, fields
from replicator.model import TP, RawRecord, RecordHeaders
from replicator.pipeline.lanes import Lanes
from replicator.pipeline.state import PartitionState, ServiceState, coords, log

MAX_JUDGED_BATCHES = 4  # batches with a judge at once: bounds memory and latency


class Intake:
    def __init__(self, state: ServiceState, puts: Lanes) -> None:
        self.state = state
        self.settings = state.settings
        self.registry = state.registry
        self.metrics = state.metrics
        self.lanes = state.lanes
        self.parts = state.parts
        self.stats = state.stats
        self.puts = puts
        self._judges: ProcessPoolExecutor | None = None
        self._judged: deque[
            tuple[
                list[Message],
                list[PartitionState],
                list[Item],
                Future[list[Verdict]],
            ]
        ] = deque()
        self._schema_topics = dict(state.settings.schema_topics)
        self._dead_letter_logs = EventBudget(per_window=100, window_s=60.0)
        self._consumed = functools.cache(self.metrics.consumed.labels)

    def start(self) -> None:
        """Start the judges' worker processes, when configured (`decode_workers`)."""
        s = self.settings
        if s.decode_workers > 0:
            self._judges = start_pool(s.decode_workers, s.schemas_dir, s.max_record_bytes)

    def close(self) -> None:
        if self._judges is not None:
            self._judges.shutdown(wait=False, cancel_futures=True)

    def take_live(self, msgs: list[Message]) -> None:
        """Hand consumed records to the judge: a worker process when configured (the batch's
        verdicts are applied on a later turn, in order), else this thread.

        This loop and `apply_batch` run once per record on the service's busiest thread:
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
        # Records consumed per topic: counted per batch (one C pass over the batch's
        # partition states, one increment per partition), never in the loop above.
        consumed = self._consumed
        for state, count in Counter(states).items():
            consumed(state.tp[0]).inc(count)
        # A chunk's envelopes are made when it is encoded (`container`, in C), so that an open
        # chunk holds each record's body once, not twice (peak RSS).
        if self._judges is None:
            verdicts = judge_items(self.registry, items, self.settings.max_record_bytes)
            self.apply_batch(taken, states, items, verdicts)
            return
        future = self._judges.submit(judge_batch, items)
        self._judged.append((taken, states, items, future))

    def apply_judged(self, wait: bool) -> None:
        """Apply the verdicts of finished batches, oldest first (all of them when `wait`)."""
        while self._judged and (
            wait or self._judged[0][3].done() or len(self._judged) > MAX_JUDGED_BATCHES
        ):
            taken, states, items, future = self._judged.popleft()
            self.apply_batch(taken, states, items, future.result())

    def drop_judged(self) -> None:
        """Forget batches judged for partition states that no longer exist (a rebalance or a
        seek makes the consumer fetch them again, from the committed position)."""
        for *_batch, future in self._judged:
            future.cancel()
        self._judged.clear()

    def apply_batch(
        self,
        msgs: list[Message],
        states: list[PartitionState],
        items: list[Item],
        verdicts: list[Verdict],
    ) -> None:
        """Chunk a judged batch, in order: good records are kept, bad ones dead-lettered.
        A record of a partition state that was replaced since (a rebalance, a seek) or that
        is below its chunker's position (already covered) is ignored. The record's fields
        come from `items`, read once from the message by `take_live`."""
        now = time.monotonic()
        parts = self.parts
        dispatch = self.dispatch_live
        taken = 0
        current: PartitionState | None = None
        valid = False
        batch = zip(msgs, states, items, verdicts, strict=True)
        for msg, state, (_topic, value, offset, timestamp_ms, key, headers), verdict in batch:
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
                # confluent-kafka gives a consumed message's headers as RecordHeaders (its
                # stubs say more); no cast here: this runs once per record.
                record = RawRecord(offset, timestamp_ms, key, cast(bytes, value)[5:], headers)  # type: ignore[arg-type]
            else:
                record, _none = self.apply_verdict(msg, verdict, live=True)
            try:
                chunks = chunker.add(offset, record, schema_id, now)
            except PlanConflict as exc:
                self.plan_conflict(state.tp, exc)
                continue
            for chunk in chunks:
                dispatch(chunk)
        self.stats.records_in += taken

    def apply_verdict(
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
                offset=offset,
                timestamp_ms=ts,
                key=msg.key(),
                body=value[5:],
                headers=cast(RecordHeaders | None, msg.headers()),
            ), schema_id
        if live:
            dlq = self.state.dlq
            assert dlq is not None
            dlq.send(
                topic=topic,
                partition=partition,
                offset=offset,
                timestamp_ms=ts,
                key=msg.key(),
                value=value,
                reason=reason,
                detail=detail,
                headers=cast(RecordHeaders | None, msg.headers()),
            )
            self.state.dlq_dirty = True
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

    def judge_now(self, msgs: list[Message]) -> list[Verdict]:
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
        return judge_items(self.registry, items, self.settings.max_record_bytes)

    def plan_conflict(self, tp: TP, exc: PlanConflict) -> None:
        log.error("cut_conflict", extra=fields(topic=tp[0], partition=tp[1], error=str(exc)))
        for lane in self.lanes:
            lane.conflicted.add(tp)
            lane.live.discard(tp)

    def dispatch_live(self, chunk: Chunk) -> None:
        self.metrics.chunk_records.observe(chunk.last - chunk.first + 1)
        lanes = [ln for ln in self.lanes if (chunk.topic, chunk.partition) in ln.live]
        if not lanes:
            return
        job = self.puts.encode(chunk)
        for lane in lanes:
            self.puts.submit(lane, job)
