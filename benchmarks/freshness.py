"""Freshness benchmark: how long a record takes to be in both stores, at a fixed rate.

    .venv/bin/python benchmarks/freshness.py [--rates 50 2000] [--seconds 60]

Starts a private local stack, runs `replicator run` with the service's defaults (only the
metrics port and the log level change: a free port, and the log that tells when the
partitions were assigned), and for each rate produces records at that pace for `--seconds`.
Both stores are listed every 0.2 s; a record is in both stores from the first listing that
shows its object in each. Printed per rate: the time from each record's Kafka timestamp
(CreateTime, set by the producer) to that moment, p50/p95/p99/max, and the objects written
per minute per store (with the objects a day per store at that pace).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

from azure.storage.blob import ContainerClient
from confluent_kafka import Consumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchstack import bench_stack, print_changed_settings

from replicator.config import Settings
from replicator.devtools.produce import ProduceReport, produce
from replicator.devtools.stack import DEMO_TOPICS, LocalStack
from replicator.keys import parse_key
from replicator.model import TP
from replicator.schemas import SchemaRegistry
from tests.support.service import Service, wait_committed

POLL_S = 0.2


def list_keys(stack: LocalStack, azure: ContainerClient, prefix: str) -> tuple[set[str], set[str]]:
    s3 = {
        o["Key"]
        for page in stack.s3.get_paginator("list_objects_v2").paginate(
            Bucket=stack.bucket, Prefix=prefix
        )
        for o in page.get("Contents", [])
    }
    az = {b.name for b in azure.list_blobs(name_starts_with=prefix)}
    return s3, az


def timestamps(
    settings: Settings, starts: dict[TP, int], ends: dict[TP, int]
) -> dict[TP, dict[int, float]]:
    """Kafka timestamp (seconds) of every record in [starts, ends) per partition."""
    consumer = Consumer(
        {**settings.kafka_common(), "group.id": "fresh-reader", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(t, p, starts.get((t, p), 0)) for t, p in ends])
    out: dict[TP, dict[int, float]] = {tp: {} for tp in ends}
    remaining = {tp for tp, end in ends.items() if end > starts.get(tp, 0)}
    while remaining:
        for msg in consumer.consume(1000, timeout=1.0):
            if msg.error() is not None:
                continue
            tp = (msg.topic() or "", msg.partition() or 0)
            offset = msg.offset() or 0
            out[tp][offset] = msg.timestamp()[1] / 1000
            if offset + 1 >= ends[tp]:
                remaining.discard(tp)
    consumer.close()
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 2000.0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()

    results: list[str] = []
    with bench_stack("fresh", args.partitions) as bench:
        stack = bench.stack
        settings = bench.settings.model_copy(update={"group_id": "fresh"})
        azure = ContainerClient.from_connection_string(
            stack.env()["azure_connection_string"], bench.container
        )
        registry = SchemaRegistry.load(settings.schemas_dir)
        # one record so that the topics exist and the service's partitions are assigned
        first = produce(
            settings.kafka_common(), list(DEMO_TOPICS), 12, None, 1, 0.0, None, registry
        )
        service = Service(settings, bench.root, name="fresh").start()
        ends: dict[TP, int] = dict(first.end_offsets)
        wait_committed(
            settings.kafka_bootstrap,
            [settings.progress_group(s) for s in settings.stores],
            ends,
            120,
            [service],
        )
        seen: dict[str, float] = {}  # key -> time in both stores
        prefix = settings.s3_prefix + "/"  # the same for both stores here
        for rate in args.rates:
            starts = dict(ends)
            produced: list[ProduceReport] = []
            count = int(rate * args.seconds)
            producer = threading.Thread(
                target=lambda r=rate, n=count, out=produced: out.append(
                    produce(
                        settings.kafka_common(), list(DEMO_TOPICS), n, r, 7, 0.0, None, registry
                    )
                )
            )
            began = time.time()
            producer.start()
            s3_at: dict[str, float] = {}
            az_at: dict[str, float] = {}
            while True:
                now = time.time()
                s3_keys, az_keys = list_keys(stack, azure, prefix)
                for key in s3_keys:
                    s3_at.setdefault(key, now)
                for key in az_keys:
                    az_at.setdefault(key, now)
                if not producer.is_alive():
                    final = dict(ends)
                    for tp, end in produced[0].end_offsets.items():
                        final[tp] = max(final.get(tp, 0), end)
                    covered = {tp: 0 for tp in final}
                    for key in set(s3_at) & set(az_at):
                        k = parse_key(key.removeprefix(prefix))
                        if k is not None:
                            tp = (k.topic, k.partition)
                            covered[tp] = max(covered[tp], k.last + 1)
                    if all(covered[tp] >= end for tp, end in final.items()):
                        break
                    if time.time() - began > args.seconds + 120:
                        raise SystemExit("not replicated within two minutes of the end")
                time.sleep(POLL_S)
            ends = final
            stamps = timestamps(settings, starts, ends)
            delays: list[float] = []
            new_keys = 0
            for key in set(s3_at) & set(az_at):
                if key in seen:
                    continue
                seen[key] = max(s3_at[key], az_at[key])
                k = parse_key(key.removeprefix(prefix))
                if k is None:
                    continue
                new_keys += 1
                for offset in range(k.first, k.last + 1):
                    ts = stamps.get((k.topic, k.partition), {}).get(offset)
                    if ts is not None:
                        delays.append(seen[key] - ts)
            minutes = args.seconds / 60
            per_minute = new_keys / minutes
            results.append(
                f"{rate:>8,.0f} {len(delays):>8,} {percentile(delays, 0.5):6.1f} "
                f"{percentile(delays, 0.95):6.1f} {percentile(delays, 0.99):6.1f} "
                f"{max(delays):6.1f} {per_minute:8.1f} {per_minute * 60 * 24:12,.0f}"
                f"   mean {statistics.fmean(delays):.1f} s"
            )
            print(results[-1], flush=True)
        service.stop()
    print()
    print(
        f"service defaults; {args.partitions} partitions x {len(DEMO_TOPICS)} topics; "
        f"{args.seconds:g} s per rate; listing every {POLL_S} s (adds up to {POLL_S} s)"
    )
    print(
        f"{'rate/s':>8} {'records':>8} {'p50 s':>6} {'p95 s':>6} {'p99 s':>6} {'max s':>6} "
        f"{'obj/min':>8} {'obj/day':>12}"
    )
    for line in results:
        print(line)
    print_changed_settings()
    print(
        "obj/min: new objects per store per minute; obj/day: a day at that pace (below the "
        "size limits, objects follow the flush interval, not the rate: 50/s stands for 40/s)"
    )


if __name__ == "__main__":
    main()
