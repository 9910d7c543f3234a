"""`replicator replay` against the real servers: after an incident a replay leaves the stores
aligned, over data already present it creates nothing (P2), time ranges resolve to the
right offsets, and it runs safely beside the running service."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from replicator.config import Settings
from replicator.keys import parse_key
from replicator.model import TP
from replicator.ops.verify import VerifyOptions, run_verify
from tests.support.ops import cli, keys, md5s, ops, replicate, report_json
from tests.support.produce import produce_records
from tests.support.service import Progress, Service, wait_committed

pytestmark = pytest.mark.integration


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def written(report: dict[str, Any], store: str) -> set[str]:
    return {k for p in report["partitions"] for k in p["written"].get(store, [])}


def test_replay_after_an_incident_leaves_the_stores_aligned(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(chunk_max_records=100)
    early = produce_records(settings, count=1200, bad_share=0.01, seed=61)
    time.sleep(1.0)
    mark_ms = int(time.time() * 1000)
    time.sleep(1.0)
    produced = early.merge(produce_records(settings, count=600, bad_share=0.01, seed=62))
    replicate(settings, produced.ends)
    a, b = settings.topics
    out = tmp_path / "replay.json"

    with ops(settings) as ctx:
        before = {s: md5s(ctx, s) for s in ctx.stores}
        assert before["s3"] == before["azure"]
        # The incident: s3 loses every object of a/1 and every other object of a/0.
        lost = set(keys(ctx, "s3", (a, 1))) | set(keys(ctx, "s3", (a, 0))[::2])
        for key in lost:
            ctx.stores["s3"].delete(key)
        assert run_verify(ctx, VerifyOptions(topics=[a])).status == "diverged"

    # A dry run says what it would write and writes nothing.
    result = cli(
        settings, "replay", "--store", "s3", "--topic", a, "--dry-run", "--json-report", str(out)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert written(report_json(out), "s3") == lost
    assert "would write" in result.stdout
    with ops(settings) as ctx:
        assert not lost & set(md5s(ctx, "s3"))

    # The replay puts back exactly what was lost, byte for byte.
    result = cli(settings, "replay", "--store", "s3", "--topic", a, "--json-report", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_json(out)
    assert written(report, "s3") == lost
    assert report["totals"]["s3"]["skipped"] == sum(
        len(v) for k, v in _per_partition(before["s3"]).items() if k[0] == a
    ) - len(lost)
    with ops(settings) as ctx:
        assert md5s(ctx, "s3") == before["s3"]
        assert run_verify(ctx, VerifyOptions()).status == "aligned"

    # Replaying everything into both stores creates nothing (P2).
    result = cli(settings, "replay", "--json-report", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_json(out)
    assert report["totals"] == {
        "s3": {"written": 0, "skipped": len(before["s3"])},
        "azure": {"written": 0, "skipped": len(before["azure"])},
    }

    # A time range: from the first record produced after the mark.
    tp = (b, 0)
    boundary = early.ends[tp]
    with ops(settings) as ctx:
        late = [k for k in keys(ctx, "azure", tp) if _first(k) >= boundary]
        assert late
        for key in late:
            ctx.stores["azure"].delete(key)
    result = cli(
        settings,
        "replay",
        "--store",
        "azure",
        "--topic",
        b,
        "--partition",
        "0",
        "--from-time",
        iso(mark_ms),
        "--json-report",
        str(out),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (part,) = report_json(out)["partitions"]
    assert part["requested"] == [boundary, None]  # the first offset at or after the time
    assert part["start"] <= boundary
    assert written(report_json(out), "azure") == set(late)
    # ... and up to the last record before a time.
    result = cli(
        settings,
        "replay",
        "--dry-run",
        "--topic",
        b,
        "--partition",
        "0",
        "--to-time",
        iso(mark_ms),
        "--json-report",
        str(out),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (part,) = report_json(out)["partitions"]
    assert part["requested"] == [None, boundary - 1]
    with ops(settings) as ctx:
        assert md5s(ctx, "azure") == before["azure"]
        assert run_verify(ctx, VerifyOptions()).status == "aligned"
    result = cli(settings, "replay", "--from-offset", "5", "--from-time", iso(mark_ms))
    assert result.returncode == 2


def _first(key: str) -> int:
    parsed = parse_key(key)
    assert parsed is not None
    return parsed.first


def _per_partition(objects: dict[str, str | None]) -> dict[TP, list[str]]:
    out: dict[TP, list[str]] = {}
    for key in objects:
        parsed = parse_key(key)
        if parsed is not None:
            out.setdefault((parsed.topic, parsed.partition), []).append(key)
    return out


def test_replay_beside_the_running_service_creates_nothing_twice(
    settings_factory: Callable[..., Settings], tmp_path: Path, admin: Any
) -> None:
    settings = settings_factory(chunk_max_records=150)
    groups = [settings.progress_group(s) for s in settings.stores]
    service = Service(settings, tmp_path).start()
    try:
        produced = produce_records(settings, count=1200, bad_share=0.01, seed=71)
        wait_committed(settings.kafka_bootstrap, groups, produced.ends, 120, [service])
        # Records keep coming while an operator replays everything into both stores.
        more: list[Any] = []
        producer = threading.Thread(
            target=lambda: more.append(produce_records(settings, 600, 0.01, seed=72))
        )
        producer.start()
        result = cli(settings, "replay")
        producer.join()
        assert result.returncode == 0, result.stdout + result.stderr
        produced = produced.merge(more[0])
        wait_committed(settings.kafka_bootstrap, groups, produced.ends, 120, [service])
    finally:
        assert service.stop() == 0
    assert '"conflict"' not in service.log_text()
    with ops(settings) as ctx:
        assert run_verify(ctx, VerifyOptions()).status == "aligned"
        s3_before = md5s(ctx, "s3")

    # An operator resets azure's group for one partition, then replays with --advance-groups:
    # nothing is created, and the group moves back to where the data ends.
    a = settings.topics[0]
    azure_group = settings.progress_group("azure")
    for future in admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(azure_group, [TopicPartition(a, 0, 10)])]
    ).values():
        future.result(timeout=10)
    result = cli(
        settings, "replay", "--store", "azure", "--topic", a, "--partition", "0", "--advance-groups"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"azure: committed offset moved to {produced.ends[(a, 0)]}" in result.stdout
    progress = Progress(settings.kafka_bootstrap, azure_group)
    try:
        assert progress.committed([(a, 0)])[(a, 0)] == produced.ends[(a, 0)]
    finally:
        progress.close()
    with ops(settings) as ctx:
        assert md5s(ctx, "s3") == s3_before == md5s(ctx, "azure")
