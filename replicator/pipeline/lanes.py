"""The lanes: one per store, each with its pool of puts, its queue per partition and its
positions. A chunk is encoded once (`encode`) and the same bytes go to every lane that takes
its partition (`submit`); `reap` takes the finished puts in order and moves the positions
the checkpoint commits. A lane whose puts keep failing is marked DOWN (`mark_down`), probed
(`check`), and handed to the catch-up when it answers again.
"""

from __future__ import annotations

import random
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait

from tenacity import RetryCallState, Retrying, retry_if_exception

from replicator.chunking import Chunk
from replicator.container import EncodedChunk, encode_chunk, same_chunk
from replicator.errors import ConflictError, StoreError
from replicator.logs import fields
from replicator.model import TP
from replicator.pipeline.state import (
    ChunkJob,
    CopyFailed,
    InFlight,
    Lane,
    LaneMode,
    ServiceState,
    Stopping,
    log,
)
from replicator.stores.base import PutOutcome


def put_backoff(attempt: int) -> float:
    """The wait after the `attempt`-th failed put, before jitter: 0.1 s doubling up to 5 s."""
    return min(0.1 * 2.0 ** (attempt - 1), 5.0)


class Lanes:
    """The puts of every lane (the stores' threads run them; this runs on the loop's)."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.settings = state.settings
        self.registry = state.registry
        self.metrics = state.metrics
        self.lanes = state.lanes
        self.stats = state.stats
        self._abort = state.abort
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")

    def close(self) -> None:
        self._encoder.shutdown(wait=False, cancel_futures=True)

    def encode(self, chunk: Chunk) -> ChunkJob:
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
            nbytes=(
                chunk.body_bytes
                if chunk.body_bytes is not None
                else sum(len(r.body) for r in chunk.records)
            )
            + 64,
            encoded=self._encoder.submit(work),
        )

    def submit(self, lane: Lane, enc: ChunkJob) -> None:
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
            self.mark_down(lane, f"position mismatch on {tp[0]}/{tp[1]}")
            return
        future = lane.executor.submit(self.put, lane, enc)
        lane.inflight.setdefault(tp, deque()).append(InFlight(enc, future))
        lane.dispatched[tp] = enc.last + 1
        lane.pending_bytes += enc.nbytes

    def put(self, lane: Lane, job: ChunkJob) -> PutOutcome:
        """One create-if-absent, retried while the error is transient: waits of 0.1 s
        doubling up to 5 s, each jittered to 50-150 %, while the next wait ends before
        `write_retry_s` has passed and the service is not aborting."""
        enc = job.encoded.result()
        deadline = time.monotonic() + self.settings.write_retry_s

        def attempt() -> PutOutcome:
            started = time.monotonic()
            try:
                try:
                    outcome = lane.store.create_if_absent(enc.key, enc.data, enc.md5, enc.metadata)
                except ConflictError:
                    # The previous version's object for this chunk (format 2, no headers) is
                    # this chunk: kept as it is, never overwritten (`container.same_chunk`).
                    if not same_chunk(lane.store.read(enc.key), enc.data):
                        raise
                    log.info(
                        "kept_earlier_format",
                        extra=fields(store=lane.name, key=enc.key),
                    )
                    outcome = PutOutcome.ALREADY_PRESENT
            except StoreError as exc:
                self.metrics.store_errors.labels(lane.name, exc.kind.value).inc()
                raise
            self.metrics.put_seconds.labels(lane.name).observe(time.monotonic() - started)
            self.metrics.store_last_put.labels(lane.name).set(time.time())
            return outcome

        def give_up(state: RetryCallState) -> bool:
            # Not past write_retry_s, not aborting, and not past the shutdown's deadline (a
            # put that cannot finish by then is abandoned, uncommitted).
            next_wait = put_backoff(state.attempt_number)
            stop_deadline = self.state.stop_deadline
            now = time.monotonic()
            return (
                self._abort.is_set()
                or now + next_wait > deadline
                or (stop_deadline is not None and now > stop_deadline)
            )

        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, StoreError) and e.retriable),
            wait=lambda state: put_backoff(state.attempt_number) * (0.5 + random.random()),
            stop=give_up,
            reraise=True,
        )
        return retrying(attempt)

    def reap(self, lane: Lane) -> bool:
        """Take the lane's finished puts, in order per partition: move its positions, count
        the outcomes, stop a partition on a conflict, mark the lane down on an error. True
        when a copy failed and the lane's catch-up must start again (reading Kafka)."""
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
                    self.count(lane, outcome.value, item.chunk)
                elif isinstance(exc, ConflictError):
                    self.count(lane, "conflict", item.chunk)
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
                    self.cancel_partition(lane, tp)
                elif isinstance(exc, CopyFailed):
                    log.warning(
                        "catchup_copy_failed",
                        extra=fields(
                            store=lane.name, source=exc.source, key=exc.key, error=exc.detail
                        ),
                    )
                    self.cancel_partition(lane, tp)
                    restart.append((tp, item.chunk.last + 1))
                else:
                    self.mark_down(lane, str(exc))
                    self.cancel_partition(lane, tp)
        if restart and lane.mode is LaneMode.UP and lane.catchup is not None:
            for tp, until in restart:
                lane.catchup.chunkers.pop(tp, None)
                lane.catchup.kafka_until[tp] = until
            return True  # the catch-up starts again, from the lane's durable position
        return False

    def count(self, lane: Lane, outcome: str, job: ChunkJob) -> None:
        # The encoded chunk's count: a copied object's is known only once it is read.
        records = job.encoded.result().records if job.encoded.done() else job.records
        self.metrics.objects.labels(lane.name, outcome).inc()
        self.metrics.records.labels(lane.name, outcome).inc(records)
        per = self.stats.objects.setdefault(lane.name, {})
        per[outcome] = per.get(outcome, 0) + 1
        if outcome != "conflict":
            self.stats.records_out[lane.name] = self.stats.records_out.get(lane.name, 0) + records

    def cancel_partition(self, lane: Lane, tp: TP) -> None:
        """Drop what is queued for a partition; what already runs finishes by itself."""
        queue = lane.inflight.get(tp)
        if not queue:
            lane.dispatched.pop(tp, None)
            return
        for item in queue:
            item.future.cancel()
        lane.dispatched.pop(tp, None)

    def mark_down(self, lane: Lane, reason: str) -> None:
        if lane.mode is LaneMode.DOWN:
            return
        log.error("store_down", extra=fields(store=lane.name, reason=reason))
        lane.mode = LaneMode.DOWN
        lane.down_reason = reason
        lane.live.clear()
        for tp in list(lane.inflight):
            self.cancel_partition(lane, tp)
        if lane.catchup is not None:
            lane.catchup.consumer.close()
            lane.catchup = None
            self.metrics.catching_up.labels(lane.name).set(0)
        lane.next_probe_at = time.monotonic() + self.settings.health_interval_s
        self.metrics.store_up.labels(lane.name).set(0)

    def probe_now(self, lane: Lane, initial: bool = False) -> None:
        try:
            self.state.store_call(lane.store.health_check)
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

    def check(self, lane: Lane, now: float) -> bool:
        """Probe a DOWN lane every health_interval_s, once its running puts have ended; True
        when it answers again (its catch-up must start)."""
        if lane.mode is LaneMode.DOWN:
            if any(lane.inflight.values()):
                return False  # wait for the puts already running to end
            if lane.probe is None and now >= lane.next_probe_at:
                lane.probe = lane.executor.submit(lane.store.health_check)
            elif lane.probe is not None and lane.probe.done():
                probe, lane.probe = lane.probe, None
                if probe.exception() is None:
                    log.info("store_back", extra=fields(store=lane.name))
                    lane.mode = LaneMode.UP
                    self.metrics.store_up.labels(lane.name).set(1)
                    return True
                else:
                    lane.next_probe_at = now + self.settings.health_interval_s
        return False

    def drain(self, lane: Lane, tps: set[TP] | None, deadline: float) -> bool:
        """Wait (until `deadline`) for the puts of these partitions to end; cancel the rest.
        What `reap` returns."""
        futures = [
            item.future
            for tp, queue in lane.inflight.items()
            if tps is None or tp in tps
            for item in queue
        ]
        _done, late = wait(futures, timeout=max(deadline - time.monotonic(), 0))
        for future in late:
            future.cancel()
        return self.reap(lane)

    def join_live(self, lane: Lane, tp: TP, at: int) -> None:
        lane.live.add(tp)
        lane.dispatched[tp] = at
