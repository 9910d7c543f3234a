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

The loop below only orders the parts, each in a module of its own: `intake` (consume, judge,
chunk, dead-letter), `lanes` (encode once, put to each store, reap), `partitions`
(assignment: where a partition starts, which cuts it follows), `catchup`, `checkpoint`
(dead letters flushed, then each store's commit) and `backpressure` (hold, pause, drop a
slow lane). A part returns what must happen next (a lane to catch up, partitions to pause)
and the loop does it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTP

from replicator import __version__
from replicator.chunking import ChunkRules
from replicator.config import Settings
from replicator.judge.native import extension
from replicator.judge.registry import SchemaResolver
from replicator.kafka.deadletter import DeadLetterWriter, read_limit
from replicator.kafka.progress import ProgressLog
from replicator.logs import fields
from replicator.model import TP
from replicator.pipeline.backpressure import HOLD_WAIT_S, BackPressure
from replicator.pipeline.catchup import CatchUps
from replicator.pipeline.checkpoint import Checkpoint
from replicator.pipeline.daemonpool import DaemonPool
from replicator.pipeline.intake import Intake
from replicator.pipeline.lanes import Lanes
from replicator.pipeline.partitions import Partitions
from replicator.pipeline.state import (
    Lane,
    LaneMode,
    RunStats,
    ServiceState,
    Stopping,
    consumer_fetch_config,
)
from replicator.schemas import SchemaRegistry
from replicator.stores.base import Store
from replicator.telemetry.kafkastats import ClientStatistics
from replicator.telemetry.metrics import Metrics

log = logging.getLogger("replicator.pipeline")


# librdkafka's default heartbeat interval. Each heartbeat is a request the broker serves
# every interval for as long as the service runs (a shared broker's cost per second).
DEFAULT_HEARTBEAT_MS = 3000


def heartbeat_interval_ms(session_timeout_ms: int) -> int:
    """librdkafka's default (3 s), at most a third of the session timeout (Kafka's rule:
    a member misses two heartbeats before its session ends), at least 500 ms."""
    return max(min(DEFAULT_HEARTBEAT_MS, session_timeout_ms // 3), 500)


def live_consumer_config(settings: Settings) -> dict[str, Any]:
    """The live consumer's settings (the group member that owns partitions).

    On SIGTERM the consumer is closed (`Consumer.close()`), which sends LeaveGroup, also
    while its JoinGroup is still pending: the group rebalances at once instead of waiting
    for the session to expire. Nothing is ever committed to this group (each store's
    progress is a group of its own, see kafka/progress.py)."""
    return {
        **settings.kafka_common(),
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
        **consumer_fetch_config(settings.fetch_buffer_kbytes),
        "heartbeat.interval.ms": heartbeat_interval_ms(settings.session_timeout_ms),
        "partition.assignment.strategy": "range",
        "enable.partition.eof": False,
        "client.id": settings.client_id(f"replicator-{__version__}"),
    }


class Replicator:
    """The service loop over its parts; one thread runs it."""

    def __init__(
        self,
        settings: Settings,
        stores: list[Store],
        registry: SchemaRegistry,
        metrics: Metrics | None = None,
        resolver: SchemaResolver | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.metrics.schema_registry_up.set(1)
        if resolver is None:
            resolver = SchemaResolver.from_settings(
                settings, registry, on_change=self._registry_changed
            )
        else:
            resolver.on_change = self._registry_changed
        self.resolver = resolver
        self._reload_asked = threading.Event()  # SIGHUP: reload the registry file
        self._next_reload_check = 0.0
        self._schemas_seen = registry.generation
        self.kafka_conf = settings.kafka_common()
        self.lanes = [
            Lane(
                store=s,
                executor=DaemonPool(settings.write_concurrency + 1, f"put-{s.name}"),
            )
            for s in stores
        ]
        self.state = ServiceState(
            settings=settings,
            registry=registry,
            metrics=self.metrics,
            rules=ChunkRules.from_settings(settings),
            lanes=self.lanes,
            resolver=resolver,
        )
        self.parts = self.state.parts
        self.stats = self.state.stats
        self.puts = Lanes(self.state)
        self.intake = Intake(self.state, self.puts)
        self.partitions = Partitions(self.state, self.puts)
        self.catchups = CatchUps(self.state, self.puts, self.intake)
        self.checkpoint = Checkpoint(self.state)
        self.pressure = BackPressure(self.state)
        self._stop = self.state.stop
        self._abort = self.state.abort  # second signal: stop retrying puts at once
        self._next_prepare_at = 0.0
        self.last_loop_at = time.monotonic()
        self.broker_up = False

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        if self.state.stop_deadline is None:
            self.state.stop_deadline = time.monotonic() + self.settings.shutdown_timeout_s
        self._stop.set()

    def _deadline(self) -> float:
        """The shutdown's deadline: shutdown_timeout_s after the stop was asked for."""
        if self.state.stop_deadline is None:
            self.state.stop_deadline = time.monotonic() + self.settings.shutdown_timeout_s
        return self.state.stop_deadline

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
        # SIGHUP: reload the registry file (file mode); the loop does it on its next turn.
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self._reload_asked.set())

    def _registry_changed(self, state: str, failures: int) -> None:
        self.metrics.schema_registry_up.set(1 if state == "up" else 0)
        if state == "down":
            self.metrics.schema_registry_errors.inc()

    def _schemas_turn(self, now: float) -> None:
        """The registry file's reload (SIGHUP, or a new modification time, checked every
        schemas_reload_interval_s), the held partitions' release, the count of schemas
        added."""
        resolver = self.resolver
        interval = self.settings.schemas_reload_interval_s
        if resolver.schemas_dir is not None:
            if self._reload_asked.is_set():
                self._reload_asked.clear()
                resolver.reload_file()
            elif interval > 0 and now >= self._next_reload_check:
                self._next_reload_check = now + interval
                if resolver.file_changed():
                    resolver.reload_file()
        elif self._reload_asked.is_set():
            self._reload_asked.clear()
            log.info("schemas_reload_ignored", extra=fields(detail="schema registry mode"))
        if self.registry.generation != self._schemas_seen:
            self.metrics.schemas_added.inc(self.registry.generation - self._schemas_seen)
            self._schemas_seen = self.registry.generation
        self.intake.release(now)

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
                    detail="replicator.judge._fastcheck is not built (pip install builds it): "
                    "records are judged in Python, same verdicts, several times slower"
                ),
            )
        for lane in self.lanes:
            lane.progress = ProgressLog(self.kafka_conf, s.progress_group(lane.name))
            self.metrics.store_up.labels(lane.name).set(0)
            self.puts.probe_now(lane, initial=True)
        # The dead-letter producer takes what the dead-letter topic takes; a dead letter
        # over it goes without its value (replicator/kafka/deadletter.py, docs/guarantees.md).
        limit = read_limit(self.kafka_conf, s.dead_letter_topic)
        self.metrics.dead_letter_max_bytes.set(limit.max_message_bytes)
        self.state.dlq = DeadLetterWriter(
            self.kafka_conf,
            s.dead_letter_topic,
            max_message_bytes=limit.max_message_bytes,
            on_dropped=self._dead_letter_value_dropped,
        )
        self.intake.start()
        consumer = Consumer(
            {**live_consumer_config(s), "error_cb": self._kafka_error, **self._statistics()}
        )
        self.state.consumer = consumer
        consumer.subscribe(
            s.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
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

    def _statistics(self) -> dict[str, Any]:
        """The client's own statistics every kafka_statistics_interval_ms (0: none); the
        callback runs inside consume(), on this thread, once per interval."""
        interval = self.settings.kafka_statistics_interval_ms
        if interval <= 0:
            return {}
        return {"statistics.interval.ms": interval, "stats_cb": ClientStatistics(self.metrics)}

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
        self.intake.drop_judged()  # not committed: whoever owns the partitions next reads them again
        for lane in self.lanes:
            self.puts.drain(lane, None, deadline)
        abandoned = {
            lane.name: n
            for lane in self.lanes
            if (n := sum(len(q) for q in lane.inflight.values()))
        }
        if abandoned:
            log.warning("puts_abandoned", extra=fields(stores=abandoned))
        # What is left of the shutdown budget, at least a second: a dead-letter topic that
        # does not answer must not hold the exit past it.
        self.checkpoint.commit(force=True, dlq_timeout=max(deadline - time.monotonic(), 1.0))
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
        if self.state.dlq is not None:
            self.state.dlq.close(timeout=max(deadline - time.monotonic(), 1.0))
        self.intake.close()
        self.puts.close()
        self.catchups.close()
        self.state.calls.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")

    # ------------------------------------------------------------------ the loop
    def _turn(self, consumer: Consumer) -> None:
        now = time.monotonic()
        self.last_loop_at = now
        busy = any(ln.catchup is not None for ln in self.lanes)
        if self.pressure.holding(now):
            time.sleep(HOLD_WAIT_S)  # the stores drain on their threads meanwhile
        else:
            msgs = consumer.consume(num_messages=2000, timeout=0.0 if busy else 0.05)
            if msgs:
                self.broker_up = True
            self.intake.take_live(msgs)
        self.intake.apply_judged(wait=False)
        for lane in self.lanes:
            if lane.catchup is not None and lane.mode is LaneMode.UP:
                self.catchups.turn(lane)
        now = time.monotonic()
        for state in self.parts.values():
            if not state.ready:
                continue
            chunker = state.chunker
            chunk = None
            if chunker.flush_due(now):
                chunk = chunker.flush()
            elif chunker.quiet_after_burst(now):
                # At the end of the log? The high watermark of the last fetch response, kept
                # by the client (no request to the broker).
                _low, high = consumer.get_watermark_offsets(KafkaTP(*state.tp), cached=True)
                if chunker.end_due(now, high):
                    chunk = chunker.flush("end")
            if chunk is not None:
                self.intake.dispatch_live(chunk)
        for lane in self.lanes:
            if self.puts.reap(lane):  # a copy failed: read Kafka for it
                self.catchups.start(lane)
            if self.puts.check(lane, now):  # the store answers again
                self.catchups.start(lane)
        if now >= self._next_prepare_at:
            self._next_prepare_at = now + self.settings.health_interval_s
            for state in [p for p in self.parts.values() if not p.ready]:
                for lane in self.partitions.retry_prepare(state):
                    self.catchups.start(lane)
        self._schemas_turn(now)
        self._apply_pressure(consumer)
        if self.checkpoint.due(now):
            self.checkpoint.commit()

    def _apply_pressure(self, consumer: Consumer) -> None:
        for name in self.pressure.too_slow_lanes():
            self.puts.mark_down(
                self.lane(name), "too slow: its queue passed its share of max_buffer_bytes"
            )
        to_pause, to_resume = self.pressure.pauses(time.monotonic())
        if to_pause:
            consumer.pause(to_pause)
        if to_resume:
            consumer.resume(to_resume)

    # ------------------------------------------------------------------ rebalance
    def _on_assign(self, consumer: Consumer, partitions: list[KafkaTP]) -> None:
        self.intake.drop_judged()
        self.broker_up = True
        self.metrics.rebalances.labels("assigned").inc()
        assigned, complete = self.partitions.assign(partitions)
        consumer.assign(assigned)
        self.metrics.assigned.set(len(self.parts))
        if not complete:
            return  # a stop was asked for while a store was listed: the shutdown follows
        for lane in self.lanes:
            if lane.mode is LaneMode.UP and lane.catchup is None:
                self.catchups.start(lane)

    def _on_lost(self, consumer: Consumer, partitions: list[KafkaTP]) -> None:
        self._on_revoke(consumer, partitions, event="lost")

    def _on_revoke(
        self, consumer: Consumer, partitions: list[KafkaTP], event: str = "revoked"
    ) -> None:
        self.metrics.rebalances.labels(event).inc()
        self.intake.drop_judged()
        tps = {(k.topic, k.partition) for k in partitions}
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        if self.state.stop_deadline is not None:  # a revoke of the shutdown's: its own bound
            deadline = min(deadline, self.state.stop_deadline)
        for lane in self.lanes:
            if self.puts.drain(lane, tps, deadline):
                self.catchups.start(lane)
        self.checkpoint.commit(force=True, dlq_timeout=max(deadline - time.monotonic(), 1.0))
        self.partitions.forget(tps)
        self.metrics.assigned.set(len(self.parts))
        log.info("partitions_revoked", extra=fields(partitions=sorted(f"{t}/{p}" for t, p in tps)))

    def _dead_letter_value_dropped(self, topic: str, reason: str) -> None:
        self.metrics.dead_letter_values_dropped.labels(topic, reason).inc()
        self.stats.values_dropped += 1

    def _kafka_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            if self.broker_up:
                log.error("broker_down", extra=fields(error=str(err)))
            self.broker_up = False
        else:
            log.warning("kafka_error", extra=fields(error=str(err)))

    # ------------------------------------------------------------------ introspection
    def readiness(self) -> dict[str, Any]:
        dlq = self.state.dlq
        undelivered = dlq.undelivered if dlq is not None else 0
        error = self.state.dlq_error
        return {
            "broker": self.broker_up,
            "stores": {lane.name: lane.mode is LaneMode.UP for lane in self.lanes},
            # A detail, not a condition of readiness: a dead-letter topic that does not
            # acknowledge holds the commits of every partition (nothing is lost), another
            # replica would not do better, and the alert says it
            # (ReplicatorDeadLetterUndelivered).
            "dead_letter": {
                "delivering": not error,
                "undelivered": undelivered,
                **({"error": error} if error else {}),
            },
            # A detail too, for the same reasons: the held partitions wait (nothing is
            # dead-lettered, nothing committed past them) and the alert says it
            # (ReplicatorSchemaRegistryDown).
            "schema_registry": {
                "mode": "server" if self.settings.schema_registry_url else "file",
                "available": self.resolver.outage is None,
                "held_partitions": sorted(
                    f"{t}/{p}" for (t, p), st in list(self.parts.items()) if st.held_until
                ),
                **({"error": self.resolver.outage} if self.resolver.outage else {}),
            },
        }

    def lane(self, name: str) -> Lane:
        return next(ln for ln in self.lanes if ln.name == name)

    def caught_up(self, ends: dict[TP, int]) -> bool:
        """True when every lane has committed `ends` (next offsets) for every partition."""
        return all(
            lane.committed.get(tp, -1) >= end for lane in self.lanes for tp, end in ends.items()
        )
