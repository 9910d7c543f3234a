"""Read-only views of Kafka for the operator tools (verify, replay, cutover).

One `KafkaView` holds one consumer that never commits and never joins a group (it only
`assign`s). It answers: which partitions a topic has, where a partition starts (low
watermark) and really ends, which offset a time falls at, and the records of an offset range.

Two answers of a broker are checked rather than trusted, because a wrong one would make the
tools unsafe and checking costs a read or two:

- the end of a partition: the high watermark, then a read from there; a broker that reports
  a high watermark below the real end (seen with batched produce) is corrected by what the
  read finds;
- the offset for a time (`offsets_for_times`): the record at the answer must have a timestamp
  at or after the time and the record before it one before the time; otherwise the answer
  is found by a binary search over record timestamps (which assumes timestamps that do not
  go back in time, as Kafka's own time index does).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from replicator.config import Settings
from replicator.errors import ReplicatorError
from replicator.model import TP


class KafkaUnavailable(ReplicatorError):
    """Kafka did not answer, or answered with an error: the tool could not check."""


class KafkaView:
    def __init__(self, settings: Settings, purpose: str, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        conf: dict[str, Any] = {
            **settings.kafka_common(),
            # Never used for a commit or a subscription: only `assign` and reads.
            "group.id": f"{settings.group_id}.{purpose}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            # Single reads (time lookups) and short ranges answer quickly (Kafka answers
            # as soon as it has records). Not 20: the local broker (Tansu) then answered
            # nothing from a deep partition (400,000 records), so `ends` missed records.
            "fetch.wait.max.ms": 100,
            "client.id": settings.client_id(f"replicator-{purpose}"),
        }
        self._consumer = Consumer(conf)
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()

    def __enter__(self) -> KafkaView:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ metadata
    def partitions(self, topic: str) -> list[int]:
        """The partition numbers of `topic`; KafkaUnavailable when the broker does not answer
        or does not know the topic."""
        try:
            meta = self._consumer.list_topics(topic, timeout=self.timeout_s)
        except KafkaException as exc:
            raise KafkaUnavailable(f"kafka: cannot read the metadata of {topic}: {exc}") from None
        found = meta.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise KafkaUnavailable(f"kafka: topic {topic} not found")
        return sorted(found.partitions)

    def watermarks(self, tp: TP) -> tuple[int, int]:
        """(low, high) as the broker reports them."""
        try:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(*tp), timeout=self.timeout_s, cached=False
            )
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"kafka: cannot read the offsets of {tp[0]}/{tp[1]}: {exc}"
            ) from None
        return max(int(low), 0), max(int(high), 0)

    def low(self, tp: TP) -> int:
        """The first retained offset."""
        return self.watermarks(tp)[0]

    def ends(self, tps: list[TP], idle_s: float = 0.5) -> dict[TP, int]:
        """The real end (last offset + 1) of each partition: the high watermark, corrected
        by whatever a read from there finds."""
        out: dict[TP, int] = {}
        for tp in tps:
            out[tp] = self.watermarks(tp)[1]
        if not tps:
            return out
        self._assign([TopicPartition(t, p, out[(t, p)]) for t, p in tps])
        try:
            idle_until = time.monotonic() + idle_s
            while time.monotonic() < idle_until:
                for msg in self._consume(1000, 0.05):
                    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                    if topic is None or partition is None or offset is None:
                        continue
                    tp = (topic, partition)
                    if tp in out and offset + 1 > out[tp]:
                        out[tp] = offset + 1
                        idle_until = time.monotonic() + idle_s
        finally:
            self._unassign()
        return out

    # ------------------------------------------------------------------ reads
    def read_one(self, tp: TP, offset: int, timeout_s: float = 2.0) -> Message | None:
        """The first record at or after `offset`, or None when there is none (yet)."""
        self._assign([TopicPartition(tp[0], tp[1], offset)])
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                for msg in self._consume(1, 0.1):
                    got = msg.offset()
                    if msg.partition() == tp[1] and got is not None and got >= offset:
                        return msg
            return None
        finally:
            self._unassign()

    def read_range(self, tp: TP, first: int, last: int, idle_s: float = 3.0) -> Iterator[Message]:
        """The records of offsets [first, last] in order. Ends at `last`, or when nothing
        arrives for `idle_s` (offsets without a record: transaction markers, compaction)."""
        if last < first:
            return
        self._assign([TopicPartition(tp[0], tp[1], first)])
        try:
            idle_until = time.monotonic() + idle_s
            while time.monotonic() < idle_until:
                batch = self._consume(1000, 0.1)
                for msg in batch:
                    offset = msg.offset()
                    if offset is None or offset < first:
                        continue
                    if offset > last:
                        return
                    yield msg
                    if offset == last:
                        return
                if batch:
                    idle_until = time.monotonic() + idle_s
        finally:
            self._unassign()

    # ------------------------------------------------------------------ time
    def offset_for_time(self, tp: TP, ts_ms: int, end: int | None = None) -> int:
        """The first offset whose record timestamp is at or after `ts_ms`, or the end of the
        partition when there is none."""
        low = self.low(tp)
        if end is None:
            end = self.ends([tp])[tp]
        if low >= end:
            return end
        try:
            answer = self._consumer.offsets_for_times(
                [TopicPartition(tp[0], tp[1], ts_ms)], timeout=self.timeout_s
            )
        except KafkaException:
            answer = []
        guess = answer[0].offset if answer and answer[0].error is None else -1
        guess = end if guess < 0 else min(max(guess, low), end)
        if self._is_time_answer(tp, ts_ms, guess, low, end):
            return guess
        return self._search_time(tp, ts_ms, low, end)

    def _timestamp(self, msg: Message) -> int:
        return int(msg.timestamp()[1])

    def _is_time_answer(self, tp: TP, ts_ms: int, offset: int, low: int, end: int) -> bool:
        if offset < end:
            at = self.read_one(tp, offset)
            if at is None or self._timestamp(at) < ts_ms:
                return False
        if offset > low:
            before = self.read_one(tp, offset - 1)
            before_offset = before.offset() if before is not None else None
            if (
                before is not None
                and before_offset is not None
                and before_offset < offset
                and self._timestamp(before) >= ts_ms
            ):
                return False
        return True

    def _search_time(self, tp: TP, ts_ms: int, low: int, end: int) -> int:
        lo, hi = low, end
        while lo < hi:
            mid = (lo + hi) // 2
            msg = self.read_one(tp, mid)
            got = msg.offset() if msg is not None else None
            if msg is None or got is None or got >= hi or self._timestamp(msg) >= ts_ms:
                hi = mid
            else:
                lo = got + 1
        return lo

    # ------------------------------------------------------------------ internals
    def _assign(self, tps: list[TopicPartition]) -> None:
        try:
            self._consumer.assign(tps)
        except KafkaException as exc:
            raise KafkaUnavailable(f"kafka: cannot assign partitions: {exc}") from None

    def _unassign(self) -> None:
        with contextlib.suppress(KafkaException):
            self._consumer.unassign()

    def _consume(self, count: int, timeout: float) -> list[Message]:
        try:
            msgs = self._consumer.consume(num_messages=count, timeout=timeout)
        except KafkaException as exc:
            raise KafkaUnavailable(f"kafka: read failed: {exc}") from None
        out = []
        for msg in msgs:
            err = msg.error()
            if err is None:
                out.append(msg)
            elif err.code() != KafkaError._PARTITION_EOF and err.fatal():
                raise KafkaUnavailable(f"kafka: read failed: {err}")
        return out
