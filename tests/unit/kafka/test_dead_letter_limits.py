"""The dead-letter topic's limits, as pure logic: which refusals are permanent, which limit
applies, an upper bound of a record batch's size, the smaller form of a dead letter the
topic will not take, and the writer's handling of refusals (with a stand-in producer that
answers as librdkafka and a broker would: the integration tests cannot make the local
broker refuse a record, see tests/integration/pipeline/test_dead_letters.py)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import example, given, settings
from hypothesis import strategies as st

from replicator.kafka import deadletter
from replicator.kafka.deadletter import (
    DEFAULT_MAX_MESSAGE_BYTES,
    H_DETAIL,
    H_FIRST_REASON,
    H_HEADERS_DROPPED,
    H_KEY_SHA256,
    H_KEY_SIZE,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TIMESTAMP,
    H_TOPIC,
    H_VALUE_SHA256,
    H_VALUE_SIZE,
    LAST_STAGE,
    REPLACEMENT_MAX_BYTES,
    DeadLetterError,
    DeadLetterWriter,
    Headers,
    Letter,
    Limit,
    Refusal,
    batch_bytes,
    choose_limit,
    classify,
    read_headers,
    shrink,
)

# ------------------------------------------------------------------ classify
PERMANENT = {
    KafkaError.MSG_SIZE_TOO_LARGE: Refusal.TOO_LARGE,  # local (produce()) and broker: code 10
    KafkaError.RECORD_LIST_TOO_LARGE: Refusal.TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE: Refusal.TOO_LARGE,
    KafkaError.INVALID_RECORD: Refusal.INVALID,
}
# Transient on purpose (see deadletter.classify): what an operator or a retry can change.
TRANSIENT = [
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._MSG_TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TRANSPORT,
    KafkaError._FATAL,
    KafkaError._FENCED,
    KafkaError._PURGE_QUEUE,
    KafkaError._PURGE_INFLIGHT,
    KafkaError.INVALID_MSG,  # Kafka's CORRUPT_MESSAGE: retriable
    KafkaError.INVALID_TIMESTAMP,  # the producer's clock, not the record
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.REQUEST_TIMED_OUT,
]


@pytest.mark.parametrize(("code", "expected"), sorted(PERMANENT.items()))
def test_refusals_about_the_record_are_permanent(code: int, expected: Refusal) -> None:
    assert classify(code) is expected


@pytest.mark.parametrize("code", TRANSIENT)
def test_refusals_an_operator_or_a_retry_can_change_are_transient(code: int) -> None:
    assert classify(code) is Refusal.TRANSIENT


def test_every_other_error_code_is_transient() -> None:
    codes = {v for k, v in vars(KafkaError).items() if k.isupper() or k.startswith("_")}
    codes = {c for c in codes if isinstance(c, int) and not isinstance(c, bool)}
    assert len(codes) > 100  # the client's whole table, local and broker codes
    for code in codes - set(PERMANENT):
        assert classify(code) is Refusal.TRANSIENT, code


# ------------------------------------------------------------------ choose_limit
@pytest.mark.parametrize(
    ("topic", "broker", "expected"),
    [
        ("2000000", "1048588", Limit(2_000_000, "topic")),  # the topic's overrides the broker's
        ("500000", "1048588", Limit(500_000, "topic")),
        (None, "3000000", Limit(3_000_000, "broker")),
        ("", "3000000", Limit(3_000_000, "broker")),
        ("not a number", "3000000", Limit(3_000_000, "broker")),
        ("0", "3000000", Limit(3_000_000, "broker")),
        (None, None, Limit(DEFAULT_MAX_MESSAGE_BYTES, "default")),
        ("-1", "x", Limit(DEFAULT_MAX_MESSAGE_BYTES, "default")),
        ("12", None, Limit(1_000, "topic")),  # librdkafka's floor for message.max.bytes
        ("2147483647", None, Limit(1_000_000_000, "topic")),  # and its ceiling
    ],
)
def test_the_limit_comes_from_the_topic_then_the_broker_then_the_default(
    topic: str | None, broker: str | None, expected: Limit
) -> None:
    assert choose_limit(topic, broker) == expected


# ------------------------------------------------------------------ batch_bytes
def _varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)  # zigzag
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _kafka_batch(key: bytes | None, value: bytes | None, headers: Headers, ts_delta: int) -> int:
    """The size of a record batch (magic 2) holding this one record, encoded as Kafka
    does (an independent encoder: DefaultRecord and DefaultRecordBatch)."""
    body = b"\x00" + _varint(ts_delta) + _varint(0)
    for part in (key, value):
        body += _varint(-1) if part is None else _varint(len(part)) + part
    body += _varint(len(headers))
    for name, hv in headers:
        raw = hv.encode() if isinstance(hv, str) else hv
        body += _varint(len(name.encode())) + name.encode()
        body += _varint(-1) if raw is None else _varint(len(raw)) + raw
    record = _varint(len(body)) + body
    header = struct.pack(">qiibIhiqqqhii", 0, 0, 0, 2, 0, 0, 0, 0, 0, -1, -1, -1, 1)
    assert len(header) == 61
    return len(header) + len(record)


# Lengths around each varint width boundary, and around the limits of the test table.
LENGTHS = st.one_of(
    st.integers(0, 300),
    st.sampled_from([63, 64, 8191, 8192, 1_048_575, 1_048_576, 1_000_000, 2_000_001]),
)


@settings(max_examples=150, deadline=None)
@given(
    key=st.one_of(st.none(), LENGTHS),
    value=st.one_of(st.none(), LENGTHS),
    headers=st.lists(st.tuples(st.text(max_size=40), st.integers(0, 600)), max_size=12),
    ts_delta=st.integers(0, 2**62),
)
def test_batch_bytes_is_never_below_the_size_kafka_compares_with_the_limit(
    key: int | None, value: int | None, headers: list[tuple[str, int]], ts_delta: int
) -> None:
    k = None if key is None else b"k" * key
    v = None if value is None else b"v" * value
    hs: Headers = [(name, b"h" * n) for name, n in headers]
    real = _kafka_batch(k, v, hs, ts_delta)
    assert real <= batch_bytes(k, v, hs) <= real + 100 + 10 * len(hs)


# ------------------------------------------------------------------ shrink
def _letter(
    key: bytes | None,
    value: bytes | None,
    detail: str = "d",
    topic: str = "t",
    original: Headers | None = None,
) -> Letter:
    return Letter(
        key,
        value,
        [
            (H_REASON, b"undecodable"),
            (H_DETAIL, detail.encode()),
            (H_TOPIC, topic.encode()),
            (H_PARTITION, b"2"),
            (H_OFFSET, b"17"),
            (H_TIMESTAMP, b"1700000000000"),
        ],
        original=list(original or []),
    )


def _headers(letter: Letter) -> dict[str, bytes]:
    return {name: hv for name, hv in letter.headers if isinstance(hv, bytes)}


def test_a_dead_letter_without_its_value_says_what_was_left_out_and_keeps_its_origin() -> None:
    value = b"\xff" * 5_000_000
    small = shrink(_letter(b"key-1", value), Refusal.TOO_LARGE, "over 1000000", 1_000_000)
    assert small is not None and small.stage == 1
    assert small.value is None and small.key == b"key-1"
    h = _headers(small)
    assert h[H_REASON] == b"oversized"
    assert h[H_FIRST_REASON] == b"undecodable"
    assert h[H_VALUE_SIZE] == b"5000000"
    assert h[H_VALUE_SHA256] == hashlib.sha256(value).hexdigest().encode()
    assert (h[H_TOPIC], h[H_PARTITION], h[H_OFFSET], h[H_TIMESTAMP]) == (
        b"t",
        b"2",
        b"17",
        b"1700000000000",
    )
    assert h[H_DETAIL] == (b"value of 5000000 bytes left out: over 1000000; judged undecodable: d")
    assert H_KEY_SIZE not in h
    # A refusal of the record's content, not its size, says so.
    refused = shrink(_letter(b"k", b"v"), Refusal.INVALID, "INVALID_RECORD", 1_000_000)
    assert refused is not None and _headers(refused)[H_REASON] == b"refused"


def test_a_key_that_does_not_fit_is_left_out_too_with_its_size_and_hash() -> None:
    key = b"K" * 3000
    small = shrink(_letter(key, b"v" * 10), Refusal.TOO_LARGE, "c", 2_000)
    assert small is not None and small.stage == LAST_STAGE
    assert small.key is None and small.value is None
    h = _headers(small)
    assert h[H_KEY_SIZE] == b"3000" and h[H_KEY_SHA256] == hashlib.sha256(key).hexdigest().encode()
    assert h[H_VALUE_SIZE] == b"10"
    # A key refused with the value left out goes next; after that nothing is left to drop.
    keyed = shrink(_letter(b"k", b"v"), Refusal.TOO_LARGE, "c", 2_000)
    assert keyed is not None and keyed.stage == 1
    last = shrink(keyed, Refusal.TOO_LARGE, "c", 2_000)
    assert last is not None and last.stage == LAST_STAGE and last.key is None
    assert _headers(last)[H_KEY_SIZE] == b"1"
    assert shrink(last, Refusal.TOO_LARGE, "c", 2_000) is None


_ORIGINAL = st.lists(
    st.tuples(
        st.text(max_size=30),
        st.one_of(st.none(), st.integers(0, 3_000).map(lambda n: b"h" * n)),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.one_of(st.none(), st.integers(0, 5_000)),
    value=st.one_of(st.none(), st.integers(0, 50_000)),
    detail=st.text(max_size=3_000),
    topic=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=249),
    limit=st.integers(REPLACEMENT_MAX_BYTES, 10_000),
    original=_ORIGINAL,
)
# found by hypothesis: the key fitted beside our headers, not beside dlq.headers.dropped too
@example(key=3914, value=None, detail="", topic="0", limit=4430, original=[("", None)])
def test_the_smaller_form_always_fits_any_limit_from_its_floor(
    key: int | None, value: int | None, detail: str, topic: str, limit: int, original: Headers
) -> None:
    """Whatever the record, its detail, its topic name (Kafka allows 249 characters) and
    its own headers, each smaller form fits any limit of REPLACEMENT_MAX_BYTES or more (the
    last one even a limit of REPLACEMENT_MAX_BYTES alone, whatever `limit` was), and keeps
    the original headers from the first on, in order, as many as fit, counting the others
    in dlq.headers.dropped."""
    letter = _letter(
        None if key is None else b"k" * key,
        None if value is None else b"v" * value,
        detail,
        topic,
        original,
    )
    small = shrink(letter, Refusal.TOO_LARGE, "a cause", limit)
    while small is not None:
        wire = small.wire_headers
        floor = REPLACEMENT_MAX_BYTES if small.stage == LAST_STAGE else limit
        assert batch_bytes(small.key, small.value, wire) <= floor
        if wire[-1][0] == H_HEADERS_DROPPED:
            kept = wire[: -len(small.headers) - 1]
            assert wire[-1][1] == str(len(original) - len(kept)).encode()
            assert len(kept) < len(original)
        else:
            kept = wire[: -len(small.headers)]
        assert wire[len(kept) : len(kept) + len(small.headers)] == small.headers
        assert kept == original[: len(kept)]
        if small.stage == 1 and len(kept) < len(original):
            # the next original header would not have fit
            name, hv = original[len(kept)]
            grown = [*small.headers, *kept, (name, hv), (H_HEADERS_DROPPED, b"9" * 10)]
            assert batch_bytes(small.key, None, grown) > limit
        small = shrink(small, Refusal.TOO_LARGE, "a cause", limit)


def test_a_dead_letter_keeps_the_original_headers_before_its_own() -> None:
    original: Headers = [("trace", b"t"), ("dup", b"1"), ("dup", None), ("é", b"\xff")]
    letter = _letter(b"k", b"v", original=original)
    assert letter.wire_headers == [*original, *letter.headers]
    small = shrink(letter, Refusal.TOO_LARGE, "c", 1_000_000)
    assert small is not None and small.stage == 1
    assert small.wire_headers == [*original, *small.headers]
    # an original header of one of our names does not hide ours from a last-wins reader
    spoofed = _letter(b"k", b"v", original=[(H_REASON, b"none"), (H_OFFSET, b"-1")])
    assert dict(spoofed.wire_headers)[H_REASON] == b"undecodable"
    assert dict(spoofed.wire_headers)[H_OFFSET] == b"17"
    # too many to fit: the first ones kept, the count of the others said
    big: Headers = [(f"h{i}", b"x" * 300) for i in range(20)]
    small = shrink(_letter(b"k", b"v" * 5_000, original=big), Refusal.TOO_LARGE, "c", 3_000)
    assert small is not None and small.stage == 1
    wire = small.wire_headers
    assert wire[-1][0] == H_HEADERS_DROPPED
    kept = wire[: -len(small.headers) - 1]
    assert 0 < len(kept) < 20 and kept == big[: len(kept)]
    assert wire[-1][1] == str(20 - len(kept)).encode()


_HEADER_NAMES = st.sampled_from(["trace", "dup", "é", H_REASON, H_OFFSET, H_VALUE_SIZE, "dlq.x"])


@settings(max_examples=300)
@given(
    st.lists(st.tuples(_HEADER_NAMES, st.one_of(st.none(), st.binary(max_size=6))), max_size=8),
    st.sampled_from([0, 1, 2]),
    st.integers(1_000, 5_000),
)
def test_read_headers_gives_back_the_original_and_ours_in_every_form(
    original: Headers, stage: int, limit: int
) -> None:
    """The reader of the writer's layout (audit and redrive use it): whatever the original
    carried, `dlq.*` names included, and whichever form went (as it is, without value,
    without key), the original's headers come back as sent and ours as ours."""
    letter = _letter(b"k", b"v" * 4_000, original=original)
    for _ in range(stage):
        smaller = shrink(letter, Refusal.TOO_LARGE, "c", limit)
        assert smaller is not None
        letter = smaller
    read = read_headers(letter.wire_headers)
    assert read is not None
    got_original, ours = read
    sent = letter.original if letter.kept < 0 else letter.original[: letter.kept]
    assert got_original == sent
    assert ours[H_REASON] == letter.header(H_REASON)
    assert ours[H_OFFSET] == "17"
    assert read_headers(original if all(n != H_REASON for n, _ in original) else []) is None


# ------------------------------------------------------------------ the writer
class StandIn:
    """A producer answering as librdkafka would: `local_limit` refuses at produce() (the
    producer's message.max.bytes), `broker` answers each delivery (an error code or None)."""

    instances: list[StandIn] = []
    local_limit = 10**9
    broker: Callable[[Any], int | None] = staticmethod(lambda msg: None)

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.queue: list[tuple[dict[str, Any], Any]] = []
        self.topic: list[dict[str, Any]] = []  # what the broker acknowledged
        StandIn.instances.append(self)

    def produce(self, topic: str, **msg: Any) -> None:
        size = len(msg["value"] or b"") + len(msg["key"] or b"")
        if size > StandIn.local_limit:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.queue.append((msg, msg.pop("on_delivery")))

    def poll(self, _timeout: float) -> int:
        queue, self.queue = self.queue, []
        for msg, callback in queue:
            code = StandIn.broker(msg)
            if code is None:
                self.topic.append(msg)
            callback(None if code is None else KafkaError(code), None)
        return len(queue)

    def flush(self, _timeout: float) -> int:
        self.poll(0)
        return 0

    def purge(self) -> None:
        self.queue.clear()

    def __len__(self) -> int:
        return len(self.queue)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> type[StandIn]:
    StandIn.instances = []
    StandIn.local_limit = 10**9
    StandIn.broker = staticmethod(lambda msg: None)
    monkeypatch.setattr(deadletter, "Producer", StandIn)
    return StandIn


def _send(writer: DeadLetterWriter, offset: int, value: bytes, key: bytes | None = b"k") -> None:
    writer.send(
        topic="src",
        partition=0,
        offset=offset,
        timestamp_ms=5,
        key=key,
        value=value,
        reason="not_wire_format",
        detail="d",
    )


def _acknowledged(stand_in: type[StandIn]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for producer in stand_in.instances:
        for msg in producer.topic:
            headers = dict(msg["headers"])
            out[int(headers[H_OFFSET])] = {**msg, "headers": headers}
    return out


def test_the_producer_is_set_from_the_topic_limit(stand_in: type[StandIn]) -> None:
    DeadLetterWriter({"bootstrap.servers": "x"}, "dlq", max_message_bytes=2_000_000)
    assert stand_in.instances[0].conf["message.max.bytes"] == 2_000_000


@pytest.mark.parametrize(
    ("where", "code", "reason"),
    [
        ("over the limit announced", None, b"oversized"),
        ("producer", KafkaError.MSG_SIZE_TOO_LARGE, b"oversized"),
        ("broker", KafkaError.MSG_SIZE_TOO_LARGE, b"oversized"),  # MESSAGE_TOO_LARGE
        ("broker", KafkaError.RECORD_LIST_TOO_LARGE, b"oversized"),
        ("broker", KafkaError.INVALID_RECORD, b"refused"),
    ],
)
def test_a_record_refused_for_good_goes_without_its_value_and_the_rest_as_they_are(
    stand_in: type[StandIn], where: str, code: int | None, reason: bytes
) -> None:
    dropped: list[tuple[str, str]] = []
    writer = DeadLetterWriter(
        {}, "dlq", max_message_bytes=10_000, on_dropped=lambda t, r: dropped.append((t, r))
    )
    big = b"\xff" * 20_000 if where == "over the limit announced" else b"\xff" * 5_000
    if where == "producer":
        stand_in.local_limit = 4_000
    if where == "broker":
        assert code is not None
        stand_in.broker = staticmethod(lambda msg: code if msg["value"] == big else None)
    for offset, value in enumerate([b"a", big, b"b", big, b"c"]):
        _send(writer, offset, value)
    writer.flush(timeout=5)
    assert writer.undelivered == 0
    got = _acknowledged(stand_in)
    assert sorted(got) == [0, 1, 2, 3, 4]
    for offset in (0, 2, 4):
        assert got[offset]["value"] in (b"a", b"b", b"c")
        assert got[offset]["headers"][H_REASON] == b"not_wire_format"
    for offset in (1, 3):
        assert got[offset]["value"] is None and got[offset]["key"] == b"k"
        assert got[offset]["headers"][H_REASON] == reason
        assert got[offset]["headers"][H_VALUE_SIZE] == str(len(big)).encode()
    assert dropped == [("src", reason.decode())] * 2


def test_a_transient_refusal_keeps_the_record_as_it_is_until_delivered(
    stand_in: type[StandIn],
) -> None:
    writer = DeadLetterWriter({}, "dlq", max_message_bytes=10_000)
    stand_in.broker = staticmethod(lambda msg: KafkaError.TOPIC_AUTHORIZATION_FAILED)
    _send(writer, 7, b"x" * 500)
    with pytest.raises(DeadLetterError, match="not acknowledged"):
        writer.flush(timeout=0.5)
    assert writer.undelivered == 1
    stand_in.broker = staticmethod(lambda msg: None)  # access granted again
    writer.flush(timeout=5)
    assert writer.undelivered == 0
    assert _acknowledged(stand_in)[7]["value"] == b"x" * 500  # with its value


def test_a_record_refused_even_without_value_and_key_holds_and_says_so(
    stand_in: type[StandIn],
) -> None:
    writer = DeadLetterWriter({}, "dlq", max_message_bytes=10_000)
    stand_in.broker = staticmethod(lambda msg: KafkaError.INVALID_RECORD)
    _send(writer, 3, b"x")
    with pytest.raises(DeadLetterError, match="even without value and key"):
        writer.flush(timeout=0.5)
    assert writer.undelivered == 1
