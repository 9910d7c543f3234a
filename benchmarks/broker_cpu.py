"""Broker CPU per consumed record: the service against a bare consumer on the same topics.

    .venv/bin/python benchmarks/broker_cpu.py [--seconds 30] [--backlog 300000]
        [--baseline-src DIR]

A production Kafka is shared: what the service costs the broker matters as much as its own
CPU. Starts a private local stack and reads the broker process's CPU time (the local
broker, Tansu, is one process) over each phase:

- at 50 and at 2,000 records/s: a producer alone for `--seconds` (the baseline), then the
  producer with a bare confluent-kafka consumer (librdkafka's defaults, one group), then the
  producer with `replicator run` (the service's defaults: its live consumer, its progress
  commits, the lag monitor's reads, the dead-letter producer all count), whose stores'
  progress starts at the end of the topics, as for a service already running;
- at full speed: a backlog of `--backlog` records read to its end by a bare consumer, then
  replicated by the service (a new group), from its start until both stores hold it all.

With `--baseline-src DIR` (another checkout of the project, e.g. `git worktree add DIR
<commit>`), the service of that checkout runs too, on the same stack right after this one's:
the before/after of a change in one run. Everything is printed as ratios within the run
(these machines are shared and noisy).

Printed: broker CPU microseconds per consumed record for each (the producer's baseline
subtracted at the paced rates) and each service's ratio to the bare consumer.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from confluent_kafka import Consumer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchstack import BenchStack, bench_stack, print_changed_settings

from replicator.config import Settings
from replicator.devtools.produce import produce
from replicator.devtools.stack import DEMO_TOPICS
from replicator.kafka.progress import ProgressLog
from replicator.model import TP
from replicator.schemas import SchemaRegistry
from tests.support.service import Service, wait_committed

# The benchmark looks at the stores' committed offsets (its own requests to the broker,
# counted against the service) once a second: the full-speed time is known to a second.
POLL_S = 1.0


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


def service_settings(settings: Settings, group: str) -> Settings:
    return settings.model_copy(
        update={"group_id": group, "s3_prefix": group, "azure_prefix": group}
    )


def start_at_end(settings: Settings, ends: dict[TP, int]) -> None:
    """Commit every store's progress at `ends`: the service starts there, as one running."""
    for store in settings.stores:
        progress = ProgressLog(settings.kafka_common(), settings.progress_group(store))
        try:
            progress.commit(ends)
        finally:
            progress.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--backlog", type=int, default=300_000)
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 2000.0])
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="another checkout whose service runs too (printed as 'before')",
    )
    args = parser.parse_args()
    variants: list[tuple[str, Path | None]] = [("service", None)]
    if args.baseline_src is not None:
        variants.insert(0, ("before", args.baseline_src.resolve()))

    lines: list[str] = []
    with bench_stack("cpu") as bench:
        lines = measure(bench, args.seconds, args.backlog, args.rates, variants)
    print()
    print(
        "broker (Tansu) CPU microseconds per consumed record; the producer's own share subtracted"
    )
    names = [name for name, _ in variants]
    print(
        f"{'rate/s':>10} {'bare':>10} "
        + " ".join(f"{n:>10}" for n in names)
        + " "
        + " ".join(f"{'x bare (' + n + ')':>18}" for n in names)
    )
    for line in lines:
        print(line)
    print_changed_settings()
    print(
        f"the benchmark reads the stores' committed offsets every {POLL_S:g} s until they hold "
        "the backlog (two requests counted against the service)"
    )


def measure(
    bench: BenchStack,
    seconds: float,
    backlog: int,
    rates: list[float],
    variants: list[tuple[str, Path | None]],
) -> list[str]:
    settings = bench.settings
    pid = bench.stack.pid("kafka")
    assert pid is not None
    broker = psutil.Process(pid)
    registry = SchemaRegistry.load(settings.schemas_dir)
    conf = settings.kafka_common()
    ends: dict[TP, int] = {}  # the real end of each partition (the producer's acknowledgements)
    lines: list[str] = []

    def produced(report_ends: dict[TP, int]) -> None:
        for tp, end in report_ends.items():
            ends[tp] = max(ends.get(tp, 0), end)

    def paced(rate: float, during: Callable[[], Callable[[], int]] | None) -> tuple[float, int]:
        """Broker CPU seconds over `seconds` of producing at `rate`, with `during` started
        first (it returns a function giving the records it consumed)."""
        done = during() if during is not None else (lambda: 0)
        time.sleep(2.0)  # joined and idle before the window
        before = broker_cpu(broker)
        report = produce(conf, list(DEMO_TOPICS), int(rate * seconds), rate, 3, 0.0, None, registry)
        produced(report.end_offsets)
        time.sleep(1.0)
        return broker_cpu(broker) - before, done()

    def row(label: str, bare_us: float, svc_us: list[float], note: str) -> str:
        ratios = [us / bare_us if bare_us > 0 else float("nan") for us in svc_us]
        return (
            f"{label:>10} {bare_us:10.1f} "
            + " ".join(f"{us:10.1f}" for us in svc_us)
            + " "
            + " ".join(f"{r:18.2f}" for r in ratios)
            + f"   ({note})"
        )

    for rate in rates:
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
        bare_us = (bare_cpu - base_cpu) / max(bare_n, 1) * 1e6
        svc_us: list[float] = []
        shares: list[str] = []
        for name, source in variants:
            group = f"{name}-{rate:g}"
            svc_settings = service_settings(settings, group)
            start_at_end(svc_settings, ends)
            box: list[Service] = []

            def start_service(
                r: float = rate,
                s: Settings = svc_settings,
                src: Path | None = source,
                box: list[Service] = box,
            ) -> Callable[[], int]:
                svc = Service(s, bench.root, name=s.group_id, source=src).start()
                box.append(svc)
                while '"partition_assigned"' not in svc.log_text():
                    time.sleep(0.1)
                return lambda: int(r * seconds)

            svc_cpu, svc_n = paced(rate, start_service)
            box[0].stop()
            svc_us.append((svc_cpu - base_cpu) / max(svc_n, 1) * 1e6)
            shares.append(f"{name} {svc_cpu / seconds * 100:.0f} %")
        lines.append(
            row(
                f"{rate:,.0f}",
                bare_us,
                svc_us,
                f"broker's share of a core: producer alone {base_cpu / seconds * 100:.0f} %, "
                f"bare {bare_cpu / seconds * 100:.0f} %, " + ", ".join(shares),
            )
        )
        print(lines[-1], flush=True)

    # Full speed: a backlog read to its end.
    report = produce(conf, list(DEMO_TOPICS), backlog, None, 5, 0.0, None, registry)
    produced(report.end_offsets)
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
    svc_us = []
    times: list[str] = []
    for name, source in variants:
        svc_settings = service_settings(settings, f"full-{name}")
        svc = Service(svc_settings, bench.root, name=f"full-{name}", source=source).start()
        started = time.monotonic()
        before = broker_cpu(broker)
        wait_committed(
            settings.kafka_bootstrap,
            [svc_settings.progress_group(s) for s in svc_settings.stores],
            ends,
            600,
            [svc],
            poll_s=POLL_S,
        )
        svc_us.append((broker_cpu(broker) - before) / total * 1e6)
        times.append(f"{name} {time.monotonic() - started:.1f} s")
        svc.stop()
    lines.append(
        row("full", bare_cpu / total * 1e6, svc_us, f"{total:,} records; " + ", ".join(times))
    )
    print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
