"""Broker CPU per consumed record: the service against a bare consumer on the same topics.

    .venv/bin/python benchmarks/broker_cpu.py [--seconds 30] [--backlog 300000]

A production Kafka is shared: what the service costs the broker matters as much as its own
CPU. Starts a private local stack and reads the broker process's CPU time (the local
broker, Tansu, is one process) over each phase:

- at 50 and at 2,000 records/s: a producer alone for `--seconds` (the baseline), then the
  producer with a bare confluent-kafka consumer (librdkafka's defaults, one group), then the
  producer with `replicator run` (the service's defaults: its live consumer, its progress
  commits, the lag monitor's reads, the dead-letter producer all count);
- at full speed: a backlog of `--backlog` records read to its end by a bare consumer, then
  replicated by the service (a new group).

Printed: broker CPU microseconds per consumed record for each (the producer's baseline
subtracted at the paced rates) and the service's ratio to the bare consumer.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from confluent_kafka import Consumer
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replicator.config import Settings
from replicator.devtools.produce import produce
from replicator.devtools.stack import DEMO_TOPICS, LocalStack, StackPorts
from replicator.model import TP
from replicator.schemas import SchemaRegistry
from tests.support.service import Service, wait_committed


def broker_cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def bare_consumer(
    settings: Settings, group: str, stop: threading.Event, counted: list[int]
) -> None:
    consumer = Consumer(
        {
            **settings.kafka_common(),
            "group.id": group,
            "enable.auto.commit": True,  # what a plain consumer does
            "auto.offset.reset": "latest" if group.startswith("paced") else "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
        }
    )
    consumer.subscribe(settings.topics)
    n = 0
    while not stop.is_set():
        n += sum(1 for m in consumer.consume(1000, timeout=0.1) if m.error() is None)
        counted[0] = n
    consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--backlog", type=int, default=300_000)
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 2000.0])
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="replicator-brokercpu-"))
    stack = LocalStack(
        root=root,
        ports=StackPorts.free(),
        topics=list(DEMO_TOPICS),
        dead_letter_topic="snds.dead-letter",
        bucket="cpu-s3",
        container="cpu-azure",
        partitions=6,
    )
    stack.up()
    lines: list[str] = []
    try:
        env = stack.env()
        settings = Settings(
            kafka_bootstrap=env["kafka_bootstrap"],
            topics=list(DEMO_TOPICS),
            dead_letter_topic="snds.dead-letter",
            s3_endpoint=env["s3_endpoint"],
            s3_bucket="cpu-s3",
            s3_access_key=SecretStr(env["s3_access_key"]),
            s3_secret_key=SecretStr(env["s3_secret_key"]),
            azure_connection_string=SecretStr(env["azure_connection_string"]),
            azure_container="cpu-azure",
            metrics_port=0,
            log_level="INFO",
        )
        pid = stack.pid("kafka")
        assert pid is not None
        broker = psutil.Process(pid)
        registry = SchemaRegistry.load(settings.schemas_dir)
        conf = settings.kafka_common()
        groups = [settings.progress_group(s) for s in settings.stores]

        def paced(rate: float, during: Callable[[], Callable[[], int]] | None) -> tuple[float, int]:
            """Broker CPU seconds over `--seconds` of producing at `rate`, with `during`
            started first (it returns a function giving the records it consumed)."""
            done = during() if during is not None else (lambda: 0)
            time.sleep(2.0)  # joined and idle before the window
            before = broker_cpu(broker)
            produce(conf, list(DEMO_TOPICS), int(rate * args.seconds), rate, 3, 0.0, None, registry)
            time.sleep(1.0)
            return broker_cpu(broker) - before, done()

        for rate in args.rates:
            base_cpu, _ = paced(rate, None)
            stop = threading.Event()
            counted = [0]

            def start_bare(
                r: float = rate, stop: threading.Event = stop, counted: list[int] = counted
            ) -> Callable[[], int]:
                thread = threading.Thread(
                    target=bare_consumer, args=(settings, f"paced-{r}", stop, counted)
                )
                thread.start()
                time.sleep(settings.session_timeout_ms / 1000)  # the join
                return lambda: counted[0]

            bare_cpu, bare_n = paced(rate, start_bare)
            stop.set()
            service_box: list[Service] = []

            def start_service(
                r: float = rate, service_box: list[Service] = service_box
            ) -> Callable[[], int]:
                svc = Service(
                    settings.model_copy(
                        update={
                            "group_id": f"svc-{r:g}",
                            "s3_prefix": f"r{r:g}",
                            "azure_prefix": f"r{r:g}",
                        }
                    ),
                    root,
                    name=f"svc-{r:g}",
                ).start()
                service_box.append(svc)
                while '"partition_assigned"' not in svc.log_text():
                    time.sleep(0.1)
                return lambda: int(r * args.seconds)

            svc_cpu, svc_n = paced(rate, start_service)
            service_box[0].stop()
            bare_us = (bare_cpu - base_cpu) / max(bare_n, 1) * 1e6
            svc_us = (svc_cpu - base_cpu) / max(svc_n, 1) * 1e6
            lines.append(
                f"{rate:>10,.0f} {bare_us:10.1f} {svc_us:10.1f} {svc_us / bare_us if bare_us > 0 else float('nan'):7.2f}"
                f"   (producer alone {base_cpu / args.seconds * 100:.0f} % of a core; "
                f"bare {bare_cpu / args.seconds * 100:.0f} %, service {svc_cpu / args.seconds * 100:.0f} %)"
            )
            print(lines[-1], flush=True)

        # Full speed: a backlog read to its end.
        report = produce(conf, list(DEMO_TOPICS), args.backlog, None, 5, 0.0, None, registry)
        ends: dict[TP, int] = {}
        for tp, end in report.end_offsets.items():
            ends[tp] = end
        total = sum(ends.values())
        stop = threading.Event()
        counted = [0]
        before = broker_cpu(broker)
        thread = threading.Thread(target=bare_consumer, args=(settings, "full-bare", stop, counted))
        thread.start()
        while counted[0] < total:
            time.sleep(0.05)
        bare_cpu = broker_cpu(broker) - before
        stop.set()
        thread.join()
        svc = Service(
            settings.model_copy(
                update={"group_id": "full-svc", "s3_prefix": "full", "azure_prefix": "full"}
            ),
            root,
            name="full",
        ).start()
        before = broker_cpu(broker)
        wait_committed(
            settings.kafka_bootstrap,
            [g.replace(settings.group_id, "full-svc", 1) for g in groups],
            ends,
            600,
            [svc],
        )
        svc_cpu = broker_cpu(broker) - before
        svc.stop()
        bare_us = bare_cpu / total * 1e6
        svc_us = svc_cpu / total * 1e6
        lines.append(
            f"{'full':>10} {bare_us:10.1f} {svc_us:10.1f} {svc_us / bare_us:7.2f}   ({total:,} records)"
        )
        print(lines[-1], flush=True)
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(
        "broker (Tansu) CPU microseconds per consumed record; the producer's own share subtracted"
    )
    print(f"{'rate/s':>10} {'bare':>10} {'service':>10} {'x bare':>7}")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
