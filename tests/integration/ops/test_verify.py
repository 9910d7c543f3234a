"""`replicator verify` against the real servers: divergence injected in one store (an object
deleted, truncated, altered; a gap; an overlap) is found, named precisely, and repaired."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicator.config import Settings
from replicator.keys import object_key
from replicator.model import TP
from replicator.ops.verify import VerifyOptions, run_verify
from tests.support.checker import (
    azure_objects,
    compare,
    decode_objects,
    read_topic,
    s3_objects,
)
from tests.support.checker import md5s as checker_md5s
from tests.support.ops import cli, ops, ranges, rebuild, replace, replicate, report_json
from tests.support.produce import Produced, produce_records

pytestmark = pytest.mark.integration


def covering(ranges: list[tuple[int, int]], offset: int) -> tuple[int, int]:
    return next(r for r in ranges if r[0] <= offset <= r[1])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def findings_of(report: dict[str, Any]) -> set[tuple[str, str, int, str, int, int]]:
    return {
        (f["kind"], f["topic"], f["partition"], f["store"], f["first"], f["last"])
        for p in report["partitions"]
        for f in p["findings"]
    }


def assert_independently_aligned(
    settings: Settings, env: dict[str, str], produced: Produced
) -> None:
    assert settings.s3_bucket is not None and settings.azure_container is not None
    s3 = s3_objects(env, settings.s3_bucket)
    az = azure_objects(env, settings.azure_container)
    assert checker_md5s(s3) == checker_md5s(az)
    kafka: dict[TP, Any] = {}
    for topic in settings.topics:
        kafka.update(read_topic(settings.kafka_bootstrap, topic, 3, idle_s=1.0))
    verdict = compare(kafka, decode_objects(s3), produced.bad)
    assert (verdict.lost, verdict.doubled, verdict.altered, verdict.unexpected) == ([], [], [], [])


def test_divergence_is_found_named_precisely_and_repaired(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(chunk_max_records=100)
    early = produce_records(settings, count=1800, bad_share=0.01, seed=51)
    time.sleep(1.0)
    boundary = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time()))
    time.sleep(1.2)
    produced = early.merge(produce_records(settings, count=300, bad_share=0.0, seed=52))
    replicate(settings, produced.ends)
    a, b = settings.topics
    report_path = tmp_path / "report.json"

    result = cli(settings, "verify", "--json-report", str(report_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALIGNED" in result.stdout
    assert report_json(report_path)["status"] == "aligned"

    with ops(settings) as ctx:
        cut = {tp: ranges(ctx, "s3", tp) for tp in produced.ends}
        # 1. an object deleted from azure
        deleted = covering(cut[(a, 0)], 110)
        ctx.stores["azure"].delete(object_key(a, 0, *deleted))
        # 2. an object truncated in s3
        truncated = covering(cut[(a, 1)], 110)
        key_t = object_key(a, 1, *truncated)
        data = ctx.read("s3", key_t)
        replace(ctx, "s3", key_t, data[: len(data) // 2])
        # 3. one record altered in azure (a valid object, another timestamp at one offset)
        altered = covering(cut[(a, 2)], 110)
        good = sorted(ctx.kafka_prints((a, 2), *altered))
        victim = good[len(good) // 2]
        key_a, data_a = rebuild(ctx, (a, 2), *altered, alter=victim)
        replace(ctx, "azure", key_a, data_a)
        # 4. a gap: the same object gone from both stores
        gap = covering(cut[(b, 0)], 110)
        for store in ("s3", "azure"):
            ctx.stores[store].delete(object_key(b, 0, *gap))
        # 5. an overlap: an extra object in s3 across two objects' boundary
        left = covering(cut[(b, 1)], 10)
        right = covering(cut[(b, 1)], left[1] + 1)
        intruder = (left[0] + 1, right[0])
        key_i, data_i = rebuild(ctx, (b, 1), *intruder)
        replace(ctx, "s3", key_i, data_i)

    result = cli(settings, "verify", "--json-report", str(report_path))
    assert result.returncode == 1, result.stdout + result.stderr
    report = report_json(report_path)
    assert report["status"] == "diverged"
    assert findings_of(report) == {
        ("gap", a, 0, "azure", *deleted),
        ("missing", a, 0, "azure", *deleted),
        ("differs", a, 1, "azure,s3", *truncated),
        ("differs", a, 2, "azure,s3", *altered),
        ("gap", b, 0, "azure", *gap),
        ("gap", b, 0, "s3", *gap),
        ("overlap", b, 1, "s3", intruder[0], left[1]),
        ("overlap", b, 1, "s3", right[0], right[0]),
    }
    by_kind = {
        (f["kind"], f["partition"], f["topic"]): f
        for p in report["partitions"]
        for f in p["findings"]
    }
    # Record level: the truncated copy lacks records, the altered one holds one other record;
    # in both cases the other store matches Kafka.
    diffs_t = {d["store"]: d for d in by_kind[("differs", 1, a)]["records"]}
    assert diffs_t["azure"]["verdict"] == "matches_kafka"
    assert diffs_t["s3"]["verdict"] == "undecodable" and diffs_t["s3"]["missing"]
    diffs_a = {d["store"]: d for d in by_kind[("differs", 2, a)]["records"]}
    assert diffs_a["s3"]["verdict"] == "matches_kafka"
    assert diffs_a["azure"]["verdict"] == "differs_from_kafka"
    assert diffs_a["azure"]["altered"] == [[victim, victim]]
    assert diffs_a["azure"]["missing"] == [] and diffs_a["azure"]["unexpected"] == []
    assert by_kind[("overlap", 1, b)]["suspect"] == key_i
    # The human summary names the objects and offsets.
    assert object_key(a, 0, *deleted) in result.stdout
    assert f"holds other content at offsets {victim}" in result.stdout
    assert "DIVERGED: 8 finding(s)" in result.stdout

    # Filters: an untouched partition, and time ranges.
    result = cli(settings, "verify", "--topic", b, "--partition", "2")
    assert result.returncode == 0, result.stdout
    assert "1 partition(s)" in result.stdout
    result = cli(settings, "verify", "--since", boundary)
    assert result.returncode == 0, result.stdout  # every damage lies before the boundary
    with ops(settings) as ctx:
        until = run_verify(ctx, VerifyOptions(topics=[a], until_ms=int(time.time() * 1000)))
        assert until.status == "diverged"
        assert {p.partition for p in until.partitions if p.findings} == {0, 1, 2}
    result = cli(settings, "verify", "--topic", "no-such-topic")
    assert result.returncode == 2 and "not replicated" in result.stderr

    # A store that cannot be reached: could not check.
    unreachable = settings.model_copy(
        update={"s3_endpoint": f"http://127.0.0.1:{closed_port()}", "store_timeout_s": 1.0}
    )
    result = cli(unreachable, "verify")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "could not check" in result.stdout.lower()

    # Repair without --force-overwrite: what is missing comes back, nothing is overwritten.
    result = cli(settings, "verify", "--repair", "--json-report", str(report_path))
    assert result.returncode == 1, result.stdout + result.stderr
    after = findings_of(report_json(report_path))
    assert after == {
        ("differs", a, 1, "azure,s3", *truncated),
        ("differs", a, 2, "azure,s3", *altered),
        ("overlap", b, 1, "s3", intruder[0], left[1]),
        ("overlap", b, 1, "s3", right[0], right[0]),
    }
    assert "needs --force-overwrite" in result.stdout
    with ops(settings) as ctx:
        assert ctx.read("azure", object_key(a, 0, *deleted)) == ctx.read(
            "s3", object_key(a, 0, *deleted)
        )
        assert ctx.read("s3", key_t) != ctx.read("azure", key_t)  # not overwritten

    # With --force-overwrite: replaced from the right store, the intruder removed.
    result = cli(
        settings, "verify", "--repair", "--force-overwrite", "--json-report", str(report_path)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert report_json(report_path)["status"] == "aligned"
    assert "ALIGNED" in result.stdout
    assert_independently_aligned(settings, stack.env(), produced)
