"""`replicator audit` against the real servers: a clean run with bad records accounts for
every offset (exit 0, a manifest in both stores, byte-identical); then objects rewritten
identically in both stores (so `verify` sees two aligned stores) with a record dropped, a
value changed, a record copied into a second object, a dead-lettered record stored, and
the audit names each finding with its offsets. Transaction markers are `no_record`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from replicator.config import Settings
from replicator.container import encode_container, read_container, stored_records
from replicator.keys import object_key, parse_key
from replicator.model import TP, RawRecord
from replicator.ops import audit as audit_module
from replicator.ops.audit import AUDIT_PREFIX, AuditOptions, run_audit
from replicator.ops.context import OpsContext
from tests.support.ops import cli, ops, ranges, replace, replicate
from tests.support.produce import produce_records

pytestmark = pytest.mark.integration

# Step 3 of "The auditor's check" (docs/runbook.md): the `avro` package, no code of ours.
AVRO_CHECK = """import sys
from avro.datafile import DataFileReader
from avro.io import DatumReader
rs = list(DataFileReader(open(sys.argv[1], "rb"), DatumReader()))
print(len(rs), "records, offsets", rs[0]["offset"] if rs else "-", "to", rs[-1]["offset"] if rs else "-")
"""


def transactions(settings: Settings, tp: TP, values: list[tuple[bytes | None, bytes]]) -> None:
    """Two committed transactions of the given records (each leaves a commit marker at the
    offset after its last record), then one record without a transaction."""
    producer = Producer(
        {**settings.kafka_common(), "transactional.id": f"{settings.group_id}.tx", "linger.ms": 0}
    )
    producer.init_transactions(10)
    half = len(values) // 2
    for part in (values[:half], values[half:-1]):
        producer.begin_transaction()
        for key, value in part:
            producer.produce(tp[0], value=value, key=key, partition=tp[1])
        producer.commit_transaction(10)
    plain = Producer({**settings.kafka_common(), "linger.ms": 0})
    key, value = values[-1]
    plain.produce(tp[0], value=value, key=key, partition=tp[1])
    plain.flush(10)


def object_records(ctx: OpsContext, store: str, key: str) -> tuple[list[RawRecord], list[int]]:
    """The records of a stored object as the service encoded them (raw bodies)."""
    stored = stored_records(read_container(ctx.read(store, key)))
    return (
        [RawRecord(r.offset, r.timestamp_ms, r.key, r.body) for r in stored],
        [r.schema_id for r in stored],
    )


def put_both(
    ctx: OpsContext, tp: TP, first: int, last: int, records: list[RawRecord], sids: list[int]
) -> str:
    """An object built with the project's own encoder, put (over anything there) in both
    stores: identical bytes, so the stores agree with each other."""
    key = object_key(tp[0], tp[1], first, last)
    schemas = {sid: ctx.registry.get(sid).schema_json for sid in set(sids)}
    meta = {
        "topic": tp[0],
        "partition": str(tp[1]),
        "first_offset": str(first),
        "last_offset": str(last),
        "records": str(len(records)),
        "skipped": str(last - first + 1 - len(records)),
    }
    data = encode_container(key, schemas, records, sids, meta)
    for store in ("s3", "azure"):
        replace(ctx, store, key, data)
    return key


def findings(report: Any) -> set[tuple[str, str, int, str, int, int]]:
    return {
        (f.kind.value, p.topic, p.partition, f.where, f.first, f.last)
        for p in report.partitions
        for f in p.findings
    }


def test_audit_accounts_for_every_offset_and_names_each_finding(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(chunk_max_records=100)
    produced = produce_records(settings, count=1500, bad_share=0.02, seed=141)
    a, b = settings.topics
    tx_tp = (b, 1)
    with ops(settings) as ctx:
        copies = [
            (m.key(), m.value() or b"")
            for m in ctx.kafka.read_range(tx_tp, 0, 20)
            if (tx_tp, m.offset()) not in produced.bad
        ][:7]
        base = ctx.kafka.ends([tx_tp])[tx_tp]
        transactions(settings, tx_tp, copies)
        ends = ctx.kafka.ends(list(produced.ends))
    # 3 records, marker, 3 records, marker, 1 plain record
    assert ends[tx_tp] == base + 9
    replicate(settings, ends)
    total = sum(ends.values())
    bad = len(produced.bad)

    # -- a clean run, as an operator runs it
    manifest_file = tmp_path / "manifest.jsonl"
    result = cli(settings, "audit", "--json", "--manifest", str(manifest_file))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "clean"
    assert report["totals"] == {
        "behind_retention": 0,
        "dead_letter_resends": 0,
        "dead_lettered": bad,
        "findings": 0,
        "no_record": 2,
        "redriven": 0,
        "stored": total - bad - 2,
    }
    tx = next(p for p in report["partitions"] if (p["topic"], p["partition"]) == tx_tp)
    assert tx["classes"]["no_record"] == 2
    key = report["manifest"]["key"]
    data = manifest_file.read_bytes()
    assert key == f"{AUDIT_PREFIX}manifest-{hashlib.sha256(data).hexdigest()}.jsonl"
    assert report["manifest"]["written"] == {"s3": "created", "azure": "created"}
    with ops(settings) as ctx:
        assert ctx.read("s3", key) == ctx.read("azure", key) == data
        lines = [json.loads(line) for line in data.splitlines()]
        objects = [x for x in lines if x["type"] == "object"]
        assert {(o["store"], o["key"]) for o in objects} == {
            (s, o.key)
            for s in ("s3", "azure")
            for tp in ends
            for o in ctx.stores[s].list(f"{tp[0]}/{tp[1]:05d}/")
        }
        for o in objects[:5]:
            body = ctx.read(o["store"], o["key"])
            assert o["sha256"] == hashlib.sha256(body).hexdigest()
            assert o["md5"] == hashlib.md5(body).hexdigest()
            assert o["size"] == len(body)
        # the auditor's check of docs/runbook.md, with sha256sum and the avro package only
        sample = objects[len(objects) // 2]
        (tmp_path / "object.avro").write_bytes(ctx.read(sample["store"], sample["key"]))
        checked = subprocess.run(
            ["sha256sum", "-c", "-"],
            input=f"{sample['sha256']}  object.avro\n",
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0 and "object.avro: OK" in checked.stdout
        read_back = subprocess.run(
            [sys.executable, "-c", AVRO_CHECK, "object.avro"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert read_back.stdout.split() == [
            str(sample["records"]),
            "records,",
            "offsets",
            *read_back.stdout.split()[3:4],
            "to",
            *read_back.stdout.split()[5:6],
        ], read_back.stderr
        first_seen, last_seen = int(read_back.stdout.split()[3]), int(read_back.stdout.split()[5])
        assert sample["first_offset"] <= first_seen <= last_seen <= sample["last_offset"]
        # the same audit again: the same bytes, found already there
        again = run_audit(ctx, AuditOptions())
        assert again.manifest() == data
        assert again.manifest_written == {"s3": "already_present", "azure": "already_present"}
        # the manifest is no data: verify and the listings of partitions ignore it
        assert all(parse_key(k) is None for k in [key])

        # -- damage, identically in both stores
        cut = {tp: ranges(ctx, "s3", tp) for tp in ends}
        # 1. (a, 0): one record dropped
        first, last = cut[(a, 0)][2]
        recs, sids = object_records(ctx, "s3", object_key(a, 0, first, last))
        dropped = recs[10].offset
        put_both(ctx, (a, 0), first, last, recs[:10] + recs[11:], sids[:10] + sids[11:])
        # 2. (a, 1): one value changed (same schema, another event)
        first, last = cut[(a, 1)][1]
        recs, sids = object_records(ctx, "s3", object_key(a, 1, first, last))
        changed = recs[5].offset
        recs[5] = recs[5]._replace(body=recs[6].body)
        put_both(ctx, (a, 1), first, last, recs, sids)
        # 3. (a, 2): one record copied into a second object
        first, last = cut[(a, 2)][1]
        recs, sids = object_records(ctx, "s3", object_key(a, 2, first, last))
        copied = recs[0].offset
        put_both(ctx, (a, 2), copied, copied, recs[:1], sids[:1])
        # 4. a dead-lettered record also stored, with its own bytes (a record that breaks
        #    a rule: it decodes, so it can be put in a container)
        dead_tp, dead = min(
            (tp, o)
            for (tp, o), kind in produced.bad_kinds.items()
            if kind in ("invalid_value", "direct_identifier")
        )
        msg = ctx.kafka.read_one(dead_tp, dead)
        assert msg is not None and msg.offset() == dead
        value = msg.value() or b""
        ts = msg.timestamp()[1]
        own = RawRecord(dead, ts, msg.key(), value[5:])
        put_both(ctx, dead_tp, dead, dead, [own], [int.from_bytes(value[1:5], "big")])

        damaged = run_audit(ctx, AuditOptions(write_manifest=False))
    assert damaged.exit_code == 1
    assert findings(damaged) == {
        ("missing", a, 0, "s3", dropped, dropped),
        ("missing", a, 0, "azure", dropped, dropped),
        ("altered", a, 1, "s3", changed, changed),
        ("altered", a, 1, "azure", changed, changed),
        ("doubled", a, 2, "s3", copied, copied),
        ("doubled", a, 2, "azure", copied, copied),
        ("doubled", *dead_tp, "s3", dead, dead),
        ("doubled", *dead_tp, "azure", dead, dead),
    }
    details = {(f.kind.value, f.detail) for p in damaged.partitions for f in p.findings}
    assert ("doubled", "stored and dead-lettered") in details
    assert damaged.totals()["dead_lettered"] == bad - 1

    # verify, store against store, sees nothing wrong with the rewritten objects (the gap
    # this audit closes), while the CLI's audit exits 1
    result = cli(settings, "audit", "--no-manifest", "--topic", a)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"missing: offsets {dropped} in s3" in result.stdout


def test_verify_records_runs_the_audit_after_the_store_check(
    stack: Any, settings_factory: Callable[..., Settings]
) -> None:
    """`replicator verify --records` as an operator runs it: on a clean run (bad records
    dead-lettered) both checks pass, exit 0; then an object rewritten identically in both
    stores with one record dropped and one value changed: the stores still agree with each
    other (ALIGNED), and the record-level audit names both findings with their offsets in
    each store, exit 1."""
    settings = settings_factory(chunk_max_records=100)
    produced = produce_records(settings, count=1200, bad_share=0.02, seed=1414)
    ends = produced.ends
    replicate(settings, ends)
    total = sum(ends.values())
    bad = len(produced.bad)
    assert bad > 0

    clean = cli(settings, "verify", "--records")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    lines = clean.stdout.splitlines()
    assert any(line.startswith("result: ALIGNED") for line in lines), clean.stdout
    assert (
        f"  stored {total - bad:,}, dead_lettered {bad:,}, no_record 0, behind_retention 0; "
        "dead-letter resends 0"
    ) in lines, clean.stdout
    assert lines[-1] == "result: CLEAN: every offset accounted for (exit 0)", clean.stdout

    a = settings.topics[0]
    tp = (a, 1)
    with ops(settings) as ctx:
        first, last = max(ranges(ctx, "s3", tp), key=lambda r: r[1] - r[0])
        recs, sids = object_records(ctx, "s3", object_key(a, 1, first, last))
        assert len(recs) > 12
        # another event of the same schema: the object still decodes, one value differs
        i = next(
            i
            for i in range(5, len(recs) - 1)
            if sids[i] == sids[i + 1] and recs[i].body != recs[i + 1].body
        )
        dropped, changed = recs[3].offset, recs[i].offset
        altered = [*recs[:i], recs[i]._replace(body=recs[i + 1].body), *recs[i + 1 :]]
        put_both(ctx, tp, first, last, altered[:3] + altered[4:], sids[:3] + sids[4:])

    damaged = cli(settings, "verify", "--records")
    assert damaged.returncode == 1, damaged.stdout + damaged.stderr
    lines = damaged.stdout.splitlines()
    assert any(line.startswith("result: ALIGNED") for line in lines), damaged.stdout
    found = sorted(line for line in lines if line.startswith(f"  {a}/"))
    assert found == sorted(
        [
            f"  {a}/1 missing: offsets {dropped} in s3 (in no object, not dead-lettered)",
            f"  {a}/1 missing: offsets {dropped} in azure (in no object, not dead-lettered)",
            f"  {a}/1 altered: offsets {changed} in s3 (other bytes than the source)",
            f"  {a}/1 altered: offsets {changed} in azure (other bytes than the source)",
        ]
    ), damaged.stdout
    assert lines[-1] == "result: FINDINGS: 4 range(s) not accounted for (exit 1)", damaged.stdout


def test_a_slow_store_does_not_end_the_source_read_early(
    stack: Any, settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source read ends after a silence of the broker (offsets without a record at the
    end); time spent reading objects between two batches is no such silence: with store
    reads slower than that silence, every offset is still accounted for."""
    settings = settings_factory(chunk_max_records=40)
    produced = produce_records(settings, count=400, bad_share=0.02, seed=1415)
    replicate(settings, produced.ends)
    monkeypatch.setattr(audit_module, "_IDLE_S", 0.2)
    monkeypatch.setattr(audit_module, "_BATCH", 7)  # many batches, a read between them
    with ops(settings) as ctx:
        fast_read = ctx.read

        def slow_read(store: str, key: str) -> bytes:
            time.sleep(0.3)  # longer than the silence that ends a partition
            return fast_read(store, key)

        monkeypatch.setattr(ctx, "read", slow_read)
        report = run_audit(ctx, AuditOptions(write_manifest=False, concurrency=4))
    assert report.status == "clean", report.summary()
    bad = len(produced.bad)
    assert report.totals() == {
        "behind_retention": 0,
        "dead_letter_resends": 0,
        "dead_lettered": bad,
        "findings": 0,
        "no_record": 0,
        "redriven": 0,
        "stored": sum(produced.ends.values()) - bad,
    }


def test_an_offset_range_past_the_end_counts_no_offset_past_it(
    stack: Any, settings_factory: Callable[..., Settings]
) -> None:
    """An offset range given past a partition's end is cut at the end: the offsets the
    partition has not reached (and no store holds) are in no class, not `no_record` (a
    later audit would find records there). Every range of the table, starting before, at
    or after the end, counts exactly the offsets from its start to min(its end, the end)."""
    settings = settings_factory(chunk_max_records=50)
    produced = produce_records(settings, count=240, bad_share=0.0, seed=1416)
    replicate(settings, produced.ends)
    tp = min(produced.ends)
    end = produced.ends[tp]
    cases = [
        (None, end + 50),
        (0, end - 1),
        (end - 5, end + 1000),
        (end - 1, end),
        (end, end + 10),
        (end + 3, end + 10),
    ]
    with ops(settings) as ctx:
        for first, last in cases:
            report = run_audit(
                ctx,
                AuditOptions(
                    topics=[tp[0]],
                    partitions=[tp[1]],
                    from_offset=first,
                    to_offset=last,
                    write_manifest=False,
                ),
            )
            counted = max(0, min(last + 1, end) - (first or 0))
            assert report.status == "clean", report.summary()
            assert (report.totals()["stored"], report.totals()["no_record"]) == (counted, 0), (
                first,
                last,
                end,
            )
            (part,) = report.partitions
            assert part.hi - part.lo == counted
