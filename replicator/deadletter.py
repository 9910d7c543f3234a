"""The dead-letter topic: bad records with their reason and origin, never silently dropped.

Value and key are the original bytes; headers say why and where from. Detail strings are
built by the decoder and the checks from positions and lengths only, never from record
contents. The pipeline flushes this producer before it commits any store's progress past a
dead-lettered offset, so a record is either in the dead-letter topic or still to be read.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from replicator.errors import ReplicatorError

H_REASON = "dlq.reason"
H_DETAIL = "dlq.detail"
H_TOPIC = "dlq.origin.topic"
H_PARTITION = "dlq.origin.partition"
H_OFFSET = "dlq.origin.offset"
H_TIMESTAMP = "dlq.origin.timestamp"


class DeadLetterError(ReplicatorError):
    pass


class DeadLetterWriter:
    def __init__(self, kafka_conf: dict[str, Any], topic: str) -> None:
        self.topic = topic
        self._producer = Producer(
            {
                **kafka_conf,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
            }
        )
        self._failures: list[str] = []

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failures.append(str(err))

    def send(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        detail: str,
    ) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            (H_REASON, reason.encode()),
            (H_DETAIL, detail.encode()),
            (H_TOPIC, topic.encode()),
            (H_PARTITION, str(partition).encode()),
            (H_OFFSET, str(offset).encode()),
            (H_TIMESTAMP, str(timestamp_ms).encode()),
        ]
        while True:
            try:
                self._producer.produce(
                    self.topic, value=value, key=key, headers=headers, on_delivery=self._delivered
                )
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record sent so far is acknowledged; raise if one was not."""
        remaining = self._producer.flush(timeout)
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeadLetterError(
                f"dead-letter topic {self.topic}: {len(failures)} record(s) not delivered: {failures[0]}"
            )
        if remaining:
            raise DeadLetterError(
                f"dead-letter topic {self.topic}: {remaining} record(s) not acknowledged within {timeout}s"
            )

    def close(self) -> None:
        self._producer.flush(5)
