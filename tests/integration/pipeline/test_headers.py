"""Record headers against the real servers: every stored record keeps its Kafka headers
(none, several, repeated names, null values, binary values, non-ASCII names), read back from
both stores equal to what was produced; a dead letter carries the original headers after its
`dlq.*` ones; objects of format 2 (written by the previous version, without headers) are
read by verify, the audit and the catch-up copy, and the new version writing the same
offsets again finds them without a conflict."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from replicator.config import Settings
from replicator.container import (
    FORMAT_VERSION,
    LEGACY_FORMAT,
    read_container,
    stored_records,
)
from replicator.devtools.synthetic import SyntheticSource
from replicator.kafka.deadletter import H_OFFSET, H_REASON, H_TOPIC
from replicator.keys import partition_prefix
from replicator.model import TP
from replicator.ops.audit import AuditOptions, run_audit
from replicator.ops.context import OpsContext
from replicator.ops.repair import run_repair
from replicator.ops.replay import RangeRequest, run_replay
from replicator.ops.verify import VerifyOptions, run_verify
from replicator.schemas import REIMBURSEMENTS_TOPIC, SchemaRegistry, encode_wire
from tests.support.formats import as_format_2
from tests.support.ops import ops, replace, replicate

pytestmark = pytest.mark.integration

Headers = list[tuple[str, bytes | None]]

# Every shape of header list a producer can send; names and values never hold a NIR.
HEADER_CASES: list[Headers | None] = [
    None,
    [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
    [("a", b"1"), ("b", b"2"), ("c", b"3"), ("d", b"4")],
    [("dup", b"first"), ("dup", b"second"), ("other", b"x"), ("dup", b"third")],
    [("nullable", None), ("after-null", b"v"), ("nullable", None)],
    [("binary", bytes(range(256))), ("empty", b"")],
    [("é-nom-ünïcødé", b"v"), ("名前", "値".encode()), ("emoji-\U0001f600", b"\x00\xff")],
    [("", b"empty name")],
]


def produce_with_headers(
    settings: Settings, count: int, seed: int, bad_every: int = 0
) -> tuple[dict[tuple[TP, int], Headers], set[tuple[TP, int]], dict[TP, int]]:
    """`count` good reimbursement records with the header lists of HEADER_CASES in turn
    (every `bad_every`-th one an undecodable value instead): what each offset carries
    (as the consumer gives it back: [] for no headers), the bad ones, and the ends."""
    registry = SchemaRegistry.load(settings.schemas_dir)
    source = SyntheticSource(seed, registry, v2_share=0.5)
    topic_of = {schema_topic: t for t, schema_topic in settings.schema_topics.items()}
    topic = topic_of[REIMBURSEMENTS_TOPIC]
    producer = Producer({**settings.kafka_common(), "linger.ms": 5})
    sent: dict[int, Headers] = {}
    delivered: dict[int, tuple[TP, int]] = {}
    errors: list[str] = []

    def on_delivery(seq: int) -> Callable[[Any, Any], None]:
        def done(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                delivered[seq] = ((msg.topic(), msg.partition()), msg.offset())

        return done

    bad_seqs = set()
    for seq in range(count):
        key, record, schema = source.next(REIMBURSEMENTS_TOPIC)
        headers = HEADER_CASES[seq % len(HEADER_CASES)]
        value = encode_wire(schema, record)
        if bad_every and seq % bad_every == bad_every - 1:
            value, headers = b"\x00\x00\x00\x7f\x7fnot avro", HEADER_CASES[3]
            bad_seqs.add(seq)
        sent[seq] = list(headers or [])
        producer.produce(
            topic,
            value=value,
            key=key,
            partition=seq % 3,
            headers=cast(list[tuple[str, str | bytes | None]] | None, headers),
            on_delivery=on_delivery(seq),
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors[:3]
    assert len(delivered) == count
    ends: dict[TP, int] = {}
    for tp, offset in delivered.values():
        ends[tp] = max(ends.get(tp, 0), offset + 1)
    return (
        {delivered[seq]: headers for seq, headers in sent.items()},
        {delivered[seq] for seq in bad_seqs},
        ends,
    )


def stored_headers(
    ctx: OpsContext, store: str, tps: list[TP]
) -> tuple[dict[tuple[TP, int], Headers | None], set[str]]:
    """Every stored record's headers, by (partition, offset), and the formats seen."""
    out: dict[tuple[TP, int], Headers | None] = {}
    formats = set()
    for tp in tps:
        for info in ctx.stores[store].list(partition_prefix(*tp)):
            contents = read_container(ctx.read(store, info.key))
            formats.add(contents.format)
            for rec in stored_records(contents):
                assert (tp, rec.offset) not in out
                out[(tp, rec.offset)] = None if rec.headers is None else list(rec.headers)
    return out, formats


def dead_letters(settings: Settings) -> dict[tuple[TP, int], Headers]:
    """Each dead letter's headers, in order, by the origin it names."""
    consumer = Consumer(
        {**settings.kafka_common(), "group.id": "headers-checker", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(settings.dead_letter_topic, p, 0) for p in range(3)])
    out: dict[tuple[TP, int], Headers] = {}
    idle = 0
    while idle < 10:
        msgs = consumer.consume(500, timeout=0.2)
        idle = 0 if msgs else idle + 1
        for msg in msgs:
            if msg.error() is not None:
                continue
            raw = cast(list[tuple[str, bytes | None]], msg.headers() or [])
            headers: Headers = [(str(n), v) for n, v in raw]
            found = dict(headers)  # the last occurrence of each name: ours
            origin = found[H_TOPIC]
            assert origin is not None
            tp = (origin.decode(), int(found["dlq.origin.partition"] or b""))
            out[(tp, int(found[H_OFFSET] or b""))] = headers
    consumer.close()
    return out


def test_headers_are_stored_in_both_stores_and_kept_by_dead_letters(
    stack: Any, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(chunk_max_records=50)
    produced, bad, ends = produce_with_headers(settings, 400, seed=150, bad_every=25)
    tps = sorted(ends)
    replicate(settings, ends)
    with ops(settings) as ctx:
        for store in settings.stores:
            got, formats = stored_headers(ctx, store, tps)
            assert formats == {FORMAT_VERSION}, store
            assert set(got) == set(produced) - bad, store
            for where, headers in got.items():
                assert headers == produced[where], (store, where)
        audit = run_audit(ctx, AuditOptions(write_manifest=False))
        assert audit.exit_code == 0, audit.summary()
        verify = run_verify(ctx, VerifyOptions())
        assert verify.exit_code == 0, verify.summary()
    letters = dead_letters(settings)
    assert set(letters) == bad
    for where, headers in letters.items():
        # the original headers first, in their order, then the dlq.* ones
        original = produced[where]
        assert original == HEADER_CASES[3]
        assert headers[: len(original)] == original
        own = headers[len(original) :]
        assert own[0] == (H_REASON, b"unknown_schema_id")
        assert all(name.startswith("dlq.") for name, _v in own)


def rewrite_as_format_2(ctx: OpsContext, settings: Settings, tps: list[TP], store: str) -> int:
    """Every object of these partitions in `store` replaced by its format-2 form (what the
    previous version wrote for the same chunks); the number rewritten."""
    count = 0
    for tp in tps:
        for info in list(ctx.stores[store].list(partition_prefix(*tp))):
            old = as_format_2(
                info.key, ctx.read(store, info.key), ctx.registry, settings.deflate_level
            )
            replace(ctx, store, info.key, old)
            count += 1
    return count


def commit(settings: Settings, group: str, offsets: dict[TP, int]) -> None:
    consumer = Consumer({**settings.kafka_common(), "group.id": group})
    consumer.commit(
        offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
    )
    consumer.close()


def test_the_new_version_meets_objects_of_format_2_without_a_conflict(
    stack: Any, settings_factory: Callable[..., Settings]
) -> None:
    """Format 2 in the stores, as the previous version left them. A new group (a replay
    from the start: every chunk written again) finds each object already there: no
    conflict, the objects stay as they are, verify and the audit pass. A store missing an
    object gets this version's (format 3) while the other keeps format 2: verify names the
    key under `format_switch`, no finding. A store behind its group catches up by copying
    the other store's format-2 objects."""
    settings = settings_factory(chunk_max_records=60)
    produced, bad, ends = produce_with_headers(settings, 300, seed=151, bad_every=40)
    tps = sorted(ends)
    replicate(settings, ends)
    rng = random.Random(151)
    with ops(settings) as ctx:
        counts = {s: rewrite_as_format_2(ctx, settings, tps, s) for s in settings.stores}
        assert counts["s3"] == counts["azure"] > len(tps)
        before = {s: {o.key: o.md5_hex for o in ctx.stores[s].list("")} for s in settings.stores}
        # One object of the first partition gone from Azure: this version writes it again.
        gone = rng.choice(
            sorted(k for k in before["azure"] if k.startswith(partition_prefix(*tps[0])))
        )
        ctx.stores["azure"].delete(gone)

    again = settings.model_copy(update={"group_id": settings.group_id + "-again"})
    service = replicate(again, ends)
    assert "conflict" not in service.stats.objects.get("s3", {})
    assert "conflict" not in service.stats.objects.get("azure", {})
    assert service.stats.objects["s3"]["already_present"] == counts["s3"]
    assert service.stats.objects["azure"]["already_present"] == counts["azure"] - 1
    assert service.stats.objects["azure"]["created"] == 1
    with ops(settings) as ctx:
        after = {s: {o.key: o.md5_hex for o in ctx.stores[s].list("")} for s in settings.stores}
        assert after["s3"] == before["s3"]  # never overwritten
        assert {k: v for k, v in after["azure"].items() if k != gone} == {
            k: v for k, v in before["azure"].items() if k != gone
        }
        assert read_container(ctx.read("azure", gone)).format == FORMAT_VERSION
        assert read_container(ctx.read("s3", gone)).format == LEGACY_FORMAT
        # the format-3 copy holds the headers; the format-2 objects none (not kept)
        for rec in stored_records(read_container(ctx.read("azure", gone))):
            assert list(rec.headers or []) == produced[(tps[0], rec.offset)]
        for store in settings.stores:
            got, _formats = stored_headers(ctx, store, tps)
            assert set(got) == set(produced) - bad
        verify = run_verify(ctx, VerifyOptions())
        assert verify.exit_code == 0, verify.summary()
        assert [k for p in verify.partitions for k in p.format_switch] == [gone]
        audit = run_audit(ctx, AuditOptions(write_manifest=False))
        assert audit.exit_code == 0, audit.summary()
        # a replay over everything: every object (of either format) found already there
        replay = run_replay(ctx, [RangeRequest(tp, 0, ends[tp] - 1) for tp in tps], ["s3", "azure"])
        for part in replay.partitions:
            assert part.error is None and part.conflicts == [] and part.written == {}, part
        assert sum(sum(p.skipped.values()) for p in replay.partitions) == 2 * counts["s3"]
        # repair: a format-2 object gone from Azure is copied back from S3 as it is
        lost = sorted(k for k in before["azure"] if k != gone)[-1]
        ctx.stores["azure"].delete(lost)
        repair = run_repair(ctx, VerifyOptions())
        assert repair.after is not None and repair.after.status == "aligned", repair.summary()
        assert ctx.read("azure", lost) == ctx.read("s3", lost)
        assert read_container(ctx.read("azure", lost)).format == LEGACY_FORMAT

    # Azure's group back at the start: its lane catches up by copying S3's objects (format 2
    # bytes as they are) for every known cut.
    with ops(settings) as ctx:
        for tp in tps:
            for info in list(ctx.stores["azure"].list(partition_prefix(*tp))):
                ctx.stores["azure"].delete(info.key)
    commit(settings, settings.progress_group("azure"), {tp: 0 for tp in tps})
    commit(settings, settings.progress_group("s3"), ends)
    service = replicate(settings, ends)
    assert "conflict" not in service.stats.objects.get("azure", {})
    with ops(settings) as ctx:
        s3 = {o.key: o.md5_hex for o in ctx.stores["s3"].list("")}
        azure = {o.key: o.md5_hex for o in ctx.stores["azure"].list("")}
        assert azure == s3 == before["s3"]
        verify = run_verify(ctx, VerifyOptions())
        assert verify.exit_code == 0, verify.summary()
        audit = run_audit(ctx, AuditOptions(write_manifest=False))
        assert audit.exit_code == 0, audit.summary()
