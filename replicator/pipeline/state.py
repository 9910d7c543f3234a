"""The service's state: the lanes (one per store), the partitions it owns, what a run did.

Plain data, shared by the parts of the loop (intake, lanes, partitions, catch-up,
checkpoint, back-pressure); each part changes only what its own docstring names.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

from confluent_kafka import Consumer, Message

from replicator.chunking import ChunkRules, CutPlan, PartitionChunker
from replicator.config import Settings
from replicator.container import EncodedChunk
from replicator.judge.registry import SchemaResolver
from replicator.kafka.deadletter import DeadLetterWriter
from replicator.kafka.progress import ProgressLog
from replicator.model import TP
from replicator.pipeline.daemonpool import DaemonPool
from replicator.schemas import SchemaRegistry
from replicator.stores.base import PutOutcome, Store
from replicator.telemetry.firsts import FirstRecords
from replicator.telemetry.metrics import Metrics

log = logging.getLogger("replicator.pipeline")  # every part logs under the service's name

# When its queue is full (fetch_buffer_kbytes), librdkafka postpones the next fetch of a
# partition by fetch.queue.backoff.ms, 1000 by default: a loop that drains the queue in less
# than that then waits for records with nothing to do (measured: about 0.7 s of every second
# idle, docs/performance.md). 20 ms keeps the queue fed at the cost of a few more wake-ups.
FETCH_QUEUE_BACKOFF_MS = 20
# Each fetch may bring up to this much of one partition (librdkafka's default is 1 MiB).
# Every fetch request costs the broker a look-up per partition at the position asked, and a
# consumer that reads as fast as the service (its queue full, fetching as it drains) makes
# more of them per record than one reading at full speed: at the service's full-speed pace
# (75,000 records/s) the local broker spent 3.4-3.6 us of CPU per record with 2 MiB, 3.0-3.1
# with 4 MiB, 2.5 for a bare consumer at full speed (benchmarks/fetch_settings.py; the
# service itself: 1.79 -> 1.44 x a bare consumer, docs/performance.md, "Eleventh session").
# 4 MiB x 12 partitions stays within fetch.max.bytes, so a response still holds every
# partition: with 8 MiB in 16 MiB, it held two and the service lost throughput (ninth
# session); with 4 MiB it did not. The memory bound counts one response past the queue
# (fetch_buffer_kbytes) for each consumer.
PARTITION_FETCH_BYTES = 4 << 20
FETCH_MAX_BYTES = 52_428_800  # librdkafka's default fetch.max.bytes


def consumer_fetch_config(fetch_buffer_kbytes: int) -> dict[str, int]:
    """The fetch settings of the consumers that read records to store (live and catch-up)."""
    return {
        "queued.max.messages.kbytes": fetch_buffer_kbytes,
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        "max.partition.fetch.bytes": PARTITION_FETCH_BYTES,
        "fetch.max.bytes": FETCH_MAX_BYTES,
    }


# How often the loop, waiting for a store call of its own (a listing, a probe), looks whether
# a stop was asked for: a store that never answers must not hold a SIGTERM.
STOP_POLL_S = 0.05

T = TypeVar("T")


class Stopping(Exception):
    """A stop was asked for while the loop waited for a store: what it waited for is
    abandoned (nothing depends on it but work that will not happen)."""


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


@dataclass(eq=False)  # compared and hashed by identity (the intake counts per state)
class PartitionState:
    tp: TP
    chunker: PartitionChunker
    plan: CutPlan
    ready: bool = True  # False: waits for a down store's listing to know its cuts
    paused: bool = False
    # > 0: held (paused, nothing taken) until then (monotonic), because the schema registry
    # gave no answer for its next record; the loop then reads again from the chunker's
    # position (see Intake.hold)
    held_until: float = 0.0


@dataclass
class RunStats:
    """What a run did, for the CLI summary and the tests."""

    records_in: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    values_dropped: int = 0  # dead letters sent without their value (too large, refused)
    objects: dict[str, dict[str, int]] = field(default_factory=dict)
    records_out: dict[str, int] = field(default_factory=dict)


@dataclass
class ServiceState:
    """What every part of the loop reads: the settings, the lanes and the partitions.
    The containers are shared (a part changes them in place); `dlq`, `dlq_dirty` and
    `consumer` are set once the run starts, `stop_deadline` once a stop is asked for."""

    settings: Settings
    registry: SchemaRegistry
    metrics: Metrics
    rules: ChunkRules
    lanes: list[Lane]
    parts: dict[TP, PartitionState] = field(default_factory=dict)
    stats: RunStats = field(default_factory=RunStats)
    stop: threading.Event = field(default_factory=threading.Event)  # a stop was asked for
    # When the stop was asked for, plus shutdown_timeout_s: every wait of the shutdown (the
    # drain, a revoke's drain, the final commit, a put's retries) ends by then.
    stop_deadline: float | None = None
    abort: threading.Event = field(default_factory=threading.Event)  # stop retrying puts
    dlq: DeadLetterWriter | None = None
    dlq_dirty: bool = False  # dead letters sent since the last flush
    dlq_error: str = ""  # why the last flush of the dead-letter producer failed
    consumer: Consumer | None = None
    resolver: SchemaResolver | None = None  # the writer schemas first seen at run time
    # The first record at or after each chunk start, as the chunkers took it: the lag
    # monitor's answer for the partitions this replica owns (replicator.telemetry.firsts).
    firsts: FirstRecords = field(default_factory=FirstRecords)
    max_lane_bytes: int = field(init=False)  # each lane's share of max_buffer_bytes
    # The loop's own store calls (listings, deletes, probes), waited for by `store_call`.
    calls: DaemonPool = field(init=False)

    def __post_init__(self) -> None:
        self.max_lane_bytes = self.settings.max_buffer_bytes // max(len(self.lanes), 1)
        self.calls = DaemonPool(2 * max(len(self.lanes), 1), "store-call")

    def store_call(self, fn: Callable[[], T]) -> T:
        """Call a store from the loop's thread, but give up at once when a stop is asked
        for (raising `Stopping`): the call goes on, abandoned, on a daemon thread."""
        future = self.calls.submit(fn)
        while True:
            done, _pending = wait([future], timeout=STOP_POLL_S)
            if done:
                return future.result()
            if self.stop.is_set():
                future.cancel()
                raise Stopping

    def lane(self, name: str) -> Lane:
        return next(ln for ln in self.lanes if ln.name == name)
