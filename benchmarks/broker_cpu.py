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
  The broker burns CPU with no client at all (its own timers); that idle rate is measured
  right before this phase (`IDLE_S` with no client) and printed, and each consumer's figure
  is printed twice: gross (all the broker's CPU over the phase) and net (minus the idle rate
  times the phase's duration: what the consumer caused). Without the net figure the idle
  rate is charged to whichever consumer runs longer. The benchmark learns that the service
  is done from the service's own /metrics (`replicator_replica_committed_offset`, HTTP to
  the service), not from the broker: its polls cost the broker nothing.

With `--baseline-src DIR` (another checkout of the project, e.g. `git worktree add DIR
<commit>`), the service of that checkout runs too, on the same stack right after this one's:
the before/after of a change in one run. Everything is printed as ratios within the run
(these machines are shared and noisy).

Printed: broker CPU microseconds per consumed record for each (the producer's baseline
subtracted at the paced rates; gross and net of the broker's idle rate at full speed) and
each service's ratio to the bare consumer.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
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
from tests.support.service import Service

# The benchmark reads the service's committed offsets from its /metrics (not from the broker)
# every POLL_S: the full-speed time is known to that.
POLL_S = 0.2
IDLE_S = 5.0  # the broker alone, no client: its idle CPU rate, before the full-speed phase
COMMITTED_METRIC = "replicator_replica_committed_offset"


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


def metrics_port(svc: Service) -> int | None:
    """The port the service's HTTP server listens on (its log's `http_listening`)."""
    for line in svc.log_text().splitlines():
        if '"http_listening"' in line:
            return int(json.loads(line)["port"])
    return None


def replica_committed(port: int) -> dict[tuple[str, TP], int]:
    """(store, partition) -> the offset the service last committed, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    out: dict[tuple[str, TP], int] = {}
    for line in text.splitlines():
        if not line.startswith(COMMITTED_METRIC + "{"):
            continue
        labels_text, _, value = line[len(COMMITTED_METRIC) + 1 :].rpartition("} ")
        labels = dict(
            (k, v.strip('"')) for k, v in (pair.split("=", 1) for pair in labels_text.split(","))
        )
        out[(labels["store"], (labels["topic"], int(labels["partition"])))] = int(float(value))
    return out


def wait_service_committed(
    svc: Service, stores: Sequence[str], ends: dict[TP, int], timeout: float
) -> None:
    """Until the service's /metrics say every store committed `ends` (HTTP to the service)."""
    deadline = time.monotonic() + timeout
    port = None
    while True:
        if not svc.alive():
            raise SystemExit(f"service exited:\n{svc.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"not caught up after {timeout} s:\n{svc.log_text()[-3000:]}")
        port = port or metrics_port(svc)
        if port is not None:
            got = replica_committed(port)
            if all(got.get((s, tp), -1) >= end for s in stores for tp, end in ends.items()):
                return
        time.sleep(POLL_S)


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
        f"full speed: the benchmark reads the service's committed offsets from its /metrics "
        f"every {POLL_S:g} s (HTTP to the service: nothing asked of the broker); 'gross' is "
        "all the broker's CPU over the phase, 'net' that minus the broker's idle rate "
        f"(measured over {IDLE_S:g} s with no client just before) times the phase's duration"
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
    # The broker alone: its idle CPU per second, charged to nobody below (net figures).
    time.sleep(2.0)  # the producer's last requests served
    before = broker_cpu(broker)
    time.sleep(IDLE_S)
    idle_rate = (broker_cpu(broker) - before) / IDLE_S
    stop = threading.Event()
    counted = [0]
    started = time.monotonic()
    before = broker_cpu(broker)
    thread = threading.Thread(target=bare_consumer, args=(settings, "full-bare", stop, counted))
    thread.start()
    while counted[0] < total:
        time.sleep(0.05)
    bare_cpu = broker_cpu(broker) - before
    bare_s = time.monotonic() - started
    stop.set()
    thread.join()
    gross: list[float] = []
    net: list[float] = []
    times: list[str] = []
    for name, source in variants:
        svc_settings = service_settings(settings, f"full-{name}")
        svc = Service(svc_settings, bench.root, name=f"full-{name}", source=source).start()
        started = time.monotonic()
        before = broker_cpu(broker)
        wait_service_committed(svc, svc_settings.stores, ends, 600)
        spent = broker_cpu(broker) - before
        took = time.monotonic() - started
        gross.append(spent / total * 1e6)
        net.append((spent - idle_rate * took) / total * 1e6)
        times.append(f"{name} {took:.1f} s")
        svc.stop()
    note = (
        f"{total:,} records; bare {bare_s:.1f} s, "
        + ", ".join(times)
        + f"; broker idle {idle_rate * 100:.1f} % of a core"
    )
    lines.append(row("full gross", bare_cpu / total * 1e6, gross, note))
    lines.append(
        row(
            "full net",
            (bare_cpu - idle_rate * bare_s) / total * 1e6,
            net,
            "minus the broker's idle rate x each phase's duration",
        )
    )
    print(lines[-2], flush=True)
    print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
