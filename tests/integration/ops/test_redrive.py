"""`replicator redrive` against the real servers.

The story it was built for: a producer starts writing a new schema version before the
service knows it, so its records are dead-lettered as `unknown_schema_id`; the schema is
then registered (here: a copy of the schema directory with the new version added, and the
service started again on it); the dead letters are re-driven, and every one of them is then
in both stores, record for record, at its new offset, while the audit stays clean.

Also: the selection filters on a table of cases (dry runs: nothing written), a crash between
the producer's flush and the commit (and after the commit) then a second run, a dead letter
sent without its value (refused, exit 1, nothing produced for it), and bad usage (exit 2)
or no Kafka (exit 3).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from replicator.config import Settings
from replicator.container import read_container, stored_records
from replicator.devtools.synthetic import SyntheticSource
from replicator.kafka.deadletter import DeadLetterWriter
from replicator.keys import partition_prefix
from replicator.model import TP
from replicator.ops.audit import AuditOptions, run_audit
from replicator.ops.context import OpsContext
from replicator.ops.cutover import CRASH_EXIT
from replicator.ops.redrive import RedriveOptions, run_redrive
from replicator.ops.redrive_logic import (
    H_REDRIVE_DEAD_LETTER,
    Selection,
    progress_group,
    redriven_origin,
)
from replicator.schemas import REIMBURSEMENTS_TOPIC, SchemaRegistry, encode_wire
from tests.support.checker import SCHEMAS
from tests.support.ops import cli, ops, replicate
from tests.support.service import Progress

pytestmark = pytest.mark.integration

NEW_ID = 5  # the id the producers' registry gave the new version


def schema_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(the schema directory the service starts with, the same with a third version of the
    reimbursement schema registered as id NEW_ID: one more optional field)."""
    old, new = tmp_path / "schemas-old", tmp_path / "schemas-new"
    shutil.copytree(SCHEMAS, old)
    shutil.copytree(SCHEMAS, new)
    v2 = json.loads((SCHEMAS / "reimbursement-v2.avsc").read_text())
    v2["fields"].append(
        {"name": "channel", "type": ["null", "string"], "default": None, "doc": "added in v3"}
    )
    (new / "reimbursement-v3.avsc").write_text(json.dumps(v2))
    registry = json.loads((SCHEMAS / "registry.json").read_text())
    assert str(NEW_ID) not in registry
    registry[str(NEW_ID)] = {
        "subject": f"{REIMBURSEMENTS_TOPIC}-value",
        "file": "reimbursement-v3.avsc",
        "version": 3,
    }
    (new / "registry.json").write_text(json.dumps(registry))
    return old, new


@dataclass
class Scenario:
    settings: Settings  # on the directory with the new schema
    topic: str  # where the new version was written
    new: set[tuple[TP, int]]  # (tp, offset) of each record of the new version: dead-lettered
    ends: dict[TP, int]  # every replicated partition's end after the first run


def produce_mixed(
    settings: Settings, registry: SchemaRegistry, count: int, seed: int
) -> set[tuple[TP, int]]:
    """`count` records to the first topic, round robin over its partitions, one per batch:
    every third one of the new version (with a header of its own), the others of the versions
    the service knows. The (tp, offset) of the new ones."""
    topic = settings.topics[0]
    # the versions the service knows (the new one is written on purpose below)
    source = SyntheticSource(seed, SchemaRegistry.load(settings.schemas_dir))
    producer = Producer({**settings.kafka_common(), "linger.ms": 0, "enable.idempotence": True})
    new_schema = registry.get(NEW_ID)
    delivered: list[tuple[int, int, bool]] = []

    def delivery(is_new: bool) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            assert err is None, err
            delivered.append((msg.partition(), msg.offset(), is_new))

        return on_delivery

    for i in range(count):
        key, record, schema = source.next(REIMBURSEMENTS_TOPIC)
        partition = i % 3
        is_new = i % 3 == 1 or i % 7 == 0
        if is_new:
            full = {n: record.get(n) for n in new_schema.field_names}
            full["channel"] = "web"
            full["care_setting"] = None
            value = encode_wire(new_schema, full)
        else:
            value = encode_wire(schema, record)
        producer.produce(
            topic,
            key=key,
            value=value,
            partition=partition,
            timestamp=source.clock_ms,
            headers=[("trace", f"t{i}".encode())],
            on_delivery=delivery(is_new),
        )
        producer.flush(10)
    assert len(delivered) == count
    return {((topic, p), o) for p, o, n in delivered if n}


def dead_lettered_scenario(
    settings_factory: Callable[..., Settings], tmp_path: Path, count: int = 45, seed: int = 15
) -> Scenario:
    """Records of a version the service does not know, dead-lettered by a first run; then
    the version registered (the settings returned point at the new directory)."""
    old_dir, new_dir = schema_dirs(tmp_path)
    before = settings_factory(schemas_dir=old_dir, chunk_max_records=10)
    new = produce_mixed(before, SchemaRegistry.load(new_dir), count, seed)
    with ops(before) as ctx:
        tps = [(t, p) for t in before.topics for p in ctx.kafka.partitions(t)]
        ends = ctx.kafka.ends(tps)
        replicate(before, ends)
        dlq = [(before.dead_letter_topic, p) for p in range(3)]
        dlq_ends = ctx.kafka.ends(dlq)
        dead = {
            dead_letter_origin(m.headers()): dict(m.headers() or [])
            for tp in dlq
            for m in ctx.kafka.read_range(tp, 0, dlq_ends[tp] - 1)
        }
    assert set(dead) == new, [
        (o, h["dlq.reason"], h["dlq.detail"]) for o, h in dead.items() if o not in new
    ][:5]
    assert set(dead) == new, "every record of the new version is dead-lettered, and only they"
    for headers in dead.values():
        assert headers["dlq.reason"] == b"unknown_schema_id"
    return Scenario(before.model_copy(update={"schemas_dir": new_dir}), before.topics[0], new, ends)


def dead_letter_origin(headers: Any) -> tuple[TP, int]:
    h = dict(headers)
    return (
        (h["dlq.origin.topic"].decode(), int(h["dlq.origin.partition"])),
        int(h["dlq.origin.offset"]),
    )


def stored(
    ctx: OpsContext, store: str, tp: TP
) -> dict[int, list[tuple[int, bytes | None, int, bytes]]]:
    """Every record the store holds for the partition: offset -> [(timestamp, key, schema
    id, body)] (a list: an offset held twice would show)."""
    out: dict[int, list[tuple[int, bytes | None, int, bytes]]] = {}
    for info in ctx.stores[store].list(partition_prefix(*tp)):
        for r in stored_records(read_container(ctx.read(store, info.key))):
            out.setdefault(r.offset, []).append((r.timestamp_ms, r.key, r.schema_id, r.body))
    return out


def redriven_records(ctx: OpsContext, tp: TP, start: int) -> dict[int, Any]:
    """The records of `tp` from `start` on (the re-driven ones), by offset."""
    end = ctx.kafka.ends([tp])[tp]
    return {offset_of(m): m for m in ctx.kafka.read_range(tp, start, end - 1)}


def offset_of(msg: Any) -> int:
    offset = msg.offset()
    assert isinstance(offset, int)
    return offset


def check_all_stored(s: Scenario, doubled_allowed: int = 0) -> dict[Any, list[int]]:
    """Every dead letter re-driven: each origin named by exactly one re-driven record (more
    only within `doubled_allowed` extra copies), each re-driven record in both stores at its
    offset with the original's key, timestamp and value, and the audit clean. The new
    offsets of each origin."""
    settings = s.settings
    with ops(settings) as ctx:
        tps = [(t, p) for t in settings.topics for p in ctx.kafka.partitions(t)]
        ends = ctx.kafka.ends(tps)
        replicate(settings, ends)
        dlq = [(settings.dead_letter_topic, p) for p in range(3)]
        dlq_ends = ctx.kafka.ends(dlq)
        letters = {
            f"{t}/{p}/{offset_of(m)}": m
            for t, p in dlq
            for m in ctx.kafka.read_range((t, p), 0, dlq_ends[(t, p)] - 1)
        }
        copies: dict[Any, list[int]] = {}
        for tp in tps:
            originals = {offset_of(m): m for m in ctx.kafka.read_range(tp, 0, s.ends[tp] - 1)}
            holdings = {store: stored(ctx, store, tp) for store in ("s3", "azure")}
            for offset, msg in redriven_records(ctx, tp, s.ends[tp]).items():
                origin = redriven_origin(msg.headers())
                assert origin is not None, msg.headers()
                assert (origin[0], origin[1]) == tp, "re-driven to its origin partition"
                copies.setdefault(((origin[0], origin[1]), origin[2]), []).append(offset)
                original = originals[origin[2]]
                assert msg.key() == original.key()
                assert msg.value() == original.value()
                assert msg.timestamp()[1] == original.timestamp()[1]
                headers = msg.headers() or []
                # the dead letter's headers but its dlq.* ones (the original's own headers
                # once the dead-letter writer keeps them), then the redrive.* ones
                letter = letters[dict(headers)[H_REDRIVE_DEAD_LETTER].decode()]
                kept = [h for h in letter.headers() or [] if not h[0].startswith("dlq.")]
                assert [h for h in headers if not h[0].startswith("redrive.")] == kept
                assert not [n for n, _ in headers if n.startswith("dlq.")]
                value = msg.value()
                assert value is not None
                for store, held in holdings.items():
                    assert held.get(offset) == [
                        (original.timestamp()[1], original.key(), NEW_ID, value[5:])
                    ], (store, tp, offset)
            for store, held in holdings.items():
                for dead in (o for (t, o) in s.new if t == tp):
                    assert dead not in held, (store, tp, dead)
        assert set(copies) == s.new, "every dead letter re-driven"
        extra = sum(len(v) - 1 for v in copies.values())
        assert extra <= doubled_allowed
        audit = run_audit(ctx, AuditOptions(write_manifest=False))
    assert audit.exit_code == 0, audit.summary()
    totals = audit.totals()
    assert totals["dead_lettered"] == len(s.new)
    assert totals["redriven"] == len(s.new) + extra
    return copies


def committed(settings: Settings, selection: Selection, partitions: int = 3) -> dict[TP, int]:
    reader = Progress(settings.kafka_bootstrap, progress_group(settings.group_id, selection))
    try:
        return reader.committed([(settings.dead_letter_topic, p) for p in range(partitions)])
    finally:
        reader.close()


def test_dead_letters_of_a_schema_registered_later_are_redriven_into_both_stores(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    s = dead_lettered_scenario(settings_factory, tmp_path)
    settings = s.settings
    dry = cli(settings, "redrive", "--reason", "unknown_schema_id", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["counts"]["redrive"] == len(s.new)
    assert planned["redrive_id"] is None
    assert {
        ((g["topic"], g["partition"]), o)
        for g in planned["groups"]
        for a, b in g["offsets"]
        for o in range(a, b + 1)
    } == s.new
    with ops(settings) as ctx:
        assert ctx.kafka.ends(list(s.ends)) == s.ends, "a dry run writes nothing"
    selection = Selection(reasons=frozenset({"unknown_schema_id"}))
    assert all(o < 0 for o in committed(settings, selection).values())

    report_path = tmp_path / "redrive.json"
    run = cli(settings, "redrive", "--reason", "unknown_schema_id", "--output", str(report_path))
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    assert report["status"] == "done"
    assert report["counts"]["produced"] == len(s.new) == report["counts"]["redrive"]
    assert report["redrive_id"].startswith("redrive-")
    assert "result: DONE (exit 0)" in run.stdout
    n = len(s.new)
    # progress on stderr (not a terminal: plain lines, the last one at the end)
    assert f"redrive: {n}/{n} dead letters (100%), {n} re-driven" in run.stderr.splitlines()[-1]
    check_all_stored(s)

    again_path = tmp_path / "again.json"
    again = cli(
        settings, "redrive", "--reason", "unknown_schema_id", "--json", "-o", str(again_path)
    )
    assert again.returncode == 0, again.stderr
    assert again_path.read_text() == again.stdout, "--json prints what --output writes"
    assert json.loads(again.stdout)["counts"]["read"] == 0, "a second run re-drives nothing"
    assert "result: DONE (exit 0)" in again.stderr


def test_records_re_driven_too_early_are_dead_lettered_again_and_counted_so(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """Re-driven before their schema version is registered, the copies are dead-lettered
    again: the audit is clean, counts origin and copy dead-lettered, and counts none of the
    copies among the stored re-driven records (it counted every re-driven record read)."""
    s = dead_lettered_scenario(settings_factory, tmp_path, count=21, seed=16)
    early = s.settings.model_copy(update={"schemas_dir": tmp_path / "schemas-old"})
    selection = Selection(reasons=frozenset({"unknown_schema_id"}))
    report = run_redrive(early, RedriveOptions(selection=selection))
    assert report.exit_code == 0 and report.produced == len(s.new)
    with ops(early) as ctx:
        ends = ctx.kafka.ends(list(s.ends))
    assert sum(ends.values()) == sum(s.ends.values()) + len(s.new)
    replicate(early, ends)
    with ops(early) as ctx:
        audit = run_audit(ctx, AuditOptions(write_manifest=False))
    assert audit.exit_code == 0, audit.summary()
    totals = audit.totals()
    assert (totals["dead_lettered"], totals["redriven"]) == (2 * len(s.new), 0)
    assert "re-driven" not in audit.summary()


@pytest.mark.parametrize(
    ("step", "doubled"),
    [("flushed", 10), ("committed", 0)],
    ids=["between-flush-and-commit", "after-commit"],
)
def test_a_crash_redrives_at_most_the_batch_in_flight_and_the_audit_stays_clean(
    stack: Any,
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    step: str,
    doubled: int,
) -> None:
    s = dead_lettered_scenario(settings_factory, tmp_path, count=60, seed=16)
    assert len(s.new) > 20
    settings = s.settings
    crashed = cli(
        settings,
        "redrive",
        "--batch",
        "10",
        extra_env={"REPLICATOR_TEST_CRASH_AFTER": f"redrive:{step}"},
    )
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    with ops(settings) as ctx:
        ends = ctx.kafka.ends(list(s.ends))
    assert sum(ends.values()) - sum(s.ends.values()) == 10, "the first batch was produced"
    marks = committed(settings, Selection())
    assert (sum(o for o in marks.values() if o > 0) > 0) == (step == "committed")

    rerun = cli(settings, "redrive", "--batch", "10", "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["counts"]["produced"] == len(s.new) - 10 + doubled
    copies = check_all_stored(s, doubled_allowed=doubled)
    assert sum(len(v) - 1 for v in copies.values()) == doubled
    with ops(settings) as ctx:
        # a doubled copy names the same dead letter as the first: recognisable
        for offsets in (v for v in copies.values() if len(v) > 1):
            tp = next(iter(t for (t, o), v in copies.items() if v == offsets))
            names = {
                dict(m.headers() or [])[H_REDRIVE_DEAD_LETTER]
                for o in offsets
                for m in ctx.kafka.read_range(tp, o, o)
            }
            assert len(names) == 1


def test_selection_filters_pick_exactly_the_dead_letters_they_name(
    stack: Any, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory()
    a, b = settings.topics
    base = 1_790_000_000_000
    # origins: (topic, partition, offset, timestamp, reason)
    origins = [
        (t, p, o, base + 1000 * o + p, reason)
        for t in (a, b)
        for p in (0, 1, 2)
        for o, reason in enumerate(
            ["unknown_schema_id", "invalid_value", "unknown_schema_id", "undecodable"] * 2
        )
    ]
    writer = DeadLetterWriter(settings.kafka_common(), settings.dead_letter_topic)
    for t, p, o, ts, reason in origins:
        writer.send(
            topic=t,
            partition=p,
            offset=o,
            timestamp_ms=ts,
            key=f"k{o}".encode(),
            value=b"\x00\x00\x00\x00\x09" + bytes([o]),
            reason=reason,
            detail="test",
        )
    writer.flush(30)
    writer.close()
    cases: list[tuple[str, Selection, Callable[[str, int, int, int, str], bool]]] = [
        ("everything", Selection(), lambda t, p, o, ts, r: True),
        (
            "reason",
            Selection(reasons=frozenset({"unknown_schema_id"})),
            lambda t, p, o, ts, r: r == "unknown_schema_id",
        ),
        (
            "two reasons",
            Selection(reasons=frozenset({"invalid_value", "undecodable"})),
            lambda t, p, o, ts, r: r in ("invalid_value", "undecodable"),
        ),
        ("topic", Selection(topics=frozenset({b})), lambda t, p, o, ts, r: t == b),
        (
            "partitions",
            Selection(partitions=frozenset({0, 2})),
            lambda t, p, o, ts, r: p in (0, 2),
        ),
        ("from offset", Selection(from_offset=5), lambda t, p, o, ts, r: o >= 5),
        (
            "offset range",
            Selection(from_offset=2, to_offset=4),
            lambda t, p, o, ts, r: 2 <= o <= 4,
        ),
        ("to offset", Selection(to_offset=0), lambda t, p, o, ts, r: o == 0),
        (
            "time range",
            Selection(since_ms=base + 3000, until_ms=base + 6000),
            lambda t, p, o, ts, r: base + 3000 <= ts < base + 6000,
        ),
        ("since", Selection(since_ms=base + 7000), lambda t, p, o, ts, r: ts >= base + 7000),
        (
            "all at once",
            Selection(
                reasons=frozenset({"unknown_schema_id"}),
                topics=frozenset({a}),
                partitions=frozenset({1}),
                from_offset=1,
                to_offset=6,
                since_ms=base + 2000,
            ),
            lambda t, p, o, ts, r: (
                r == "unknown_schema_id" and t == a and p == 1 and 1 <= o <= 6 and ts >= base + 2000
            ),
        ),
        ("nothing", Selection(reasons=frozenset({"no_such_reason"})), lambda *_: False),
    ]
    with ops(settings) as ctx:
        tps = [(t, p) for t in settings.topics for p in range(3)]
        before = ctx.kafka.ends(tps)
    for name, selection, wanted in cases:
        report = run_redrive(settings, RedriveOptions(selection=selection, dry_run=True))
        assert report.exit_code == 0, (name, report.summary())
        got = {
            (g["topic"], g["partition"], o)
            for g in report.tally.groups()
            for lo, hi in g["offsets"]
            for o in range(lo, hi + 1)
        }
        expected = {(t, p, o) for t, p, o, ts, r in origins if wanted(t, p, o, ts, r)}
        assert got == expected, name
        assert report.tally.read == len(origins), name
        assert report.tally.verdicts["redrive"] == len(expected), name
        assert all(o < 0 for o in committed(settings, selection).values()), name
    with ops(settings) as ctx:
        assert ctx.kafka.ends(tps) == before, "dry runs write nothing"

    # one selection for real: exactly its dead letters reach their origins, with their bytes
    chosen = cases[-2][1]
    report = run_redrive(settings, RedriveOptions(selection=chosen))
    assert report.exit_code == 0 and report.produced == 3, report.summary()
    with ops(settings) as ctx:
        after = ctx.kafka.ends(tps)
        assert {tp: after[tp] - before[tp] for tp in tps if after[tp] != before[tp]} == {(a, 1): 3}
        records = [
            (redriven_origin(m.headers()), m.key(), m.value(), m.timestamp()[1])
            for m in ctx.kafka.read_range((a, 1), before[(a, 1)], after[(a, 1)] - 1)
        ]
    # (in the dead-letter topic's order within each of its partitions; these are spread
    # over its partitions by key)
    assert sorted(records, key=repr) == [
        ((a, 1, o), f"k{o}".encode(), b"\x00\x00\x00\x00\x09" + bytes([o]), base + 1000 * o + 1)
        for o in (2, 4, 6)
    ]


def test_a_dead_letter_sent_without_its_value_is_reported_never_produced_empty(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    a = settings.topics[0]
    # the dead-letter topic's limit as the writer sees it: the big value does not fit
    writer = DeadLetterWriter(settings.kafka_common(), settings.dead_letter_topic, 4000)
    for offset, size in ((0, 100), (1, 50_000), (2, 100)):
        writer.send(
            topic=a,
            partition=0,
            offset=offset,
            timestamp_ms=1_790_000_000_000 + offset,
            key=b"k",
            value=b"\x00\x00\x00\x00\x09" + b"v" * size,
            reason="unknown_schema_id",
            detail="test",
        )
    writer.flush(30)
    writer.close()
    # a dead letter holding the original's own headers before its dlq.* ones, as the
    # dead-letter writer sends them: they go with the re-driven record, the dlq.* do not
    writer = DeadLetterWriter(settings.kafka_common(), settings.dead_letter_topic, 4000)
    writer.send(
        topic=a,
        partition=0,
        offset=3,
        timestamp_ms=1_790_000_000_003,
        key=b"k",
        value=b"\x00\x00\x00\x00\x09" + b"v" * 100,
        reason="unknown_schema_id",
        detail="test",
        headers=[("trace", b"abc"), ("empty", None)],
    )
    writer.flush(30)
    writer.close()
    with ops(settings) as ctx:
        before = ctx.kafka.ends([(a, 0)])[(a, 0)]
    out = tmp_path / "report.json"
    run = cli(settings, "redrive", "--reason", "unknown_schema_id", "-o", str(out))
    assert run.returncode == 1, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report["status"] == "incomplete"
    assert report["counts"]["produced"] == 3
    assert report["counts"]["value_dropped"] == 1
    [cannot] = report["cannot"]
    assert (cannot["topic"], cannot["partition"], cannot["offset"]) == (a, 0, 1)
    assert cannot["reason"] == "oversized"
    assert cannot["original_reason"] == "unknown_schema_id"
    assert "without its value" in cannot["cause"]
    assert f"cannot re-drive {a}/0 offset 1" in run.stdout
    with ops(settings) as ctx:
        end = ctx.kafka.ends([(a, 0)])[(a, 0)]
        got = {
            redriven_origin(m.headers()): (m.value(), m.timestamp()[1], m.headers())
            for m in ctx.kafka.read_range((a, 0), before, end - 1)
        }
    assert sorted(got, key=repr) == [(a, 0, 0), (a, 0, 2), (a, 0, 3)], "no empty record for 1"
    for origin, (value, timestamp, _headers) in got.items():
        assert value == b"\x00\x00\x00\x00\x09" + b"v" * 100
        assert origin is not None and timestamp == 1_790_000_000_000 + origin[2]
    headers = got[(a, 0, 3)][2] or []
    assert [h for h in headers if not h[0].startswith("redrive.")] == [
        ("trace", b"abc"),
        ("empty", None),
    ]


def test_a_dead_letter_of_a_topic_not_replicated_is_passed_and_re_driven_by_name(
    stack: Any, settings_factory: Callable[..., Settings]
) -> None:
    """A dead letter whose origin topic is not replicated is reported (exit 1) and passed
    like the others: the report says so and how to re-drive it once the topic is back; the
    same filters then read nothing, filters naming it re-drive it."""
    settings = settings_factory()
    a, b = settings.topics
    writer = DeadLetterWriter(settings.kafka_common(), settings.dead_letter_topic, 4000)
    value = b"\x00\x00\x00\x00\x09" + b"v" * 10
    for topic in (a, b):
        writer.send(
            topic=topic,
            partition=0,
            offset=7,
            timestamp_ms=1_790_000_000_000,
            key=b"k",
            value=value,
            reason="unknown_schema_id",
            detail="test",
        )
    writer.flush(30)
    writer.close()
    narrow = settings.model_copy(update={"topics": [a]})
    run = cli(narrow, "redrive", "--reason", "unknown_schema_id")
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"cannot re-drive {b}/0 offset 7" in run.stdout
    assert "these are passed like the others: the same filters do not read them again" in (
        run.stdout
    )
    again = cli(settings, "redrive", "--reason", "unknown_schema_id", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["counts"]["read"] == 0
    named = [
        *("--reason", "unknown_schema_id", "--topic", b, "--partition", "0"),
        *("--from-offset", "7", "--to-offset", "7", "--json"),
    ]
    by_name = cli(settings, "redrive", *named)
    assert by_name.returncode == 0, by_name.stderr
    assert json.loads(by_name.stdout)["counts"]["produced"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-offset", "5", "--to-offset", "4"], "--to-offset is below --from-offset"),
        (["--since", "2026-01-02", "--until", "2026-01-01"], "--until must be after --since"),
        (["--since", "yesterday"], "is not an ISO 8601 time"),
        (["--topic", "no.such.topic"], "not replicated"),
        (["--output", "/nonexistent-folder/r.json"], "does not exist"),
    ],
)
def test_bad_usage_exits_2_with_one_line(
    stack: Any, settings_factory: Callable[..., Settings], args: list[str], message: str
) -> None:
    run = cli(settings_factory(), "redrive", *args)
    assert run.returncode == 2, run.stdout + run.stderr
    assert message in run.stderr


def test_no_kafka_exits_3(settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    settings = settings_factory(kafka_bootstrap="127.0.0.1:9")
    run = cli(settings, "redrive", "--json")
    assert run.returncode == 3, run.stdout + run.stderr
    assert json.loads(run.stdout)["status"] == "unavailable"
