"""Broker CPU per consumed record: the service against a bare consumer on the same topics.

    .venv/bin/python benchmarks/broker_cpu.py [--seconds 30] [--backlog 300000] [--rounds 4]
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
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

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


def service_settings(settings: Settings, group: str, overrides: dict[str, Any]) -> Settings:
    return settings.model_copy(
        update={**overrides, "group_id": group, "s3_prefix": group, "azure_prefix": group}
    )


def start_at_end(settings: Settings, ends: dict[TP, int]) -> None:
    """Commit every store's progress at `ends`: the service starts there, as one running."""
    for store in settings.stores:
        progress = ProgressLog(settings.kafka_common(), settings.progress_group(store))
        try:
            progress.commit(ends)
        finally:
            progress.close()


@dataclass(frozen=True)
class Variant:
    """A service measured: this checkout's or another's (`source`), with `overrides` of its
    settings (none by default: the service as shipped)."""

    name: str
    source: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def parse_variant(text: str) -> Variant:
    """`NAME:setting=value,setting=value`: this checkout's service with those settings."""
    name, _, pairs = text.partition(":")
    overrides: dict[str, Any] = {}
    for pair in filter(None, pairs.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or key not in Settings.model_fields:
            raise argparse.ArgumentTypeError(f"not a setting=value: {pair!r}")
        overrides[key] = value
    if not name:
        raise argparse.ArgumentTypeError(f"a variant needs a name: {text!r}")
    return Variant(name, None, overrides)


def phase_order(names: list[str], round_: int) -> list[str]:
    """The phases of round `round_` (from 0): as given in even rounds, reversed in odd ones.
    Whichever phase runs later in a round was measured to cost the broker more (by 10 to 30 %
    at full speed); reversing every other round gives each phase every place in turn, so the
    median over rounds is not the order's."""
    return list(names) if round_ % 2 == 0 else list(reversed(names))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--backlog", type=int, default=300_000)
    parser.add_argument("--rates", type=float, nargs="*", default=[50.0, 2000.0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="rounds of every phase, in alternating order (default 4)",
    )
    parser.add_argument(
        "--no-full-speed", action="store_true", help="only the paced rates, no backlog"
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="another checkout whose service runs too (printed as 'before')",
    )
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        metavar="NAME:SETTING=VALUE,...",
        help="this checkout's service with some settings changed, measured too "
        "(an experiment: which part of the service costs the broker what)",
    )
    args = parser.parse_args()
    variants: list[Variant] = [Variant("service")]
    if args.baseline_src is not None:
        variants.insert(0, Variant("before", args.baseline_src.resolve()))
    variants += args.variant

    with bench_stack("cpu") as bench:
        lines = measure(
            bench,
            args.seconds,
            None if args.no_full_speed else args.backlog,
            args.rates,
            variants,
            args.rounds,
        )
    print()
    print(
        "broker (Tansu) CPU microseconds per consumed record, the median over "
        f"{args.rounds} rounds, the phases' order reversed every other round (the broker's "
        "cost per record drifts over a run: a fixed order would charge the drift to "
        "whichever phase runs last); the producer's own share subtracted at the paced rates; "
        "'x bare': the service's figures summed over the rounds / the bare consumer's "
        "[lowest - highest ratio within one round]"
    )
    names = [v.name for v in variants]
    print(
        f"{'rate/s':>10} {'bare':>9} "
        + " ".join(f"{n:>9}" for n in names)
        + " "
        + " ".join(f"{'x bare (' + n + ')':>26}" for n in names)
    )
    for line in lines:
        print(line)
    print_changed_settings()
    for variant in variants:
        if variant.overrides:
            print(
                f"variant {variant.name}: "
                + ", ".join(f"{k}={v}" for k, v in variant.overrides.items())
                + " (an experiment, not the service as shipped)"
            )
    print(
        f"full speed: the benchmark reads the service's committed offsets from its /metrics "
        f"every {POLL_S:g} s (HTTP to the service: nothing asked of the broker); 'gross' is "
        "all the broker's CPU over the phase, 'net' that minus the broker's idle rate "
        f"(measured over {IDLE_S:g} s with no client at the start of each round) times the "
        "phase's duration"
    )


def summary(label: str, bare: list[float], per_variant: list[list[float]], note: str) -> str:
    """One row: median microseconds per record of each, and each variant's ratio to the bare
    consumer over all rounds (the sum of its figures over the sum of the bare consumer's), with
    the lowest and highest ratio within one round."""
    cells: list[str] = []
    for values in per_variant:
        ratios = [v / b if b > 0 else float("nan") for v, b in zip(values, bare, strict=True)]
        pooled = sum(values) / sum(bare) if sum(bare) > 0 else float("nan")
        cells.append(f"{pooled:.2f} [{min(ratios):.2f}-{max(ratios):.2f}]")
    return (
        f"{label:>10} {median(bare):9.1f} "
        + " ".join(f"{median(values):9.1f}" for values in per_variant)
        + " "
        + " ".join(f"{cell:>26}" for cell in cells)
        + f"   ({note})"
    )


def measure(
    bench: BenchStack,
    seconds: float,
    backlog: int | None,
    rates: list[float],
    variants: list[Variant],
    rounds: int,
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

    def paced_bare(rate: float, round_: int) -> tuple[float, int]:
        stop = threading.Event()
        counted = [0]

        def start() -> Callable[[], int]:
            thread = threading.Thread(
                target=bare_consumer, args=(settings, f"paced-{rate:g}-{round_}", stop, counted)
            )
            thread.start()
            time.sleep(settings.session_timeout_ms / 1000)  # the join
            return lambda: counted[0]

        try:
            return paced(rate, start)
        finally:
            stop.set()

    def paced_service(rate: float, round_: int, variant: Variant) -> tuple[float, int]:
        svc_settings = service_settings(
            settings, f"{variant.name}-{rate:g}-{round_}", variant.overrides
        )
        start_at_end(svc_settings, ends)
        box: list[Service] = []

        def start() -> Callable[[], int]:
            svc = Service(
                svc_settings, bench.root, name=svc_settings.group_id, source=variant.source
            )
            box.append(svc.start())
            while '"partition_assigned"' not in svc.log_text():
                if not svc.alive():
                    raise SystemExit(f"service exited:\n{svc.log_text()[-3000:]}")
                time.sleep(0.1)
            return lambda: int(rate * seconds)

        try:
            return paced(rate, start)
        finally:
            for svc in box:
                svc.stop()

    names = ["producer", "bare"] + [v.name for v in variants]
    by_name = {v.name: v for v in variants}
    for rate in rates:
        cpu: dict[str, list[float]] = {name: [] for name in names}
        us: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(rounds):
            spent: dict[str, tuple[float, int]] = {}
            for name in phase_order(names, round_):
                if name == "producer":
                    spent[name] = paced(rate, None)
                elif name == "bare":
                    spent[name] = paced_bare(rate, round_)
                else:
                    spent[name] = paced_service(rate, round_, by_name[name])
            base = spent["producer"][0]
            for name, (used, consumed) in spent.items():
                cpu[name].append(used)
                if name != "producer":
                    us[name].append((used - base) / max(consumed, 1) * 1e6)
            print(
                f"  {rate:g}/s round {round_ + 1} ({' '.join(phase_order(names, round_))}): "
                + ", ".join(f"{n} {us[n][-1]:.1f} us" for n in names[1:]),
                flush=True,
            )
        shares = ", ".join(f"{n} {median(cpu[n]) / seconds * 100:.0f} %" for n in names)
        lines.append(
            summary(
                f"{rate:,.0f}",
                us["bare"],
                [us[v.name] for v in variants],
                f"broker's median share of a core: {shares}",
            )
        )
        print(lines[-1], flush=True)
    if backlog is not None:
        lines += full_speed(
            bench, broker, conf, registry, backlog, variants, rounds, produced, ends
        )
    return lines


def full_speed(
    bench: BenchStack,
    broker: psutil.Process,
    conf: dict[str, Any],
    registry: SchemaRegistry,
    backlog: int,
    variants: list[Variant],
    rounds: int,
    produced: Callable[[dict[TP, int]], None],
    ends: dict[TP, int],
) -> list[str]:
    """A backlog read to its end by each consumer, a new group each time, in rounds."""
    settings = bench.settings
    report = produce(conf, list(DEMO_TOPICS), backlog, None, 5, 0.0, None, registry)
    produced(report.end_offsets)
    total = sum(ends.values())
    time.sleep(2.0)  # the producer's last requests served

    def bare(round_: int) -> tuple[float, float]:
        stop = threading.Event()
        counted = [0]
        started = time.monotonic()
        before = broker_cpu(broker)
        thread = threading.Thread(
            target=bare_consumer, args=(settings, f"full-bare-{round_}", stop, counted)
        )
        thread.start()
        while counted[0] < total:
            time.sleep(0.05)
        used = broker_cpu(broker) - before
        took = time.monotonic() - started
        stop.set()
        thread.join()
        return used, took

    def service(round_: int, variant: Variant) -> tuple[float, float]:
        svc_settings = service_settings(
            settings, f"full-{variant.name}-{round_}", variant.overrides
        )
        svc = Service(
            svc_settings, bench.root, name=svc_settings.group_id, source=variant.source
        ).start()
        try:
            started = time.monotonic()
            before = broker_cpu(broker)
            wait_service_committed(svc, svc_settings.stores, ends, 600)
            return broker_cpu(broker) - before, time.monotonic() - started
        finally:
            svc.stop()

    names = ["bare"] + [v.name for v in variants]
    by_name = {v.name: v for v in variants}
    gross: dict[str, list[float]] = {name: [] for name in names}
    net: dict[str, list[float]] = {name: [] for name in names}
    took: dict[str, list[float]] = {name: [] for name in names}
    idles: list[float] = []
    for round_ in range(rounds):
        # The broker alone: its idle CPU per second, charged to nobody (net figures).
        before = broker_cpu(broker)
        time.sleep(IDLE_S)
        idle_rate = (broker_cpu(broker) - before) / IDLE_S
        idles.append(idle_rate)
        for name in phase_order(names, round_):
            used, spent_s = bare(round_) if name == "bare" else service(round_, by_name[name])
            gross[name].append(used / total * 1e6)
            net[name].append((used - idle_rate * spent_s) / total * 1e6)
            took[name].append(spent_s)
            time.sleep(2.0)  # the last commits and leaves served before the next phase
        print(
            f"  full speed round {round_ + 1} ({' '.join(phase_order(names, round_))}): "
            + ", ".join(f"{n} {net[n][-1]:.2f} us net, {took[n][-1]:.1f} s" for n in names),
            flush=True,
        )
    times = ", ".join(f"{n} {median(took[n]):.1f} s" for n in names)
    lines = [
        summary(
            "full gross",
            gross["bare"],
            [gross[v.name] for v in variants],
            f"{total:,} records; median times {times}; broker idle "
            f"{median(idles) * 100:.1f} % of a core",
        ),
        summary(
            "full net",
            net["bare"],
            [net[v.name] for v in variants],
            "minus the broker's idle rate x each phase's duration",
        ),
    ]
    for line in lines:
        print(line, flush=True)
    return lines


if __name__ == "__main__":
    main()
