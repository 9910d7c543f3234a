"""Each store's durable progress: the committed offsets of its own consumer group.

The group `<group_id>.<store>` has no member; we commit to it explicitly, and only after the
store holds the object. Standard Kafka lag tools therefore show each store's lag, and an
operator replays by resetting that group's offsets.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from replicator.model import TP


class ProgressLog:
    """The one reader (and writer) of a store's committed offsets: the service, the lag
    monitor and the operator tools all go through it."""

    def __init__(
        self, kafka_conf: dict[str, Any], group: str, client_id: str | None = None
    ) -> None:
        self.group = group
        self._consumer = Consumer(
            {
                **kafka_conf,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                **({"client.id": client_id} if client_id is not None else {}),
            }
        )

    def committed(self, tps: list[TP], timeout: float = 10.0) -> dict[TP, int | None]:
        """Committed next offset per partition (None: nothing committed yet)."""
        if not tps:
            return {}
        answer = self._consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=timeout)
        out: dict[TP, int | None] = {}
        for tp in answer:
            if tp.error is not None:
                raise KafkaException(tp.error)
            out[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
        return out

    def commit(self, offsets: dict[TP, int]) -> None:
        """Commit synchronously; raises KafkaException if the broker refuses any partition."""
        if not offsets:
            return
        result = self._consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
            asynchronous=False,
        )
        for tp in result or []:
            if tp.error is not None:
                raise KafkaException(tp.error)

    def close(self) -> None:
        self._consumer.close()
