"""The broker's CPU per record for a consumer paced like the service, per fetch setting.

    .venv/bin/python benchmarks/fetch_settings.py [--records 300000] [--pace 40000] [--rounds 2]

A question broker_cpu.py cannot answer alone: how much of what the service costs the broker
comes from its consumer's fetch settings rather than from its pace or its other clients.
Starts a private stack, produces a backlog once, then for each variant below (each round, in
the same order) reads the whole backlog with a bare confluent-kafka consumer that consumes no
faster than `--pace` records/s (about the service's steady state), and prints the local
broker's (Tansu's) CPU microseconds per record. The first variant reads at full speed with
librdkafka's defaults (broker_cpu.py's bare consumer); the others are paced.

Only ratios within one run mean anything (shared, noisy machine); the rounds show the noise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psutil
from confluent_kafka import Consumer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchstack import bench_stack

from replicator.config import Settings
from replicator.devtools.produce import produce
from replicator.devtools.stack import DEMO_TOPICS
from replicator.pipeline.state import FETCH_QUEUE_BACKOFF_MS, consumer_fetch_config
from replicator.schemas import SchemaRegistry

MIB = 1 << 20
# the service's queue settings at the default fetch_buffer_kbytes, with librdkafka's fetch
# sizes (1 MiB a partition): the live consumer until the ninth session
SERVICE = {
    "queued.max.messages.kbytes": Settings.model_fields["fetch_buffer_kbytes"].default,
    "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
}
SHIPPED = consumer_fetch_config(SERVICE["queued.max.messages.kbytes"])  # pipeline/state.py

# name -> (consumer settings on top of the stack's, paced)
VARIANTS: dict[str, tuple[dict[str, int], bool]] = {
    "librdkafka defaults, full speed": ({}, False),
    "librdkafka defaults": ({}, True),
    "the service's queue, 1 MiB a partition": (SERVICE, True),
    "the service's queue, 2 MiB a partition (the ninth session's)": (
        {**SERVICE, "max.partition.fetch.bytes": 2 * MIB},
        True,
    ),
    "the service's as shipped (4 MiB a partition)": (SHIPPED, True),
    "the service's queue, 8 MiB a partition, 16 MiB a fetch": (
        {**SERVICE, "max.partition.fetch.bytes": 8 * MIB, "fetch.max.bytes": 16 * MIB},
        True,
    ),
    "the service's queue, backoff 500 ms": ({**SERVICE, "fetch.queue.backoff.ms": 500}, True),
    "a 64 MiB queue, backoff 20 ms": ({**SERVICE, "queued.max.messages.kbytes": 65_536}, True),
}


def broker_cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--pace", type=float, default=40_000.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    lines: list[str] = []
    with bench_stack("fetch") as bench:
        settings = bench.settings
        pid = bench.stack.pid("kafka")
        assert pid is not None
        broker = psutil.Process(pid)
        registry = SchemaRegistry.load(settings.schemas_dir)
        report = produce(
            settings.kafka_common(), list(DEMO_TOPICS), args.records, None, 5, 0.0, None, registry
        )
        total = sum(report.end_offsets.values())
        for round_ in range(1, args.rounds + 1):
            for name, (conf, paced) in VARIANTS.items():
                consumer = Consumer(
                    {
                        **settings.kafka_common(),
                        "group.id": f"fetch-{round_}-{name}",
                        "auto.offset.reset": "earliest",
                        "enable.auto.commit": False,
                        "session.timeout.ms": 6000,
                        **conf,
                    }
                )
                consumer.subscribe(list(DEMO_TOPICS))
                while not consumer.assignment():  # the join is not measured
                    consumer.poll(0.1)
                before = broker_cpu(broker)
                started = time.monotonic()
                read = 0
                while read < total:
                    read += sum(1 for m in consumer.consume(1000, timeout=0.5) if m.error() is None)
                    if paced:
                        ahead = read / args.pace - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                seconds = time.monotonic() - started
                cpu = broker_cpu(broker) - before
                consumer.close()
                lines.append(
                    f"{round_:>5} {name:<56} {seconds:7.1f} {cpu:9.2f} {cpu / total * 1e6:10.2f}"
                )
                print(lines[-1], flush=True)
    print()
    print(f"{total:,} records; paced: at most {args.pace:,.0f} records/s")
    print(
        f"{'round':>5} {'consumer settings':<56} {'seconds':>7} {'broker s':>9} {'us/record':>10}"
    )
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
