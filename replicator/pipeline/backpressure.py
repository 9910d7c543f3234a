"""Back-pressure: memory stays bounded whatever the stores do.

A lane past its share of max_buffer_bytes first holds the loop (`holding`); past
HOLD_BEFORE_PAUSE_S its partitions are paused (`pauses`). A lane that falls behind while
another keeps up is dropped from the live stream to catch up later (`too_slow`). This part
decides; the loop applies (pause and resume the consumer, mark a lane down).
"""

from __future__ import annotations

from confluent_kafka import TopicPartition as KafkaTP

from replicator.pipeline.state import LaneMode, ServiceState

# A lane past its share of max_buffer_bytes first holds the loop: it stops taking records
# from the consumer's queue (librdkafka stops fetching once that queue is full) while the
# stores drain. Only past this long does it pause the partitions: a pause throws away what
# librdkafka has fetched and resuming waits for a new fetch (about 0.5 s each time, measured
# in the benchmark), while a hold costs nothing; but a held loop serves no rebalance, so a
# long wait goes back to pausing, which does.
HOLD_BEFORE_PAUSE_S = 1.0
HOLD_WAIT_S = 0.005


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


class BackPressure:
    def __init__(self, state: ServiceState) -> None:
        self.lanes = state.lanes
        self.parts = state.parts
        self._max_lane_bytes = state.max_lane_bytes
        self._held_since: float | None = None  # since when a full lane holds the loop

    def holding(self, now: float) -> bool:
        """True while a lane taking live records is past its share of the buffer, for at
        most HOLD_BEFORE_PAUSE_S; `pauses` pauses its partitions after that."""
        full = any(ln.live and ln.pending_bytes > self._max_lane_bytes for ln in self.lanes)
        if not full:
            self._held_since = None
            return False
        if self._held_since is None:
            self._held_since = now
        return now - self._held_since < HOLD_BEFORE_PAUSE_S

    def too_slow_lanes(self) -> list[str]:
        """The UP lanes to drop from the live stream now (see `too_slow`)."""
        up = {
            ln.name: (ln.pending_bytes, bool(ln.live))
            for ln in self.lanes
            if ln.mode is LaneMode.UP
        }
        return too_slow(up, self._max_lane_bytes)

    def pauses(self, now: float) -> tuple[list[KafkaTP], list[KafkaTP]]:
        """Pause a partition no lane takes, or whose lanes have been full for
        HOLD_BEFORE_PAUSE_S (until then the loop holds, see `holding`); resume otherwise.
        The partitions to pause and to resume (each state's `paused` follows).
        Past a lane's share of the buffer, a lane is dropped to catch up only when another
        lane keeps up (its queue under half its share): when every lane's queue grows
        together, the bottleneck is shared (encoding, this process's CPU), and pausing the
        live consumer is the answer, not a catch-up that would read everything twice."""
        to_pause, to_resume = [], []
        held = self._held_since is not None
        held_long = held and now - (self._held_since or 0.0) >= HOLD_BEFORE_PAUSE_S
        for tp, state in self.parts.items():
            takers = [ln for ln in self.lanes if tp in ln.live]
            full = held_long and any(ln.pending_bytes > self._max_lane_bytes for ln in takers)
            should_pause = not state.ready or not takers or full or state.held_until > 0
            if should_pause and not state.paused:
                to_pause.append(KafkaTP(*tp))
                state.paused = True
            elif not should_pause and state.paused:
                to_resume.append(KafkaTP(*tp))
                state.paused = False
        return to_pause, to_resume
