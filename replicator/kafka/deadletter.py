"""The dead-letter topic: bad records with their reason and origin, never silently dropped.

Value and key are the original bytes. The headers are the original record's, in their
order (repeated names and null values included), then the `dlq.*` ones saying why and where
from, appended last as Kafka Connect appends its error context: a reader taking the last
occurrence of a name (Kafka's `Headers.lastHeader`, a dict built from the list) gets ours
even when the original record carried a header of the same name. Detail strings are
built by the decoder and the checks from positions and lengths only, never from record
contents. The pipeline flushes this producer before it commits any store's progress past a
dead-lettered offset, so a record is either in the dead-letter topic or still to be read.

Sizes, one story (docs/guarantees.md, item 5):
- a record value longer than `max_record_bytes` is dead-lettered with reason `oversized`;
- at start the service reads the dead-letter topic's `max.message.bytes` (else the broker's
  `message.max.bytes`, else `DEFAULT_MAX_MESSAGE_BYTES`) and sets its producer's
  `message.max.bytes` to it, so the producer takes whatever the topic takes;
- a dead letter that would not fit that limit as it is (`batch_bytes`), or that the topic
  refuses permanently (`classify`), goes out without its value: reason `oversized` (or
  `refused`), origin headers, the value's size and SHA-256, the key if it fits, and the
  original headers that fit (in order, from the first; `dlq.headers.dropped` counts those
  left out, always the last ones). The last form, without value and key, keeps only the
  original headers that fit in REPLACEMENT_MAX_BYTES with the rest, so that it fits any
  topic. So it is accounted for and the partition moves on. A transient refusal (broker away,
  authorization, missing topic) keeps the record and holds commits until it is delivered.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported, not declared
    AdminClient,
    ConfigResource,
)

from replicator.errors import ReplicatorError
from replicator.logs import fields
from replicator.model import RecordHeaders

log = logging.getLogger("replicator.deadletter")

# Delivery reports are served (producer.poll) once every this many records sent, and by every
# flush (the checkpoint flushes before each commit): serving them after each record cost
# the service's main thread about 1 ms a bad record (each call hands the GIL over and
# waits to get it back while the encoder thread runs), 7 % of it at 0.1 % bad records.
POLL_EVERY = 100

H_REASON = "dlq.reason"
H_DETAIL = "dlq.detail"
H_TOPIC = "dlq.origin.topic"
H_PARTITION = "dlq.origin.partition"
H_OFFSET = "dlq.origin.offset"
H_TIMESTAMP = "dlq.origin.timestamp"
# Only on a dead letter sent without its value (or key): what was dropped, to find it again
# in the source topic and prove it is the same bytes.
H_FIRST_REASON = "dlq.original.reason"
H_VALUE_SIZE = "dlq.value.size"
H_VALUE_SHA256 = "dlq.value.sha256"
H_KEY_SIZE = "dlq.key.size"
H_KEY_SHA256 = "dlq.key.sha256"
# On a smaller form that could not keep all of the original record's headers: how many of
# them (the last ones) were left out.
H_HEADERS_DROPPED = "dlq.headers.dropped"

REASON_OVERSIZED = "oversized"  # the dead-letter topic's limit: the value is left out
REASON_REFUSED = "refused"  # another permanent refusal of the record: the value is left out

# When neither the topic nor the broker says its limit (a broker that does not answer
# DescribeConfigs in full): librdkafka's own default `message.max.bytes`, below Kafka's
# default `max.message.bytes` (1048588), so a record under it fits a default topic.
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
# librdkafka's range for `message.max.bytes`.
PRODUCER_MIN_BYTES = 1_000
PRODUCER_MAX_BYTES = 1_000_000_000
# Kafka's record batch (magic 2): a 61-byte batch header, then per record at most 21 bytes
# of fixed fields and varints, plus 5 + 5 bytes of varint lengths per header.
BATCH_OVERHEAD = 61
RECORD_OVERHEAD = 21 + 5 + 5 + 5  # fields, key length, value length, header count
HEADER_OVERHEAD = 10
DETAIL_MAX = 512  # a replacement's detail header is cut to this many bytes
# A dead letter without value and key fits in this many bytes whatever its origin (topic
# names have at most 249 characters), so it fits any topic limit from here up
# (tests/unit/kafka/test_dead_letter_limits.py).
REPLACEMENT_MAX_BYTES = 2_000
H_ORIGINAL_REASON = H_FIRST_REASON  # the name the audit reads it by


class DeadLetterError(ReplicatorError):
    pass


Headers = list[tuple[str, str | bytes | None]]


class Refusal(enum.Enum):
    """What a failed dead-letter delivery means for the record."""

    TOO_LARGE = "too_large"  # permanent: this record is over a limit; send it without value
    INVALID = "invalid"  # permanent: the broker refuses this record's content
    TRANSIENT = "transient"  # keep the record as it is and send it again


# Permanent refusals are about the record itself (its size, its bytes): they are the same on
# every retry, and leaving the value out makes the record acceptable. Everything else is
# transient: the broker away, a timeout, a fenced or fatal producer (a new producer sends
# again), a missing topic, and authorization: an operator can grant it, it concerns every
# dead letter alike, and leaving the value out would not help, so it holds commits and
# alerts rather than dropping anything. INVALID_MSG (Kafka's CORRUPT_MESSAGE) is retriable
# in Kafka (a checksum broken on the way); INVALID_TIMESTAMP concerns the producer's clock
# (a dead letter carries the time it is sent), not the record.
_TOO_LARGE = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG_SIZE}
)
_INVALID = frozenset({KafkaError.INVALID_RECORD})


def classify(code: int) -> Refusal:
    """The meaning of a produce error code (librdkafka's, local or from the broker; the
    local "message too large" shares the broker's code 10, MSG_SIZE_TOO_LARGE)."""
    if code in _TOO_LARGE:
        return Refusal.TOO_LARGE
    if code in _INVALID:
        return Refusal.INVALID
    return Refusal.TRANSIENT


def header_text(value: str | bytes | None) -> str | None:
    """A header value as text; None when absent or not UTF-8."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return value


def read_headers(
    headers: Sequence[tuple[str, str | bytes | None]] | None,
) -> tuple[list[tuple[str, bytes | None]], dict[str, str | None]] | None:
    """A dead letter's headers read back as the writer lays them out: the original record's
    own first, then ours, always starting with `dlq.reason`. So ours run from its last
    occurrence, and an original header that happens to be named `dlq.*` stays the
    original's. Returns (the original's headers as bytes, ours by name as text), or None
    when there is no `dlq.reason` (not a dead letter of this service)."""
    listed = list(headers or ())
    start = max((i for i, (name, _raw) in enumerate(listed) if name == H_REASON), default=None)
    if start is None:
        return None
    ours: dict[str, str | None] = {}
    for name, raw in listed[start:]:
        ours.setdefault(name, header_text(raw))
    original = [
        (name, raw.encode() if isinstance(raw, str) else raw) for name, raw in listed[:start]
    ]
    return original, ours


def batch_bytes(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """An upper bound of the size of a record batch holding this one record, as the broker
    compares it with `max.message.bytes` (uncompressed: the producer does not compress)."""
    size = BATCH_OVERHEAD + RECORD_OVERHEAD + len(key or b"") + len(value or b"")
    for name, hv in headers:
        size += HEADER_OVERHEAD + len(name.encode()) + len(hv or b"")
    return size


@dataclass(frozen=True)
class Limit:
    """The dead-letter topic's limit in bytes, and where it comes from (topic, broker or
    default)."""

    max_message_bytes: int
    source: str


def choose_limit(topic_value: str | None, broker_value: str | None) -> Limit:
    """The limit from the topic's `max.message.bytes` (Kafka's effective value: it overrides
    the broker's), else the broker's `message.max.bytes`, else `DEFAULT_MAX_MESSAGE_BYTES`;
    unreadable values are skipped; kept within librdkafka's range for the producer."""
    for source, text in (("topic", topic_value), ("broker", broker_value)):
        try:
            value = int(text) if text is not None else 0
        except ValueError:
            continue
        if value > 0:
            return Limit(min(max(value, PRODUCER_MIN_BYTES), PRODUCER_MAX_BYTES), source)
    return Limit(DEFAULT_MAX_MESSAGE_BYTES, "default")


def read_limit(kafka_conf: dict[str, Any], topic: str, timeout: float = 10.0) -> Limit:
    """Ask the broker for the dead-letter topic's `max.message.bytes` and its own
    `message.max.bytes` (DescribeConfigs), and choose with `choose_limit`. A broker that
    does not answer, or answers without these entries, gives the default (logged)."""
    admin = AdminClient(kafka_conf)
    found: dict[str, str | None] = {"topic": None, "broker": None}
    problems: list[str] = []
    try:
        metadata = admin.list_topics(timeout=timeout)
        broker = metadata.controller_id if metadata.controller_id >= 0 else min(metadata.brokers)
        asks = [
            ("topic", ConfigResource(ConfigResource.Type.TOPIC, topic), "max.message.bytes"),
            (
                "broker",
                ConfigResource(ConfigResource.Type.BROKER, str(broker)),
                "message.max.bytes",
            ),
        ]
        for name, resource, entry in asks:
            try:
                futures = admin.describe_configs([resource], request_timeout=timeout)
                configs = next(iter(futures.values())).result(timeout=timeout)
            except (KafkaException, TimeoutError, ValueError) as exc:
                problems.append(f"{name}: {str(exc)[:200]}")
                continue
            if entry in configs:
                found[name] = configs[entry].value
            else:
                problems.append(f"{name}: no {entry} in the broker's answer")
    except (KafkaException, ValueError) as exc:
        problems.append(str(exc)[:200])
    limit = choose_limit(found["topic"], found["broker"])
    event = fields(
        topic=topic,
        max_message_bytes=limit.max_message_bytes,
        source=limit.source,
        **({"problems": problems} if problems else {}),
    )
    if limit.source == "default":
        log.warning("dead_letter_limit_unknown", extra=event)
    else:
        log.info("dead_letter_limit", extra=event)
    return limit


@dataclass(frozen=True)
class Letter:
    """One dead letter as it is (stage 0) or as sent without its value (1), or without its
    value and key (2). `headers` are the `dlq.*` ones; `original` the original record's
    headers, of which the first `kept` are sent before them (all when `kept` is negative);
    `wire_headers` is what goes to the topic."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    stage: int = 0
    original: Headers = field(default_factory=list)
    kept: int = -1

    @property
    def wire_headers(self) -> Headers:
        if self.kept < 0 or self.kept >= len(self.original):
            return [*self.original, *self.headers]
        dropped = len(self.original) - self.kept
        return [
            *self.original[: self.kept],
            *self.headers,
            (H_HEADERS_DROPPED, str(dropped).encode()),
        ]

    def header(self, name: str) -> str:
        for hname, hvalue in self.headers:
            if hname == name:
                return hvalue.decode(errors="replace") if isinstance(hvalue, bytes) else str(hvalue)
        return ""


LAST_STAGE = 2
# What `H_HEADERS_DROPPED` with its count can take (a count of up to 10 digits).
_DROPPED_RESERVE = HEADER_OVERHEAD + len(H_HEADERS_DROPPED) + 10


def fitting(key: bytes | None, headers: Headers, original: Headers, limit: int) -> int:
    """How many of the original headers, from the first, fit beside `headers` (and `key`,
    without value) within `limit`, room for `H_HEADERS_DROPPED` kept."""
    size = batch_bytes(key, None, headers) + _DROPPED_RESERVE
    for index, (name, hv) in enumerate(original):
        size += HEADER_OVERHEAD + len(name.encode()) + len(hv or b"")
        if size > limit:
            return index
    return len(original)


def shrink(letter: Letter, refusal: Refusal, cause: str, limit: int) -> Letter | None:
    """The next smaller form of a dead letter the topic will not take as it is: without its
    value (reason `oversized`, or `refused` for a refusal of its content; the value's size
    and SHA-256 instead), with the key only if the result fits `limit`; then without the
    key too (its size and SHA-256 instead). None when nothing more can be left out.
    Origin headers are kept as they are; the detail says why, and the first verdict."""
    if letter.stage >= LAST_STAGE:
        return None
    if letter.stage == 0:
        value = letter.value or b""
        reason = REASON_REFUSED if refusal is Refusal.INVALID else REASON_OVERSIZED
        first = f"{letter.header(H_REASON)}: {letter.header(H_DETAIL)}"
        detail = f"value of {len(value)} bytes left out: {cause}; judged {first}"
        kept = [
            (name, hv)
            for name, hv in letter.headers
            if name in (H_TOPIC, H_PARTITION, H_OFFSET, H_TIMESTAMP)
        ]
        headers: Headers = [
            (H_REASON, reason.encode()),
            (H_DETAIL, detail.encode()[:DETAIL_MAX]),
            *kept,
            (H_FIRST_REASON, letter.header(H_REASON).encode()),
            (H_VALUE_SIZE, str(len(value)).encode()),
            (H_VALUE_SHA256, hashlib.sha256(value).hexdigest().encode()),
        ]
        # With the key only if it fits beside our headers and, when the original had
        # headers of its own, the count of those left out (dlq.headers.dropped).
        reserve = _DROPPED_RESERVE if letter.original else 0
        if letter.key is not None and batch_bytes(letter.key, None, headers) + reserve <= limit:
            fit = fitting(letter.key, headers, letter.original, limit)
            return Letter(letter.key, None, headers, 1, letter.original, fit)
        letter = Letter(letter.key, None, headers, 1, letter.original)
    key = letter.key or b""
    headers = [
        *letter.headers,
        (H_KEY_SIZE, str(len(key)).encode()),
        (H_KEY_SHA256, hashlib.sha256(key).hexdigest().encode()),
    ]
    # The last form fits any topic: the original headers only within the floor.
    fit = fitting(None, headers, letter.original, min(limit, REPLACEMENT_MAX_BYTES))
    return Letter(None, None, headers, LAST_STAGE, letter.original, fit)


# (origin topic, the replacement's reason): a dead letter went out without its value.
DroppedHook = Callable[[str, str], None]


class DeadLetterWriter:
    """A producer for the dead-letter topic that never forgets a record it was given.

    Every record is kept until the broker acknowledges it. A flush succeeds only once every
    record given so far is acknowledged (the pipeline commits past a bad record only then);
    when some were not (a broker that was away, or a fatal error of the idempotent producer,
    e.g. fenced by a broker that lost its state), the producer is replaced and they are sent
    again. The dead-letter topic is at-least-once: a resend may write a record twice, each
    copy saying its origin.

    A record over `max_message_bytes` (see `batch_bytes`), or one the topic refuses
    permanently (see `classify`), is sent in a smaller form (`shrink`) at once, so that no
    record can hold the commits for good. `kafka_conf` may set `message.max.bytes` itself
    (lower than the limit: the tests do, so that the producer refuses what the estimate
    let through, as a broker announcing a higher limit than it applies would)."""

    def __init__(
        self,
        kafka_conf: dict[str, Any],
        topic: str,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        on_dropped: DroppedHook | None = None,
    ) -> None:
        self.topic = topic
        self.max_message_bytes = max_message_bytes
        self._conf = {
            "message.max.bytes": min(
                max(max_message_bytes, PRODUCER_MIN_BYTES), PRODUCER_MAX_BYTES
            ),
            **kafka_conf,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
        }
        self._producer = Producer(self._conf)
        self._pending: dict[int, Letter] = {}
        self._origin: dict[int, str] = {}
        self._refused: dict[int, tuple[Refusal, str]] = {}
        self._next = 0
        self._last_error = ""
        self._on_dropped = on_dropped
        self._unpolled = 0  # records produced since delivery reports were last served

    def _acked(self, seq: int, err: KafkaError | None) -> None:
        # Kept to the minimum: after a fatal error confluent-kafka calls this with an
        # exception already set, and any call here may fail; the record then stays pending.
        if err is None:
            self._pending.pop(seq, None)
            self._origin.pop(seq, None)
            return
        try:
            refusal = classify(err.code())
            if refusal is not Refusal.TRANSIENT:
                self._refused[seq] = (refusal, f"refused by the dead-letter topic: {err.name()}")
        except:  # noqa: E722, S110 - see above: stays pending, sent again by the next flush
            pass

    def _produce(self, seq: int) -> None:
        while True:
            letter = self._pending[seq]
            try:
                self._producer.produce(
                    self.topic,
                    value=letter.value,
                    key=letter.key,
                    headers=letter.wire_headers,
                    on_delivery=lambda err, _msg: self._acked(seq, err),
                )
                break
            except BufferError:
                self._poll(0.1)
            except KafkaException as exc:
                self._last_error = str(exc)
                error = exc.args[0] if exc.args else None
                code = error.code() if isinstance(error, KafkaError) else KafkaError._FAIL
                refusal = classify(code)
                cause = f"refused by the producer: {error.name() if error else exc}"
                if refusal is Refusal.TRANSIENT or not self._shrink(seq, refusal, cause):
                    return  # a fatal state, or nothing left to leave out: sent by next flush
        self._unpolled += 1
        if self._unpolled >= POLL_EVERY:
            self._unpolled = 0
            self._poll(0)

    def _shrink(self, seq: int, refusal: Refusal, cause: str) -> bool:
        """Replace a pending record by its next smaller form; False if there is none (the
        record stays as it is and holds the commits: logged, and alerted on)."""
        letter = self._pending[seq]
        smaller = shrink(letter, refusal, cause, self.max_message_bytes)
        if smaller is None:
            self._last_error = f"{cause}, even without value and key"
            log.error(
                "dead_letter_refused",
                extra=fields(
                    origin_topic=letter.header(H_TOPIC),
                    origin_partition=letter.header(H_PARTITION),
                    origin_offset=letter.header(H_OFFSET),
                    error=cause,
                ),
            )
            return False
        self._pending[seq] = smaller
        if letter.stage == 0:
            log.warning(
                "dead_letter_value_dropped",
                extra=fields(
                    origin_topic=smaller.header(H_TOPIC),
                    origin_partition=smaller.header(H_PARTITION),
                    origin_offset=smaller.header(H_OFFSET),
                    size=smaller.header(H_VALUE_SIZE),
                    reason=smaller.header(H_REASON),
                    key_kept=smaller.key is not None,
                    cause=cause,
                ),
            )
            if self._on_dropped is not None:
                self._on_dropped(self._origin.get(seq, ""), smaller.header(H_REASON))
        return True

    def _send_refused(self) -> bool:
        """Send again, smaller, the records the topic refused for good; True if any was."""
        sent = False
        while self._refused:
            seq, (refusal, cause) = self._refused.popitem()
            if seq in self._pending and self._shrink(seq, refusal, cause):
                self._produce(seq)
                sent = True
        return sent

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
        headers: RecordHeaders | None = None,
    ) -> None:
        """Send a bad record: its key, value and headers as they came (`headers`, the
        consumed message's, in order), then the `dlq.*` headers saying why and where from."""
        original: Headers = list(headers or ())
        own: Headers = [
            (H_REASON, reason.encode()),
            (H_DETAIL, detail.encode()),
            (H_TOPIC, topic.encode()),
            (H_PARTITION, str(partition).encode()),
            (H_OFFSET, str(offset).encode()),
            (H_TIMESTAMP, str(timestamp_ms).encode()),
        ]
        self._next += 1
        seq = self._next
        letter = Letter(key, value, own, original=original)
        self._pending[seq] = letter
        self._origin[seq] = topic
        size = batch_bytes(key, value, letter.wire_headers)
        if size > self.max_message_bytes:
            cause = (
                f"{size} bytes with its headers, over the dead-letter topic's limit of "
                f"{self.max_message_bytes}"
            )
            self._shrink(seq, Refusal.TOO_LARGE, cause)
        self._produce(seq)
        self._send_refused()

    def mark(self) -> int:
        """The sequence number of the last record given (0: none yet), for
        `delivered_through`."""
        return self._next

    def delivered_through(self, mark: int) -> bool:
        """Serve the delivery reports waiting, without waiting for any; True when every
        record given up to `mark` is acknowledged. A record that failed or was refused stays
        pending: only `flush` sends it again."""
        self._poll(0)
        return not self._pending or min(self._pending) > mark

    @property
    def undelivered(self) -> int:
        """Records given but not acknowledged yet."""
        return len(self._pending)

    @property
    def last_error(self) -> str:
        return self._last_error

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record given so far is acknowledged, sending again (with a new
        producer) those that failed, and in a smaller form those refused for good; raise if
        that does not happen within `timeout`. Nothing is forgotten: what is not
        acknowledged is sent again by the next flush."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                in_flight = self._producer.flush(max(deadline - time.monotonic(), 0.0))
            except:  # noqa: E722 - after a fatal error confluent-kafka may raise a non-exception
                self._last_error = _current_error()
                in_flight = len(self._producer)
            if self._send_refused() and time.monotonic() < deadline:
                continue
            if not self._pending:
                self._last_error = ""
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
            self._send_refused()
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
