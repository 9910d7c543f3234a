"""Throughput benchmark: the replicator against the raw consume rate, measured in one run.

    .venv/bin/python benchmarks/throughput.py [--records 300000] [--partitions 6]

Starts a private local stack (free ports, temporary folder), produces a fixed, seeded
workload over both topics with the project's own schemas, then measures:

- raw consume: a bare confluent-kafka consumer reading every record (the ceiling);
- end to end: `replicator run` (a real process) from start until both stores' groups have
  committed everything, with its peak RSS;
- catch-up: the same, with one store stopped during the first half and restarted; the time
  the stopped store then needs to hold everything, and its rate;
- replay: one store's group reset to the beginning; the time until it has driven the whole
  workload again (nothing new is created), and its rate.

Every rate is printed as a ratio of the raw consume rate of the same run, because these
machines are noisy: the ratio holds where the absolute figure does not.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replicator.config import Settings
from replicator.produce import produce
from replicator.schemas import SchemaRegistry
from replicator.stack import DEMO_TOPICS, LocalStack, StackPorts
from tests.support.service import Progress, Service

TP = tuple[str, int]


@dataclass
class Row:
    name: str
    seconds: float
    records: int
    megabytes: float
    peak_rss_mib: float | None = None
    note: str = ""


def raw_consume(settings: Settings, ends: dict[TP, int]) -> float:
    """Seconds for a bare consumer to read every record of the workload."""
    consumer = Consumer(
        {
            **settings.kafka_common(),
            "group.id": "bench-raw",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52428800,
        }
    )
    consumer.assign([TopicPartition(t, p, 0) for t, p in ends])
    remaining = dict(ends)
    started = time.perf_counter()
    while remaining:
        for msg in consumer.consume(10000, timeout=1.0):
            if msg.error() is not None:
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            assert topic is not None and partition is not None and offset is not None
            if offset + 1 >= remaining.get((topic, partition), 1 << 62):
                remaining.pop((topic, partition), None)
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def wait_groups(
    settings: Settings, groups: list[str], ends: dict[TP, int], service: Service, rss: list[float]
) -> float:
    readers = [Progress(settings.kafka_bootstrap, g) for g in groups]
    started = time.perf_counter()
    assert service.proc is not None
    proc = psutil.Process(service.proc.pid)
    try:
        while True:
            with contextlib.suppress(psutil.Error):
                # the service and its decode worker processes together
                family = [proc, *proc.children(recursive=True)]
                rss.append(sum(p.memory_info().rss for p in family) / 2**20)
            done = all(
                all(r.committed(list(ends)).get(tp, -1) >= end for tp, end in ends.items())
                for r in readers
            )
            if done:
                return time.perf_counter() - started
            if not service.alive():
                raise SystemExit(f"service exited:\n{service.log_text()[-3000:]}")
            time.sleep(0.2)
    finally:
        for r in readers:
            r.close()


def reset_group(stack: LocalStack, group: str, ends: dict[TP, int]) -> None:
    tps = [TopicPartition(t, p, 0) for t, p in ends]
    for fut in stack.admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, tps)]
    ).values():
        fut.result(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--skip", nargs="*", default=[], choices=["catchup", "replay"])
    parser.add_argument(
        "--replicas", type=int, default=1, help="replicas sharing the end-to-end run"
    )
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=2.0,
        help="REPLICATOR_FLUSH_INTERVAL_S for the runs: the wall-clock cut of the last, partial "
        "chunks of each partition, which the end-to-end time includes",
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="replicator-bench-"))
    stack = LocalStack(
        root=root,
        ports=StackPorts.free(),
        topics=list(DEMO_TOPICS),
        dead_letter_topic="snds.dead-letter",
        bucket="bench-s3",
        container="bench-azure",
        partitions=args.partitions,
    )
    print(f"starting a private stack in {root}", flush=True)
    stack.up()
    rows: list[Row] = []
    try:
        env = stack.env()
        base = Settings(
            kafka_bootstrap=env["kafka_bootstrap"],
            topics=list(DEMO_TOPICS),
            dead_letter_topic="snds.dead-letter",
            s3_endpoint=env["s3_endpoint"],
            s3_bucket="bench-s3",
            s3_access_key=SecretStr(env["s3_access_key"]),
            s3_secret_key=SecretStr(env["s3_secret_key"]),
            azure_connection_string=SecretStr(env["azure_connection_string"]),
            azure_container="bench-azure",
            session_timeout_ms=6000,
            metrics_port=0,
            log_level="WARNING",
            flush_interval_s=args.flush_interval,
        )
        print(
            f"producing {args.records:,} records over {len(DEMO_TOPICS)} topics x {args.partitions} partitions",
            flush=True,
        )
        report = produce(
            base.kafka_common(),
            list(DEMO_TOPICS),
            args.records,
            None,
            42,
            0.001,
            None,
            SchemaRegistry.load(base.schemas_dir),
        )
        ends = report.end_offsets
        total = report.delivered
        value_mb = total * 330 / 1e6  # refined below from the stores' sizes

        raw_s = raw_consume(base, ends)
        rows.append(Row("raw consume (ceiling)", raw_s, total, value_mb))
        raw_rate = total / raw_s
        print(f"raw consume: {raw_rate:,.0f} records/s", flush=True)

        log_dir = root / "logs"
        log_dir.mkdir()

        # End to end into both stores.
        settings = base.model_copy(
            update={"group_id": "bench-e2e", "s3_prefix": "e2e", "azure_prefix": "e2e"}
        )
        rss: list[float] = []
        # Extra replicas share the group: they split the partitions (the first one is watched
        # for RSS; the time is until both stores' groups hold everything).
        extra = [
            Service(settings, log_dir, name=f"e2e-{i}").start() for i in range(1, args.replicas)
        ]
        service = Service(settings, log_dir, name="e2e").start()
        e2e_s = wait_groups(
            settings, [settings.progress_group(s) for s in settings.stores], ends, service, rss
        )
        for replica in [service, *extra]:
            replica.stop()
        stored = sum(
            o["Size"]
            for page in stack.s3.get_paginator("list_objects_v2").paginate(
                Bucket="bench-s3", Prefix="e2e/"
            )
            for o in page.get("Contents", [])
        )
        rows.append(
            Row(
                f"end to end, both stores, {args.replicas} replica(s)",
                e2e_s,
                total,
                value_mb,
                max(rss),
            )
        )
        print(
            f"end to end: {total / e2e_s:,.0f} records/s, peak RSS {max(rss):.0f} MiB", flush=True
        )

        if "replay" not in args.skip:
            # Replay: reset the S3 group and drive everything again into S3 only.
            reset_group(stack, settings.progress_group("s3"), ends)
            replay = base.model_copy(
                update={
                    "group_id": "bench-e2e",
                    "s3_prefix": "e2e",
                    "azure_prefix": "e2e",
                    "stores": ["s3"],
                }
            )
            rss = []
            service = Service(replay, log_dir, name="replay").start()
            replay_s = wait_groups(replay, [replay.progress_group("s3")], ends, service, rss)
            service.stop()
            rows.append(Row("replay into s3 (all present)", replay_s, total, value_mb, max(rss)))

        if "catchup" not in args.skip:
            settings = base.model_copy(
                update={
                    "group_id": "bench-cu",
                    "s3_prefix": "cu",
                    "azure_prefix": "cu",
                    "health_interval_s": 1.0,
                    "write_retry_s": 1.0,
                }
            )
            rss = []
            stack.stop_service("azure")
            service = Service(settings, log_dir, name="catchup").start()
            half = {tp: end // 2 for tp, end in ends.items()}
            wait_groups(settings, [settings.progress_group("s3")], half, service, rss)
            stack.start_service("azure")
            restarted = time.perf_counter()
            reader = Progress(settings.kafka_bootstrap, settings.progress_group("azure"))
            behind = sum(
                end - max(reader.committed(list(ends)).get(tp, 0), 0) for tp, end in ends.items()
            )
            reader.close()
            cu_s = wait_groups(settings, [settings.progress_group("azure")], ends, service, rss)
            cu_s = time.perf_counter() - restarted
            service.stop()
            rows.append(
                Row(
                    "catch-up of the stopped store",
                    cu_s,
                    behind,
                    value_mb * behind / total,
                    max(rss),
                    note=f"{behind:,} records behind at restart",
                )
            )
    finally:
        stack.down()

    print()
    print(
        f"flush interval {args.flush_interval:g} s (the wall-clock cut of each partition's last chunk)"
    )
    print(
        f"workload: {total:,} records ({args.partitions} partitions x {len(DEMO_TOPICS)} topics), "
        f"{stored / 1e6:.1f} MB stored per store; machine: {os.cpu_count()} cores"
    )
    print(f"{'measure':<42} {'seconds':>8} {'records/s':>11} {'x raw':>7} {'peak RSS':>9}")
    for row in rows:
        rate = row.records / row.seconds
        rss_text = f"{row.peak_rss_mib:.0f} MiB" if row.peak_rss_mib else ""
        print(
            f"{row.name:<42} {row.seconds:8.2f} {rate:11,.0f} {rate / raw_rate:7.3f} {rss_text:>9}  {row.note}"
        )


if __name__ == "__main__":
    main()
