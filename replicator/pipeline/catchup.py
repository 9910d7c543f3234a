"""Catch-up: a lane that fell out of the live stream comes back to it.

From the lane's durable position, `start` reconciles what the store holds past it, then
either joins the live stream at once or gives the lane a consumer of its own; `turn`
copies, from another store, the objects of the known cuts it has written already (the same
bytes, no decoding), and reads Kafka for the rest, cutting exactly as the live stream did
(the partition's CutPlan); a partition joins the live stream again when it reaches the live
chunker's open chunk.
"""

from __future__ import annotations

import hashlib
import time

from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KafkaTP

from replicator.chunking import PartitionChunker, PlanConflict
from replicator.container import EncodedChunk, object_metadata
from replicator.errors import StoreError
from replicator.judge.registry import REGISTRY_UNAVAILABLE
from replicator.keys import object_key
from replicator.logs import fields
from replicator.model import TP
from replicator.pipeline.daemonpool import DaemonPool
from replicator.pipeline.intake import Intake
from replicator.pipeline.lanes import Lanes
from replicator.pipeline.partitions import reconcile_orphans
from replicator.pipeline.state import (
    CatchUp,
    ChunkJob,
    CopyFailed,
    Lane,
    LaneMode,
    ServiceState,
    Stopping,
    consumer_fetch_config,
    coords,
    log,
)


class CatchUps:
    """Every lagging lane's catch-up (`Lane.catchup`), turned by the loop."""

    def __init__(self, state: ServiceState, puts: Lanes, intake: Intake) -> None:
        self.state = state
        self.settings = state.settings
        self.metrics = state.metrics
        self.rules = state.rules
        self.lanes = state.lanes
        self.parts = state.parts
        self.kafka_conf = state.settings.kafka_common()
        self.puts = puts
        self.intake = intake
        self._copier = DaemonPool(4, "copy")  # reads another store: may hang with it

    def close(self) -> None:
        self._copier.shutdown(wait=False, cancel_futures=True)

    def start(self, lane: Lane) -> None:
        """Bring every partition of `lane` that is behind the live stream back to it."""
        catchup = lane.catchup or CatchUp(consumer=self._new_consumer(lane))
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
                reconcile_orphans(self.state, lane, tp, pos, state.plan)
            except StoreError as exc:
                if lane.catchup is None:
                    catchup.consumer.close()
                self.puts.mark_down(lane, str(exc))
                return
            except Stopping:
                if lane.catchup is None:
                    catchup.consumer.close()
                raise
            if pos >= state.chunker.open_first:
                self.puts.join_live(lane, tp, state.chunker.open_first)
                continue
            catchup.chunkers[tp] = PartitionChunker(
                tp[0], tp[1], self.rules, pos, state.plan, self.state.firsts.partition(tp)
            )
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

    def _new_consumer(self, lane: Lane) -> Consumer:
        return Consumer(
            {
                **self.kafka_conf,
                "group.id": f"{self.settings.group_id}.{lane.name}.catchup",
                **consumer_fetch_config(self.settings.fetch_buffer_kbytes),
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
            }
        )

    def turn(self, lane: Lane) -> None:
        catchup = lane.catchup
        assert catchup is not None
        if lane.pending_bytes > self.state.max_lane_bytes // 2:
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
                if lane.pending_bytes > self.state.max_lane_bytes // 2:
                    return  # more to copy once these are written: Kafka can wait
        msgs = [
            m for m in catchup.consumer.consume(num_messages=2000, timeout=0.0) if not m.error()
        ]
        verdicts = self.intake.judge_now(msgs)
        done: list[TP] = []
        held: set[TP] = set()
        for msg, verdict in zip(msgs, verdicts, strict=True):
            topic, partition, offset = coords(msg)
            tp = (topic, partition)
            chunker = catchup.chunkers.get(tp)
            state = self.parts.get(tp)
            if chunker is None or state is None or tp in done or tp in held:
                continue
            boundary = state.chunker.open_first
            if offset >= boundary:
                chunks = chunker.cut_at_boundary(boundary)
            elif verdict[1] == REGISTRY_UNAVAILABLE:
                # The schema registry did not answer for this record: read it again later
                # (the resolver waits its backoff before asking again), never skip it.
                held.add(tp)
                catchup.consumer.seek(KafkaTP(topic, partition, offset))
                continue
            else:
                record, schema_id = self.intake.apply_verdict(msg, verdict, live=False)
                try:
                    chunks = chunker.add(offset, record, schema_id, time.monotonic())
                except PlanConflict as exc:
                    self.intake.plan_conflict(tp, exc)
                    done.append(tp)
                    continue
            for chunk in chunks:
                self.puts.submit(lane, self.puts.encode(chunk))
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
                self.puts.join_live(lane, tp, chunker_done.open_first)
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
        while lane.pending_bytes <= self.state.max_lane_bytes // 2:
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
            self.puts.submit(lane, self._copy_job(source, tp, first, last))
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
            nbytes=min(self.settings.chunk_max_bytes // 2, self.state.max_lane_bytes // 4),
            encoded=self._copier.submit(work),
        )
