"""The dead-letter topic: bad records with their reason and origin, never silently dropped.

Value and key are the original bytes; headers say why and where from. Detail strings are
built by the decoder and the checks from positions and lengths only, never from record
contents. The pipeline flushes this producer before it commits any store's progress past a
dead-lettered offset, so a record is either in the dead-letter topic or still to be read.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from replicator.errors import ReplicatorError
from replicator.logs import fields

log = logging.getLogger("replicator.deadletter")

H_REASON = "dlq.reason"
H_DETAIL = "dlq.detail"
H_TOPIC = "dlq.origin.topic"
H_PARTITION = "dlq.origin.partition"
H_OFFSET = "dlq.origin.offset"
H_TIMESTAMP = "dlq.origin.timestamp"
# A dead letter too large for its topic goes without its value (and key): these say what it
# was, so an audit can still match it with the source record.
H_ORIGINAL_REASON = "dlq.original.reason"
H_VALUE_SIZE = "dlq.value.size"
H_VALUE_SHA256 = "dlq.value.sha256"  # hex SHA-256 of the original value
H_KEY_SIZE = "dlq.key.size"
H_KEY_SHA256 = "dlq.key.sha256"


class DeadLetterError(ReplicatorError):
    pass


Headers = list[tuple[str, str | bytes | None]]


class DeadLetterWriter:
    """A producer for the dead-letter topic that never forgets a record it was given.

    Every record is kept until the broker acknowledges it. A flush succeeds only once every
    record given so far is acknowledged (the pipeline commits past a bad record only then);
    when some were not (a broker that was away, or a fatal error of the idempotent producer,
    e.g. fenced by a broker that lost its state), the producer is replaced and they are sent
    again. The dead-letter topic is at-least-once: a resend may write a record twice, each
    copy saying its origin."""

    def __init__(self, kafka_conf: dict[str, Any], topic: str) -> None:
        self.topic = topic
        self._conf = {**kafka_conf, "enable.idempotence": True, "acks": "all", "linger.ms": 20}
        self._producer = Producer(self._conf)
        self._pending: dict[int, tuple[bytes | None, bytes | None, Headers]] = {}
        self._next = 0
        self._last_error = ""

    def _acked(self, seq: int, err: KafkaError | None) -> None:
        # Kept to the minimum: after a fatal error confluent-kafka calls this with an
        # exception already set, and any call here may fail; the record then stays pending.
        if err is None:
            del self._pending[seq]

    def _produce(self, seq: int) -> None:
        key, value, headers = self._pending[seq]
        while True:
            try:
                self._producer.produce(
                    self.topic,
                    value=value,
                    key=key,
                    headers=headers,
                    on_delivery=lambda err, _msg: self._acked(seq, err),
                )
                break
            except BufferError:
                self._poll(0.1)
            except KafkaException as exc:  # a fatal state: kept, sent by the next flush
                self._last_error = str(exc)
                return
        self._poll(0)

    def _poll(self, timeout: float) -> None:
        try:
            self._producer.poll(timeout)
        except:  # noqa: E722 - after a fatal error confluent-kafka may raise a non-exception
            self._last_error = _current_error()

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
        headers: Headers = [
            (H_REASON, reason.encode()),
            (H_DETAIL, detail.encode()),
            (H_TOPIC, topic.encode()),
            (H_PARTITION, str(partition).encode()),
            (H_OFFSET, str(offset).encode()),
            (H_TIMESTAMP, str(timestamp_ms).encode()),
        ]
        self._next += 1
        self._pending[self._next] = (key, value, headers)
        self._produce(self._next)

    @property
    def undelivered(self) -> int:
        """Records given but not acknowledged yet."""
        return len(self._pending)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record given so far is acknowledged, sending again (with a new
        producer) those that failed; raise if that does not happen within `timeout`. Nothing
        is forgotten: what is not acknowledged is sent again by the next flush."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                in_flight = self._producer.flush(max(deadline - time.monotonic(), 0.0))
            except:  # noqa: E722 - after a fatal error confluent-kafka may raise a non-exception
                self._last_error = _current_error()
                in_flight = len(self._producer)
            if not self._pending:
                return
            if in_flight or time.monotonic() >= deadline:
                break
            # Every record still pending has failed: a new producer sends them again (a
            # producer in a fatal state can send nothing more, and telling which state it is
            # in is not reliable across client versions).
            old, self._producer = self._producer, Producer(self._conf)
            with contextlib.suppress(Exception):
                old.purge()
            for seq in sorted(self._pending):
                self._produce(seq)
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))
        raise DeadLetterError(
            f"dead-letter topic {self.topic}: {len(self._pending)} record(s) not acknowledged "
            f"within {timeout:g}s" + (f" ({self._last_error})" if self._last_error else "")
        )

    def close(self, timeout: float = 5.0) -> None:
        try:
            self._producer.flush(timeout)
        except:  # noqa: E722 - see flush
            log.warning("dead_letter_close_failed", extra=fields(error=_current_error()))


def _current_error() -> str:
    value = sys.exc_info()[1]
    return "" if value is None else str(value)[:300]
