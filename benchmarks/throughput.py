"""Throughput benchmark: the replicator against the raw consume rate, measured in one run.

    .venv/bin/python benchmarks/throughput.py [--records 300000] [--partitions 6] [--day]
        [--baseline-src DIR] [--rounds N]

Starts a private local stack (free ports, temporary folder), produces a fixed, seeded
workload over both topics with the project's own schemas, then measures:

- raw consume: a bare confluent-kafka consumer reading every record (the ceiling);
- end to end: `replicator run` (a real process) from start until both stores' groups have
  committed everything, with its peak RSS;
- catch-up: the same, with one store stopped during the first half and restarted while
  live records flow (--live-rate, until it has caught up); the time the stopped store then
  needs to hold everything, live records included, and its rate;
- audit: `replicator audit` over everything replicated (Kafka, both stores and the
  dead-letter topic read once, every offset accounted for), with its peak RSS;
- replay: one store's group reset to the beginning; the time until it has driven the whole
  workload again (nothing new is created), and its rate.

- day of SNDS (`--day`, off by default: it adds a few minutes): a backlog of 5,000,000
  records (the workload topped up) replicated end to end by a new group, as after a day down.
  Its rows are also compared with raw passes over the whole day backlog (two passes of a
  bare consumer reading all 5,000,000, same method as the first ones): the local broker's
  cost of a fetch may grow with the log's length, which the first million does not show.

With `--baseline-src DIR` (another checkout, e.g. `git worktree add DIR <commit>`, its C
extension built), that checkout's service runs the end-to-end (and --day) rows too, just before this
one's, on the same workload; `--rounds N` repeats the pair, before and after taking turns:
the before/after of a change in one run (compare CPU/rec, which moves least).

The service runs with its own defaults (flush interval, session timeout, chunk sizes...);
the few settings the benchmark changes are printed under the table with the reason. Every
rate is printed as a ratio of the raw consume rate of the same run, to its best and to its
median pass, because these machines are noisy: the ratio holds where the absolute figure
does not. The group join (on the local broker about half the session timeout) is a fixed
cost of each run's start: it is printed apart, and the rate after it beside the whole-run
rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from pydantic import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchstack import bench_stack, print_changed_settings

from replicator.config import Settings
from replicator.devtools.produce import ProduceReport, produce
from replicator.devtools.stack import DEMO_TOPICS, LocalStack
from replicator.model import TP
from replicator.pipeline.state import consumer_fetch_config
from replicator.schemas import SchemaRegistry
from tests.support.service import Progress, Service, settings_env


@dataclass
class Row:
    name: str
    seconds: float
    records: int
    megabytes: float
    peak_rss_mib: float | None = None
    note: str = ""
    cpu_s: float | None = None  # CPU seconds of the service and its decode workers
    day: bool = False  # a row of the day of SNDS (also compared with the day's raw passes)


# The catch-up row also changes these, so that the stopped store is seen down and back
# within a second instead of the defaults' 30 s of retries and 5 s between probes.
CATCHUP_SETTINGS: dict[str, object] = {"health_interval_s": 1.0, "write_retry_s": 1.0}
DAY_RECORDS = 5_000_000  # about a day of SNDS traffic (40 records/s on average, peaks)


def raw_consume(settings: Settings, ends: dict[TP, int], sizes: list[int] | None = None) -> float:
    """Seconds for a bare consumer to read every record of the workload; with `sizes`, the
    bytes of every value are added to it (a pass that is not timed: it costs a little)."""
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
            if sizes is not None:
                sizes.append(len(msg.value() or b""))
            if offset + 1 >= remaining.get((topic, partition), 1 << 62):
                remaining.pop((topic, partition), None)
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def startup_seconds(service: Service, launched: float) -> float | None:
    """Seconds from the process start until its first partition was assigned: starting the
    process and joining the group (a fresh group waits for the broker's initial rebalance
    delay, 3 s on Kafka's default; the local broker holds a join for about half the session
    timeout)."""
    for line in service.log_text().splitlines():
        if '"partition_assigned"' in line:
            at = datetime.fromisoformat(json.loads(line)["time"].replace("Z", "+00:00"))
            return at.timestamp() - launched
    return None


def wait_groups(
    settings: Settings,
    groups: list[str],
    ends: dict[TP, int],
    service: Service,
    rss: list[float],
    cpu: list[float] | None = None,
    timeline: list[tuple[float, int]] | None = None,
) -> float:
    """Seconds until every group has committed `ends`; `timeline` gets (seconds, records
    committed by the slowest group) at each poll."""
    readers = [Progress(settings.kafka_bootstrap, g) for g in groups]
    base = {tp: 0 for tp in ends}
    started = time.perf_counter()
    assert service.proc is not None
    proc = psutil.Process(service.proc.pid)
    try:
        while True:
            with contextlib.suppress(psutil.Error):
                # the service and its decode worker processes together
                family = [proc, *proc.children(recursive=True)]
                rss.append(sum(p.memory_info().rss for p in family) / 2**20)
                if cpu is not None:
                    times = [p.cpu_times() for p in family]
                    cpu.append(sum(t.user + t.system for t in times))
            committed = [r.committed(list(ends)) for r in readers]
            if timeline is not None:
                now = time.perf_counter() - started
                timeline.append(
                    (now, min(sum(max(c.get(tp, 0), base[tp]) for tp in ends) for c in committed))
                )
            done = all(all(c.get(tp, -1) >= end for tp, end in ends.items()) for c in committed)
            if done:
                return time.perf_counter() - started
            if not service.alive():
                raise SystemExit(f"service exited:\n{service.log_text()[-3000:]}")
            time.sleep(0.2)
    finally:
        for r in readers:
            r.close()


def steady_rate(
    timeline: list[tuple[float, int]], total: int
) -> tuple[float, float, float, float] | None:
    """(records/s, seconds, start, tail) between the first polls that saw 10% and 90% of
    `total` committed: the rate once the group has joined and chunks are flowing, from the
    records actually committed between those two polls (commits come a chunk at a time, so
    the counts jump; the rate is not taken from the levels). `start` and `tail` are the
    seconds the records before and after took beyond that rate: the process start, the
    group join and the first chunks filling; the wall-clock cut of the last chunks and the
    last commit."""
    low = next(((at, n) for at, n in timeline if n >= 0.1 * total), None)
    high = next(((at, n) for at, n in timeline if n >= 0.9 * total), None)
    if low is None or high is None or high[0] <= low[0] or high[1] <= low[1]:
        return None
    rate = (high[1] - low[1]) / (high[0] - low[0])
    start = low[0] - low[1] / rate
    tail = timeline[-1][0] - high[0] - (total - high[1]) / rate
    return rate, high[0] - low[0], start, tail


# Per record held in memory beyond its body (RawRecord tuple, its ints and key, list slots;
# measured with tracemalloc over the benchmark's workload: about 230 bytes).
RECORD_OVERHEAD = 240
PROCESS_BASE_MIB = 100  # interpreter, libraries, the extension, the clients, before any record


def memory_bound_mib(settings: Settings, partitions: int, body_bytes: float = 200.0) -> float:
    """The memory the code bounds a replica to, by construction (docs/performance.md,
    "Memory"), for `partitions` owned partitions and records of `body_bytes` on average:

    - the process before any record: PROCESS_BASE_MIB;
    - each consumer's queue (the live one, and one catch-up consumer per store at most):
      `fetch_buffer_kbytes` plus the fetch response that crosses it;
    - each partition's open chunk, live and catch-up: `chunk_max_bytes` of bodies (or
      `chunk_max_records` records) with RECORD_OVERHEAD each;
    - the cut chunks not yet written to every store: `max_buffer_bytes` before the loop holds,
      plus what one turn may cut past it (every partition's open chunk), as records until
      encoded."""
    per_record = 1 + RECORD_OVERHEAD / body_bytes
    chunk = min(settings.chunk_max_bytes, settings.chunk_max_records * body_bytes) * per_record
    conf = consumer_fetch_config(settings.fetch_buffer_kbytes)  # the service's own
    fetch = min(conf["fetch.max.bytes"], partitions * conf["max.partition.fetch.bytes"])
    consumers = 1 + len(settings.stores)
    queues = consumers * (settings.fetch_buffer_kbytes * 1024 + fetch)
    open_chunks = 2 * partitions * chunk
    waiting = settings.max_buffer_bytes * per_record + partitions * chunk
    return PROCESS_BASE_MIB + (queues + open_chunks + waiting) / 2**20


def end_to_end(
    settings: Settings,
    log_dir: Path,
    ends: dict[TP, int],
    total: int,
    value_mb: float,
    replicas: int,
    name: str,
    source: Path | None = None,
) -> list[Row]:
    """`replicator run` from start until both stores' groups hold `ends`: the whole run, the
    run after the group join, and the steady state (10% to 90% committed)."""
    rss: list[float] = []
    # Extra replicas share the group: they split the partitions (the first one is watched
    # for RSS; the time is until both stores' groups hold everything).
    extra = [
        Service(settings, log_dir, name=f"{settings.group_id}-{i}", source=source).start()
        for i in range(1, replicas)
    ]
    launched = time.time()
    service = Service(settings, log_dir, name=settings.group_id, source=source).start()
    cpu: list[float] = []
    timeline: list[tuple[float, int]] = []
    seconds = wait_groups(
        settings,
        [settings.progress_group(s) for s in settings.stores],
        ends,
        service,
        rss,
        cpu,
        timeline,
    )
    for replica in [service, *extra]:
        replica.stop()
    rows = [
        Row(
            f"{name}, both stores, {replicas} replica(s)",
            seconds,
            total,
            value_mb,
            max(rss),
            cpu_s=cpu[-1] if cpu and replicas == 1 else None,
        )
    ]
    join = startup_seconds(service, launched)
    if join is not None:
        rows.append(
            Row(
                "... after the group join",
                seconds - join,
                total,
                value_mb,
                note=f"start and group join apart: {join:.1f} s (a fixed cost)",
            )
        )
    steady = steady_rate(timeline, total)
    if steady is not None:
        rate, span, start, tail = steady
        rows.append(
            Row(
                "... steady state (10% to 90% committed)",
                span,
                round(rate * span),
                value_mb * rate * span / total,
                note=f"the first 10% took {start:.1f} s more (start, join, first chunks), "
                f"the last {tail:.1f} s more (the last cuts, last commit)",
            )
        )
    print(f"{name}: {total / seconds:,.0f} records/s, peak RSS {max(rss):.0f} MiB", flush=True)
    return rows


def parse_overrides(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, object]:
    """`--set NAME=VALUE` pairs as settings, checked by the service's own validation."""
    raw: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().lower().removeprefix("replicator_")
        if not sep or name not in Settings.model_fields:
            parser.error(f"--set {pair!r}: expected NAME=VALUE with NAME a service setting")
        raw[name] = value
    if not raw:
        return {}
    # Each value is validated by its own field (type and bounds), as the service reads it.
    fields = Settings.model_fields
    model = create_model(  # type: ignore[call-overload]
        "Overrides", **{name: (fields[name].annotation, fields[name]) for name in raw}
    )
    try:
        checked = model.model_validate(raw)
    except ValueError as exc:
        parser.error(f"--set: {exc}")
    return {name: getattr(checked, name) for name in raw}


def reset_group(stack: LocalStack, group: str, ends: dict[TP, int]) -> None:
    tps = [TopicPartition(t, p, 0) for t, p in ends]
    for fut in stack.admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, tps)]
    ).values():
        fut.result(timeout=10)


def run_audit_cli(settings: Settings, manifest: Path) -> tuple[float, float, str]:
    """`replicator audit` as an operator runs it: (seconds, peak RSS MiB, its verdict)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    env.update(settings_env(settings))
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "replicator", "audit", "--json", "--manifest", str(manifest)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    handle = psutil.Process(proc.pid)
    peak = 0.0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, handle.memory_info().rss / 2**20)
        time.sleep(0.1)
    seconds = time.monotonic() - started
    out, err = proc.communicate()
    try:
        report = json.loads(out)
        verdict = f"{report['status']}, exit {proc.returncode}: {report['totals']}"
    except ValueError:
        verdict = f"exit {proc.returncode}: {err.decode()[-300:]}"
    return seconds, peak, verdict


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--skip", nargs="*", default=[], choices=["catchup", "replay", "audit"])
    parser.add_argument(
        "--replicas", type=int, default=1, help="replicas sharing the end-to-end run"
    )
    parser.add_argument(
        "--day",
        action="store_true",
        help=f"add the 'day of SNDS' row: a backlog of {DAY_RECORDS:,} records replicated end "
        "to end by a new group (tops the workload up; adds a few minutes)",
    )
    parser.add_argument(
        "--live-rate",
        type=float,
        default=20_000,
        help="records/s produced while the stopped store catches up",
    )
    parser.add_argument(
        "--no-copy",
        action="store_true",
        help="catch up from Kafka only (REPLICATOR_CATCHUP_COPY=false), for comparison",
    )
    parser.add_argument(
        "--decode-workers",
        type=int,
        default=None,
        help="REPLICATOR_DECODE_WORKERS for the runs (default: the service's own default)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the stack's folder (data, logs) after a run"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a service setting for every run, as in REPLICATOR_<NAME> (e.g. chunk_max_records="
        "10000); repeatable; printed under the table",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="another checkout (e.g. `git worktree add DIR <commit>`) whose service runs the "
        "end-to-end row too, just before this one's, on the same workload: printed as 'before'",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="end-to-end runs of each service (the last one is the table's 'end to end'); "
        "with --baseline-src, before and after take turns",
    )
    args = parser.parse_args()
    variants: list[tuple[str, Path | None]] = [("after", None)]
    if args.baseline_src is not None:
        variants.insert(0, ("before", args.baseline_src.resolve()))

    overrides = parse_overrides(parser, args.set)
    rows: list[Row] = []
    day_raw: tuple[float, float] | None = None  # (best, worst) raw rate over the day backlog
    # The stack's folder holds about 1 GB for a million records: deleted after a good run.
    with bench_stack("bench", args.partitions, args.keep) as bench:
        stack, root = bench.stack, bench.root
        base = bench.settings
        if args.decode_workers is not None:
            base = base.model_copy(update={"decode_workers": args.decode_workers})
        if overrides:
            base = base.model_copy(update=overrides)
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
        sizes: list[int] = []
        raw_consume(base, ends, sizes)  # also warms the broker's caches before the timed passes
        value_mb = sum(sizes) / 1e6  # the Kafka values of the workload, header included

        # The ceiling: three passes, each printed; ratios are given to the best and to the
        # median (one slow pass in three is common on these machines).
        passes = [raw_consume(base, ends) for _ in range(3)]
        for i, seconds in enumerate(passes, 1):
            print(f"raw consume pass {i}: {total / seconds:,.0f} records/s", flush=True)
        raw_s = min(passes)
        raw_median_s = statistics.median(passes)
        rows.append(Row("raw consume, best of 3 (ceiling)", raw_s, total, value_mb))
        rows.append(Row("raw consume, median of 3", raw_median_s, total, value_mb))
        raw_rate = total / raw_s
        raw_median = total / raw_median_s

        log_dir = root / "logs"
        log_dir.mkdir()

        # End to end into both stores.
        settings = base.model_copy(
            update={"group_id": "bench-e2e", "s3_prefix": "e2e", "azure_prefix": "e2e"}
        )
        # With --baseline-src, the other checkout's service ("before") and this one take
        # turns, each round in new groups and prefixes: a change's before/after in one run.
        for round_ in range(1, args.rounds):
            for label, source in variants:
                tag = f"{label}-{round_}"
                rows.extend(
                    end_to_end(
                        settings.model_copy(
                            update={
                                "group_id": f"bench-{tag}",
                                "s3_prefix": tag,
                                "azure_prefix": tag,
                            }
                        ),
                        log_dir,
                        ends,
                        total,
                        value_mb,
                        args.replicas,
                        f"end to end ({label}, round {round_})",
                        source,
                    )
                )
        if args.baseline_src is not None:
            before = settings.model_copy(
                update={"group_id": "bench-before", "s3_prefix": "before", "azure_prefix": "before"}
            )
            rows.extend(
                end_to_end(
                    before,
                    log_dir,
                    ends,
                    total,
                    value_mb,
                    args.replicas,
                    "end to end (before)",
                    args.baseline_src.resolve(),
                )
            )
        rows.extend(
            end_to_end(settings, log_dir, ends, total, value_mb, args.replicas, "end to end")
        )
        stored = sum(
            o["Size"]
            for page in stack.s3.get_paginator("list_objects_v2").paginate(
                Bucket=bench.bucket, Prefix="e2e/"
            )
            for o in page.get("Contents", [])
        )

        if "audit" not in args.skip:
            # The audit of everything just replicated: Kafka, both stores and the
            # dead-letter topic read once, every offset accounted for, the manifest written.
            audit_s, audit_rss, audit_out = run_audit_cli(settings, root / "manifest.jsonl")
            rows.append(
                Row(
                    "audit (both stores vs Kafka)",
                    audit_s,
                    total,
                    value_mb,
                    audit_rss,
                    note=audit_out,
                )
            )
            print(
                f"audit: {total / audit_s:,.0f} records/s, peak RSS {audit_rss:.0f} MiB", flush=True
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
            rss: list[float] = []
            service = Service(replay, log_dir, name="replay").start()
            replay_s = wait_groups(replay, [replay.progress_group("s3")], ends, service, rss)
            service.stop()
            rows.append(Row("replay into s3 (all present)", replay_s, total, value_mb, max(rss)))

        if "catchup" not in args.skip:
            # Catch-up with live records flowing: the Azure side is stopped while the service
            # replicates the first half of the workload into S3 alone; then it is restarted
            # while a producer adds `live` new records at a steady rate. Measured: the time
            # from the restart until Azure holds everything, and the rate that makes.
            settings = base.model_copy(
                update={
                    "group_id": "bench-cu",
                    "s3_prefix": "cu",
                    "azure_prefix": "cu",
                    **CATCHUP_SETTINGS,
                }
            )
            if args.no_copy:
                settings = settings.model_copy(update={"catchup_copy": False})
            rss = []
            stack.stop_service("azure")
            service = Service(settings, log_dir, name="catchup").start()
            half = {tp: end // 2 for tp, end in ends.items()}
            wait_groups(settings, [settings.progress_group("s3")], half, service, rss)
            # Live records flow at `live_rate` for the whole catch-up: from the restart until
            # the stopped store holds what it missed; then the producer stops, and the time
            # runs until the store also holds every live record. (A fixed number of live
            # records would make the producer's own duration the floor of the measure.)
            live_rate = args.live_rate
            produced: list[ProduceReport] = []
            stop_live = threading.Event()
            producer = threading.Thread(
                target=lambda: produced.append(
                    produce(
                        base.kafka_common(),
                        list(DEMO_TOPICS),
                        None,
                        live_rate,
                        43,
                        0.001,
                        None,
                        SchemaRegistry.load(base.schemas_dir),
                        stop=stop_live,
                    )
                )
            )
            stack.start_service("azure")
            restarted = time.perf_counter()
            producer.start()
            reader = Progress(settings.kafka_bootstrap, settings.progress_group("azure"))
            behind = sum(
                end - max(reader.committed(list(ends)).get(tp, 0), 0) for tp, end in ends.items()
            )
            reader.close()
            try:
                wait_groups(settings, [settings.progress_group("azure")], ends, service, rss)
            finally:
                stop_live.set()
                producer.join()
            assert produced, "the live producer failed"
            final = dict(ends)
            for tp, end in produced[0].end_offsets.items():
                final[tp] = max(final.get(tp, 0), end)
            wait_groups(settings, [settings.progress_group("azure")], final, service, rss)
            cu_s = time.perf_counter() - restarted
            s3_current = wait_groups(settings, [settings.progress_group("s3")], final, service, rss)
            service.stop()
            copies = service.log_text().count('"catchup_copying"')
            rows.append(
                Row(
                    "catch-up of the stopped store, live flowing",
                    cu_s,
                    behind + produced[0].delivered,
                    value_mb * (behind + produced[0].delivered) / total,
                    max(rss),
                    note=f"{behind:,} behind at restart + {produced[0].delivered:,} live at "
                    f"{live_rate:,.0f}/s; s3 current {s3_current:.1f} s later; "
                    f"copied from s3 in {copies} partition(s)",
                )
            )
        if args.day:
            more = DAY_RECORDS - total
            print(f"day of SNDS: producing {more:,} more records", flush=True)
            day_report = produce(
                base.kafka_common(),
                list(DEMO_TOPICS),
                more,
                None,
                44,
                0.001,
                None,
                SchemaRegistry.load(base.schemas_dir),
            )
            day_ends = dict(ends)
            for tp, end in day_report.end_offsets.items():
                day_ends[tp] = max(day_ends.get(tp, 0), end)
            day_total = total + day_report.delivered
            day_passes = [raw_consume(base, day_ends) for _ in range(2)]
            for i, seconds in enumerate(day_passes, 1):
                print(
                    f"raw consume, whole day backlog, pass {i}: {day_total / seconds:,.0f} "
                    "records/s",
                    flush=True,
                )
            day_raw = (day_total / min(day_passes), day_total / max(day_passes))
            settings = base.model_copy(
                update={"group_id": "bench-day", "s3_prefix": "day", "azure_prefix": "day"}
            )
            day_rows: list[Row] = []
            for label, source in variants:
                # with --baseline-src, the other checkout's service first ("before"), each
                # in groups and prefixes of its own
                tag = "day" if source is None else f"day-{label}"
                day_rows += end_to_end(
                    settings.model_copy(
                        update={"group_id": f"bench-{tag}", "s3_prefix": tag, "azure_prefix": tag}
                    ),
                    log_dir,
                    day_ends,
                    day_total,
                    value_mb * day_total / total,
                    1,
                    f"day of SNDS ({day_total / 1e6:.0f} M)"
                    + (f" ({label})" if args.baseline_src is not None else ""),
                    source,
                )
            for row in day_rows:
                row.day = True
            rows.append(
                Row(
                    f"raw consume, day backlog, best of {len(day_passes)}",
                    min(day_passes),
                    day_total,
                    value_mb * day_total / total,
                    day=True,
                )
            )
            rows.extend(day_rows)

    print()
    print(
        f"workload: {total:,} records ({args.partitions} partitions x {len(DEMO_TOPICS)} topics), "
        f"{value_mb:.1f} MB of values, {stored / 1e6:.1f} MB stored per store; "
        f"machine: {os.cpu_count()} cores"
    )
    print(
        "raw passes: "
        + ", ".join(f"{total / seconds:,.0f}" for seconds in passes)
        + f" records/s (best {raw_rate:,.0f}, median {raw_median:,.0f})"
    )
    bound = memory_bound_mib(base, 2 * args.partitions)
    print(
        f"{'measure':<44} {'seconds':>8} {'records/s':>11} {'MB/s':>7} {'x best':>7} "
        f"{'x median':>8} {'peak RSS / bound':>20} {'CPU/rec':>8}"
    )
    for row in rows:
        rate = row.records / row.seconds
        rss_text = (
            f"{row.peak_rss_mib:.0f} / {bound:.0f} MiB {'ok' if row.peak_rss_mib <= bound else 'OVER'}"
            if row.peak_rss_mib
            else ""
        )
        cpu_text = f"{row.cpu_s / row.records * 1e6:.1f} us" if row.cpu_s else ""
        print(
            f"{row.name:<44} {row.seconds:8.2f} {rate:11,.0f} {row.megabytes / row.seconds:7.1f} "
            f"{rate / raw_rate:7.3f} {rate / raw_median:8.3f} {rss_text:>20} {cpu_text:>8}  "
            f"{row.note}"
        )
    if day_raw is not None:
        # The day rows against raw passes over the same 5,000,000 records (the columns above
        # compare them with the first million's passes).
        print(
            f"day of SNDS against the raw passes over the whole day backlog (best "
            f"{day_raw[0]:,.0f}, slower {day_raw[1]:,.0f} records/s):"
        )
        for row in rows:
            if row.day and not row.name.startswith("raw"):
                rate = row.records / row.seconds
                print(
                    f"  {row.name:<42} x day best {rate / day_raw[0]:6.3f}   "
                    f"x day slower {rate / day_raw[1]:6.3f}"
                )
    print("MB/s: megabytes of Kafka values (as produced, 5-byte header included) per second")
    print(
        "CPU/rec: CPU seconds of the service and its decode workers per record (all cores), "
        "the figure that moves least on a noisy machine"
    )
    print(
        f"memory bound (docs/performance.md, {2 * args.partitions} partitions, these settings): "
        f"{bound:.0f} MiB; "
        + (
            "every row under it"
            if all(r.peak_rss_mib is None or r.peak_rss_mib <= bound for r in rows)
            else "ABOVE IT in: "
            + ", ".join(r.name for r in rows if r.peak_rss_mib and r.peak_rss_mib > bound)
        )
    )
    changed: dict[str, tuple[object, str]] = {
        name: (value, "catch-up row only: the stopped store is seen down and back within a second")
        for name, value in CATCHUP_SETTINGS.items()
    }
    print_changed_settings(changed)
    if args.decode_workers is not None:
        print(f"  decode_workers={args.decode_workers}: --decode-workers")
    for name, value in overrides.items():
        print(f"  {name}={value}: --set")


if __name__ == "__main__":
    main()
