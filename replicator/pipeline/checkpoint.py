"""Checkpoint: each store's progress, committed only for what it holds.

The order is the guarantee: the dead letters are flushed first (a commit never passes a
bad record that is not safely in the dead-letter topic), then each lane commits its durable
positions to its own group `<group_id>.<store>`, then the cut plans forget what every lane
has passed.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaException

from replicator.kafka.deadletter import DeadLetterError
from replicator.logs import fields
from replicator.pipeline.state import ServiceState, log


class Checkpoint:
    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.metrics = state.metrics
        self.lanes = state.lanes
        self.parts = state.parts
        self.interval_s = state.settings.commit_interval_s
        self._last_commit = 0.0

    def due(self, now: float) -> bool:
        """True when commit_interval_s has passed since the last commit."""
        return now - self._last_commit >= self.interval_s

    def commit(self, force: bool = False, dlq_timeout: float | None = None) -> None:
        self._last_commit = time.monotonic()
        dlq = self.state.dlq
        if dlq is not None and self.state.dlq_dirty:
            try:
                dlq.flush(timeout=dlq_timeout or (30.0 if force else 10.0))
                self.state.dlq_dirty = False
                self.state.dlq_error = ""
                self.metrics.dead_letter_undelivered.set(0)
            except DeadLetterError as exc:
                self.state.dlq_error = str(exc)[:300]
                self.metrics.dead_letter_undelivered.set(dlq.undelivered)
                log.error(
                    "dead_letter_not_acknowledged",
                    extra=fields(error=str(exc), kept=dlq.undelivered),
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
            self.metrics.store_last_commit.labels(lane.name).set(time.time())
            for (topic, partition), pos in changed.items():
                self.metrics.replica_committed.labels(lane.name, topic, str(partition)).set(pos)
        for tp, state in self.parts.items():
            low = min((ln.positions.get(tp, 0) for ln in self.lanes), default=0)
            state.plan.trim_below(low)
