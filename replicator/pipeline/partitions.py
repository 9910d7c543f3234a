"""Partitions: where a newly assigned partition starts and which cuts it must follow.

At assignment (`prepare`) each store's committed offset is read, the objects already in
the reachable stores fill the partition's CutPlan (so a restart or a new owner cuts exactly
as before), objects written but never committed are kept or deleted (`reconcile_orphans`),
and a lane moves past its own objects (`fast_forward`). A partition whose cuts only a down
store knows waits (`ready` False) until `retry_prepare` finds that store answering.
"""

from __future__ import annotations

import functools

from confluent_kafka import TopicPartition as KafkaTP

from replicator.chunking import CutPlan, PartitionChunker, PlanConflict
from replicator.errors import StoreError
from replicator.keys import object_key, offset_marker, parse_key, partition_prefix
from replicator.logs import fields
from replicator.model import TP
from replicator.pipeline.lanes import Lanes
from replicator.pipeline.state import (
    Lane,
    LaneMode,
    PartitionState,
    ServiceState,
    Stopping,
    log,
)


def list_cuts(state: ServiceState, lane: Lane, tp: TP, start: int) -> list[tuple[int, int]]:
    """The cuts of the lane's objects of `tp` from `start` on. The listing is a store call
    of the loop's (`ServiceState.store_call`): `Stopping` when a stop is asked for meanwhile."""
    out = []
    listing = state.store_call(
        lambda: list(
            lane.store.list(partition_prefix(*tp), start_after=offset_marker(tp[0], tp[1], start))
        )
    )
    for info in listing:
        key = parse_key(info.key)
        if key is not None and key.topic == tp[0] and key.partition == tp[1] and key.first >= start:
            out.append((key.first, key.last))
    return out


def reconcile_orphans(
    state: ServiceState,
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
        listed = list_cuts(state, lane, tp, position)
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
            state.store_call(functools.partial(lane.store.delete, key))
        else:
            plan.add(first, last)
            kept.append((first, last))
    return kept


def fast_forward(lane: Lane, tp: TP, position: int, kept: list[tuple[int, int]]) -> int:
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
            extra=fields(store=lane.name, topic=tp[0], partition=tp[1], first=position, to=moved),
        )
    return moved


class Partitions:
    def __init__(self, state: ServiceState, puts: Lanes) -> None:
        self.state = state
        self.metrics = state.metrics
        self.rules = state.rules
        self.lanes = state.lanes
        self.parts = state.parts
        self.puts = puts

    def prepare(self, tp: TP) -> PartitionState:
        """Decide where a newly assigned partition starts and which cuts it must follow."""
        commits: dict[str, int | None] = {}
        for lane in self.lanes:
            assert lane.progress is not None
            commits[lane.name] = lane.progress.committed([tp]).get(tp)
        consumer = self.state.consumer
        assert consumer is not None
        low, _high = consumer.get_watermark_offsets(KafkaTP(*tp), timeout=10, cached=False)
        low = max(low, 0)
        pos = {name: (c if c is not None else low) for name, c in commits.items()}
        up = [ln for ln in self.lanes if ln.mode is LaneMode.UP]
        start = max(pos.values())
        floor = min(pos.values())
        plan = CutPlan()
        firsts = self.state.firsts.partition(tp)
        state = PartitionState(
            tp=tp,
            chunker=PartitionChunker(tp[0], tp[1], self.rules, start, plan, firsts),
            plan=plan,
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
                listed[lane.name] = list_cuts(self.state, lane, tp, floor)
            except StoreError as exc:
                self.puts.mark_down(lane, str(exc))
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
                kept = reconcile_orphans(
                    self.state, lane, tp, pos[lane.name], plan, listed[lane.name]
                )
            except StoreError as exc:
                self.puts.mark_down(lane, str(exc))
                continue
            if commits[lane.name] is not None:
                # Only from a real commit: with none (a new group, or a broker that lost its
                # log and its groups) objects under these offsets may hold other records, and
                # writing the partition again is what reveals it (as conflicts).
                pos[lane.name] = fast_forward(lane, tp, pos[lane.name], kept)
            ready_lanes.append(lane)
        if max(pos.values()) != start:  # a lane moved past its own objects
            start = max(pos.values())
            state.chunker = PartitionChunker(tp[0], tp[1], self.rules, start, plan, firsts)
        for lane in ready_lanes:
            if pos[lane.name] >= start:
                self.puts.join_live(lane, tp, start)
        return state

    def retry_prepare(self, state: PartitionState) -> list[Lane]:
        """Prepare a partition that waits for a down store again (probing the down stores
        first); once it is ready, seek the live consumer to its start. Returns the lanes whose
        catch-up must start (those that do not take it live)."""
        for lane in self.lanes:
            if lane.mode is LaneMode.DOWN and lane.probe is None:
                try:
                    self.state.store_call(lane.store.health_check)
                except StoreError:
                    continue
                lane.mode = LaneMode.UP
        fresh = self.prepare(state.tp)
        if not fresh.ready:
            return []
        self.parts[state.tp] = fresh
        consumer = self.state.consumer
        assert consumer is not None
        consumer.seek(KafkaTP(state.tp[0], state.tp[1], fresh.chunker.position))
        return [
            lane
            for lane in self.lanes
            if lane.mode is LaneMode.UP and state.tp not in lane.live and lane.catchup is None
        ]

    def assign(self, partitions: list[KafkaTP]) -> tuple[list[KafkaTP], bool]:
        """Prepare newly assigned partitions: their start offsets, for the live consumer,
        and True when all were prepared. A stop asked for while a store is listed ends it
        early (False): the partitions prepared so far are returned, the others are not taken
        (nothing was read or written for them)."""
        log.info(
            "partitions_assigning",
            extra=fields(partitions=sorted(f"{k.topic}/{k.partition}" for k in partitions)),
        )
        assigned: list[KafkaTP] = []
        for ktp in partitions:
            tp = (ktp.topic, ktp.partition)
            try:
                state = self.prepare(tp)
            except Stopping:
                # Stopping while a store is listed: the partitions not prepared yet are not
                # taken; the shutdown follows.
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
                return assigned, False
            self.parts[tp] = state
            assigned.append(KafkaTP(tp[0], tp[1], state.chunker.position))
            log.info(
                "partition_assigned",
                extra=fields(
                    topic=tp[0], partition=tp[1], start=state.chunker.position, ready=state.ready
                ),
            )
        return assigned, True

    def forget(self, tps: set[TP]) -> None:
        """Drop revoked partitions from the service's state and from every catch-up."""
        for tp in tps:
            self.parts.pop(tp, None)
            self.state.firsts.forget(tp)
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
