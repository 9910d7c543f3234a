"""Checkpoint: each store's progress, committed only for what it holds.

The order is the guarantee: a commit never passes a bad record that is not safely in the
dead-letter topic, then each lane commits its durable positions to its own group
`<group_id>.<store>`, then the cut plans forget what every lane has passed.

While dead letters are in flight, a regular commit does not wait for them: it takes the
lanes' positions with the dead-letter writer's mark (the last dead letter given, every one
for a record below those positions given before them), and commits those positions at a
later commit, once every dead letter up to the mark is acknowledged. Only when they are
not within `DLQ_WAIT_S`, and at a forced commit (a revoke, the stop), does it flush (wait
for every dead letter, sending again those that failed) and commit the current positions.
At depth, waiting at each commit for the dead letters' acknowledgement held the main loop
for a third of its time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaException

from replicator.kafka.deadletter import DeadLetterError, DeadLetterWriter
from replicator.logs import fields
from replicator.model import TP
from replicator.pipeline.state import ServiceState, log

# How long a regular commit lets the dead letters before the taken positions be acknowledged
# before it flushes (waits for them, sending again those that failed).
DLQ_WAIT_S = 5.0


@dataclass(frozen=True)
class Taken:
    """The lanes' positions, taken when every dead letter up to `mark` had been given."""

    mark: int
    positions: dict[str, dict[TP, int]]
    at: float


class Checkpoint:
    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.metrics = state.metrics
        self.lanes = state.lanes
        self.parts = state.parts
        self.interval_s = state.settings.commit_interval_s
        self._last_commit = 0.0
        self._taken: Taken | None = None  # positions waiting for their dead letters

    def due(self, now: float) -> bool:
        """True when commit_interval_s has passed since the last commit."""
        return now - self._last_commit >= self.interval_s

    def _take(self, dlq: DeadLetterWriter, now: float) -> Taken:
        return Taken(dlq.mark(), {ln.name: dict(ln.positions) for ln in self.lanes}, now)

    def _settled(self) -> None:
        self._taken = None
        self.state.dlq_dirty = False
        self.state.dlq_error = ""
        self.metrics.dead_letter_undelivered.set(0)

    def commit(self, force: bool = False, dlq_timeout: float | None = None) -> None:
        now = time.monotonic()
        self._last_commit = now
        dlq = self.state.dlq
        taken_positions: dict[str, dict[TP, int]] | None = None  # None: the current ones
        if dlq is not None and self.state.dlq_dirty:
            taken = self._taken
            if not force and (taken is None or now - taken.at < DLQ_WAIT_S):
                if taken is None or not dlq.delivered_through(taken.mark):
                    self._taken = taken or self._take(dlq, now)
                    # In flight for less than DLQ_WAIT_S is not "undelivered": the gauge (and
                    # its alert) moves only with a flush's outcome, else a steady trickle of
                    # bad records would keep it above 0 at every commit.
                    return  # nothing committed before its dead letters are acknowledged
                if taken.mark == dlq.mark():
                    self._settled()  # none given since: the current positions may go
                else:
                    taken_positions = taken.positions
                    self._taken = self._take(dlq, now)
            else:
                self._flush(dlq, force, dlq_timeout)
                if self.state.dlq_dirty:
                    return  # never move past a bad record not safely in the dead-letter topic
        self._commit_lanes(taken_positions)

    def _flush(self, dlq: DeadLetterWriter, force: bool, dlq_timeout: float | None) -> None:
        """Wait for every dead letter given (sending again those that failed); on failure
        `dlq_dirty` stays set and nothing is committed."""
        try:
            dlq.flush(timeout=dlq_timeout or (30.0 if force else 10.0))
        except DeadLetterError as exc:
            self.state.dlq_error = str(exc)[:300]
            self.metrics.dead_letter_undelivered.set(dlq.undelivered)
            log.error(
                "dead_letter_not_acknowledged",
                extra=fields(error=str(exc), kept=dlq.undelivered),
            )
            return
        self._settled()

    def _commit_lanes(self, taken: dict[str, dict[TP, int]] | None) -> None:
        """Commit each lane's positions (`taken`: those taken earlier, for the partitions
        the lane still has, never behind what it committed) where they changed."""
        for lane in self.lanes:
            if taken is None:
                changed = {
                    tp: pos for tp, pos in lane.positions.items() if lane.committed.get(tp) != pos
                }
            else:
                changed = {
                    tp: pos
                    for tp, pos in taken.get(lane.name, {}).items()
                    if tp in lane.positions and pos > lane.committed.get(tp, -1)
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
        firsts = self.state.firsts
        for tp, state in self.parts.items():
            low = min((ln.positions.get(tp, 0) for ln in self.lanes), default=0)
            state.plan.trim_below(low)
            # A store's lag is read at its committed offset: keep every chunk start from the
            # lowest one up.
            firsts.forget_below(tp, min((ln.committed.get(tp, 0) for ln in self.lanes), default=0))
