"""Intake: records from the live consumer to the chunkers, and bad ones to the dead-letter
topic.

`take_live` hands a consumed batch to the judge (this thread, or a worker process whose
verdicts `apply_judged` applies on a later turn, in order); `apply_batch` keeps the good
records in their partition's chunker and dead-letters the bad ones (`apply_verdict`); each
chunk cut goes to the lanes once (`dispatch_live`). The per-record loops are these two.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import cast

from confluent_kafka import KafkaError, Message
from confluent_kafka import TopicPartition as KafkaTP

from replicator.chunking import Chunk, PlanConflict
from replicator.judge.batch import Item, Verdict, judge_batch, judge_items, start_pool
from replicator.judge.registry import REGISTRY_UNAVAILABLE, RegistryUnavailable, SchemaResolver
from replicator.logs import EventBudget, fields
from replicator.model import TP, RawRecord, RecordHeaders
from replicator.pipeline.lanes import Lanes
from replicator.pipeline.state import PartitionState, ServiceState, coords, log
from replicator.schemas import HEADER_SIZE, SchemaSpec

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
        resolver = state.resolver
        if resolver is None:  # file mode without reloads: the registry as it is
            resolver = SchemaResolver(self.registry)
        self.resolver = resolver
        self._added: tuple[int, tuple[SchemaSpec, ...]] = (0, ())

    def start(self) -> None:
        """Start the judges' worker processes, when configured (`decode_workers`), with the
        schemas known now; the ones found later go with the batches (`added_specs`)."""
        s = self.settings
        if s.decode_workers > 0:
            later = {schema.id for schema in self.registry.added}
            specs = tuple(
                self.registry.get(i).spec() for i in self.registry.ids() if i not in later
            )
            self._added = (-1, ())
            self._judges = start_pool(s.decode_workers, specs, s.max_record_bytes)

    def added_specs(self) -> tuple[SchemaSpec, ...]:
        """The schemas added at run time, as plain values for the workers (made again only
        when the registry grew)."""
        generation, specs = self._added
        if generation != self.registry.generation:
            specs = tuple(schema.spec() for schema in self.registry.added)
            self._added = (self.registry.generation, specs)
        return specs

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
        take, keep, add = taken.append, states.append, items.append
        # The last partition's (topic, partition) -> (state, schema topic): a consumed batch
        # comes in runs of one partition, so most records skip the two dict lookups.
        last_topic: str | None = None
        last_partition = -1
        state: PartitionState | None = None
        schema_topic = ""
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka_error", extra=fields(error=str(err)))
                continue
            # No typing.cast here: it is a function call, and this runs once per record.
            topic: str = msg.topic()  # type: ignore[assignment]
            partition: int = msg.partition()  # type: ignore[assignment]
            if partition != last_partition or topic != last_topic:
                last_topic, last_partition = topic, partition
                state = parts.get((topic, partition))
                schema_topic = schema_topics.get(topic, topic)
            if state is None or not state.ready:
                continue
            take(msg)
            keep(state)
            add(
                (
                    schema_topic,
                    msg.value(),
                    msg.offset(),  # type: ignore[arg-type]
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
        future = self._judges.submit(judge_batch, items, self.added_specs())
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
        new_tuple = tuple.__new__
        parts = self.parts
        dispatch = self.dispatch_live
        taken = 0
        current: PartitionState | None = None
        valid = False
        chunker = None
        add = None
        batch = zip(msgs, states, items, verdicts, strict=True)
        for msg, state, item, verdict in batch:
            _topic, value, offset, timestamp_ms, key, headers = item
            if state is not current:
                current = state
                valid = state.ready and not state.held_until and parts.get(state.tp) is state
                chunker = state.chunker
                add = chunker.add
            if not valid:
                continue
            assert chunker is not None and add is not None  # set with `current`
            if offset < chunker.position:
                continue
            schema_id = verdict[0]
            record: RawRecord | None
            if schema_id is not None:
                # confluent-kafka gives a consumed message's headers as RecordHeaders (its
                # stubs say more) and a value here is bytes (the judge accepted it); no
                # typing.cast and no NamedTuple __new__ (two Python calls per record).
                record = new_tuple(RawRecord, (offset, timestamp_ms, key, value[5:], headers))  # type: ignore[index]
            else:
                settled = verdict
                if verdict[1] == "unknown_schema_id":  # first seen? (rare: a bad record's path)
                    settled = self.settle(item, verdict)
                    if settled[1] == REGISTRY_UNAVAILABLE:
                        self.hold(state, offset, settled[2])
                        valid = False
                        continue
                    schema_id = settled[0]
                if schema_id is not None:
                    record = RawRecord(offset, timestamp_ms, key, cast(bytes, value)[5:], headers)  # type: ignore[arg-type]
                else:
                    record, _none = self.apply_verdict(msg, settled, live=True)
            taken += 1
            try:
                chunks = add(offset, record, schema_id, now)
            except PlanConflict as exc:
                self.plan_conflict(state.tp, exc)
                continue
            if chunks:
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

    def settle(self, item: Item, verdict: Verdict) -> Verdict:
        """The verdict of a record whose schema id the judge did not know: looked up (a
        schema registry server, or the registry file as reloaded since) and judged again; a
        definite "not found" keeps `unknown_schema_id`; no answer gives REGISTRY_UNAVAILABLE
        (hold the partition, never a dead letter)."""
        value = cast(bytes, item[1])
        schema_id = int.from_bytes(value[1:HEADER_SIZE], "big")
        try:
            lookup = self.resolver.lookup(schema_id)
        except RegistryUnavailable as exc:
            return None, REGISTRY_UNAVAILABLE, str(exc)
        if lookup.problem is not None:
            return None, *lookup.problem
        schema = lookup.schema
        if schema is None:
            return verdict
        if self.registry.find(schema_id) is None:  # it belongs to none of the topics
            return (
                None,
                "wrong_topic_schema",
                self.resolver.wrong_topic_detail(schema_id, item[0], lookup),
            )
        return judge_items(self.registry, [item], self.settings.max_record_bytes)[0]

    def settle_all(self, items: list[Item], verdicts: list[Verdict]) -> list[Verdict]:
        for index, verdict in enumerate(verdicts):
            if verdict[1] == "unknown_schema_id":
                verdicts[index] = self.settle(items[index], verdict)
        return verdicts

    def hold(self, state: PartitionState, offset: int, why: str) -> None:
        """Hold a partition at `offset` (the schema registry did not answer for its record
        there): nothing from it is taken until `release`, so nothing is committed past it;
        its records already consumed are ignored (the state is replaced)."""
        held = dataclasses.replace(state, held_until=max(self.resolver.retry_at, time.monotonic()))
        self.parts[state.tp] = held
        self.metrics.partitions_held.set(sum(1 for p in self.parts.values() if p.held_until))
        log.warning(
            "partition_held",
            extra=fields(topic=state.tp[0], partition=state.tp[1], offset=offset, reason=why),
        )

    def release(self, now: float) -> None:
        """Read the held partitions again from their chunker's position once their wait is
        over (a lookup is tried again with their next unknown record)."""
        consumer = self.state.consumer
        for tp, state in list(self.parts.items()):
            if state.held_until and now >= state.held_until:
                self.parts[tp] = dataclasses.replace(state, held_until=0.0)
                if consumer is not None:
                    consumer.seek(KafkaTP(tp[0], tp[1], state.chunker.position))
                self.metrics.partitions_held.set(
                    sum(1 for p in self.parts.values() if p.held_until)
                )

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
        verdicts = judge_items(self.registry, items, self.settings.max_record_bytes)
        return self.settle_all(items, verdicts)

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
