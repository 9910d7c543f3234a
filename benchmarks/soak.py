"""Soak: sustained load with periodic faults, the service's RSS sampled and printed.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--rate 2000] [--fault-every 60]

Starts a private local stack (free ports, temporary folder), runs `replicator run` as a real
process, produces `--rate` records/s without pause, and every `--fault-every` seconds injects
the next fault of a cycle: a store slowed (300 ms a request), a store answering 503 to 30 % of
requests, a store dropping 20 % of its connections (all three through the fault proxy of
tests/support/faultproxy.py, S3 and Azure in turn), a store stopped then restarted, and a
kill -9 of the service (restarted at once). Each fault lasts a third of the period.

Every `--sample` seconds it prints the service's RSS (MiB, summed over restarts: the current
process), and at the end: RSS after warm-up (first 20 % of the run, and after each restart the
first 30 s are skipped), its first and last quartile medians and the slope in MiB per hour,
then the independent checker's lost / doubled / divergent counts and the product's audit
against Kafka (`replicator audit`, which must be clean), how long the check took and
this process's peak RSS during it. The check streams: Kafka is read into an 8-byte digest per
record (with its offset: 16 bytes a record, plus 2 bytes of flags), the stores one object at a
time, so a 30-minute run (millions of records) is checked in tens of MiB, not gigabytes. Exit 1
if any count is non-zero or if RSS grew by more than --max-growth-mib between the two quartiles.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replicator.config import Settings
from replicator.devtools.stack import DEMO_TOPICS, LocalStack, StackPorts
from replicator.ops.audit import AuditOptions, run_audit
from replicator.ops.context import OpsContext
from tests.support.checker import (
    StreamingCheck,
    digest_topics,
    divergent,
    iter_azure_objects,
    iter_s3_objects,
)
from tests.support.faultproxy import FaultProxy, Mode
from tests.support.produce import Produced, produce_records
from tests.support.service import Service, wait_committed

PARTITIONS = 3
BUCKET, CONTAINER = "soak-s3", "soak-azure"


class PeakRss:
    """This process's RSS before a block and its highest value during it (sampled)."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.every_s = every_s
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, me.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.start = self.peak = psutil.Process().memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, psutil.Process().memory_info().rss)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=2000, help="records per second")
    parser.add_argument("--fault-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--sample", type=float, default=10.0, help="RSS sample period, seconds")
    parser.add_argument("--max-growth-mib", type=float, default=30.0)
    parser.add_argument(
        "--keep", action="store_true", help="keep the stack's folder (data, logs) after a run"
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="replicator-soak-"))
    stack = LocalStack(
        root=root,
        ports=StackPorts.free(),
        topics=list(DEMO_TOPICS),
        dead_letter_topic="snds.dead-letter",
        bucket=BUCKET,
        container=CONTAINER,
        partitions=PARTITIONS,
    )
    print(f"starting a private stack in {root}", flush=True)
    stack.up()
    s3p = FaultProxy(stack.port("s3"), seed=1).start()
    azp = FaultProxy(stack.port("azure"), seed=2).start()
    service: Service | None = None
    failed = True  # until the final check says otherwise
    try:
        env = stack.env()
        conn = env["azure_connection_string"].replace(
            f"127.0.0.1:{stack.port('azure')}/", f"127.0.0.1:{azp.port}/"
        )
        settings = Settings(
            kafka_bootstrap=env["kafka_bootstrap"],
            topics=list(DEMO_TOPICS),
            dead_letter_topic="snds.dead-letter",
            s3_endpoint=s3p.url,
            s3_bucket=BUCKET,
            s3_access_key=SecretStr(env["s3_access_key"]),
            s3_secret_key=SecretStr(env["s3_secret_key"]),
            azure_connection_string=SecretStr(conn),
            azure_container=CONTAINER,
            session_timeout_ms=6000,
            metrics_port=0,
            log_level="WARNING",
            chunk_max_records=2000,
            flush_interval_s=2.0,
            write_retry_s=5.0,
            health_interval_s=2.0,
        )
        service = Service(settings, root, name="soak").start()
        produced = Produced.empty()
        lock = threading.Lock()
        stop = threading.Event()

        def load() -> None:
            nonlocal produced
            n = 0
            while not stop.is_set():
                started = time.monotonic()
                got = produce_records(settings, args.rate, 0.001, n)
                with lock:
                    produced = produced.merge(got)
                n += 1
                stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

        producer = threading.Thread(target=load, daemon=True)
        producer.start()

        began = time.monotonic()
        end = began + args.minutes * 60
        samples: list[tuple[float, float]] = []  # (seconds since start, RSS MiB)
        restarted_at = began
        next_sample = began
        next_fault = began + args.fault_every
        fault_end: float | None = None
        active: str | None = None
        cycle = 0
        faults = ["slow", "http503", "drop", "stop", "kill9"]
        print(f"{'t (s)':>7} {'RSS MiB':>8} {'records':>9}  fault", flush=True)
        while time.monotonic() < end:
            now = time.monotonic()
            if fault_end is not None and now >= fault_end:
                s3p.set(Mode.PASS)
                azp.set(Mode.PASS)
                if active and active.startswith("stop:"):
                    stack.start_service(active.split(":")[1])
                active, fault_end = None, None
            if now >= next_fault:
                kind = faults[cycle % len(faults)]
                store = ("s3", "azure")[(cycle // len(faults)) % 2]
                proxy = s3p if store == "s3" else azp
                if kind == "slow":
                    proxy.set(Mode.DELAY, delay_ms=300)
                elif kind == "http503":
                    proxy.set(Mode.ERROR, share=0.3, status=503)
                elif kind == "drop":
                    proxy.set(Mode.DROP, share=0.2)
                elif kind == "stop":
                    stack.stop_service(store)
                    kind = f"stop:{store}"
                else:
                    service.kill9()
                    service.start()
                    restarted_at = time.monotonic()
                active = kind if kind.startswith("stop:") or kind == "kill9" else f"{kind}:{store}"
                fault_end = now + args.fault_every / 3
                next_fault = now + args.fault_every
                cycle += 1
            if now >= next_sample:
                next_sample = now + args.sample
                assert service.proc is not None
                try:
                    rss = psutil.Process(service.proc.pid).memory_info().rss / 2**20
                except psutil.NoSuchProcess:
                    rss = float("nan")
                t = now - began
                warm = t > 0.2 * args.minutes * 60 and now - restarted_at > 30
                if warm:
                    samples.append((t, rss))
                with lock:
                    total = produced.total
                print(
                    f"{t:7.0f} {rss:8.1f} {total:9d}  {active or '-'}{'' if warm else ' (warm-up)'}",
                    flush=True,
                )
            if not service.alive():
                print("the service died; restarting it", flush=True)
                service.start()
                restarted_at = time.monotonic()
            time.sleep(0.2)
        stop.set()
        producer.join(timeout=30)
        s3p.set(Mode.PASS)
        azp.set(Mode.PASS)
        if active and active.startswith("stop:"):
            stack.start_service(active.split(":")[1])
        print("load stopped; waiting for both stores to catch up", flush=True)
        wait_committed(
            settings.kafka_bootstrap,
            [settings.progress_group(s) for s in settings.stores],
            produced.ends,
            600,
            [service],
        )
        code = service.stop()
        service = None

        # RSS after warm-up
        growth = 0.0
        if len(samples) >= 8:
            q = len(samples) // 4
            first = statistics.median(r for _, r in samples[:q])
            last = statistics.median(r for _, r in samples[-q:])
            growth = last - first
            hours = (samples[-1][0] - samples[0][0]) / 3600
            slope = growth / hours if hours > 0 else 0.0
            print(
                f"RSS after warm-up: {len(samples)} samples, min {min(r for _, r in samples):.1f}"
                f" max {max(r for _, r in samples):.1f} MiB; first-quarter median {first:.1f},"
                f" last-quarter median {last:.1f} MiB; growth {growth:+.1f} MiB"
                f" ({slope:+.1f} MiB/h)",
                flush=True,
            )
        else:
            print(f"RSS: only {len(samples)} samples after warm-up (run longer)", flush=True)

        # The independent check, streamed: Kafka as one 8-byte digest a record, the stores
        # one object at a time (a 30-minute run holds millions of records).
        env = stack.env()
        peak = PeakRss()
        with peak:
            started_check = time.monotonic()
            check = StreamingCheck(
                digest_topics(
                    settings.kafka_bootstrap,
                    settings.topics,
                    PARTITIONS,
                    produced.bad,
                    ends=produced.ends,
                )
            )
            s3 = check.store(iter_s3_objects(env, BUCKET))
            az = check.store(iter_azure_objects(env, CONTAINER))
            lost = check.lost()
            doubled = s3.doubled + az.doubled
            differ = divergent(s3.md5, az.md5)
        print(
            f"records {produced.total}, objects {s3.objects}: lost {lost}, doubled {doubled}, "
            f"divergent {differ}; faults injected {cycle}; service exit code {code}",
            flush=True,
        )
        print(
            f"check: {time.monotonic() - started_check:.0f} s; soak process RSS"
            f" {peak.start / 2**20:.0f} MiB before it, peak {peak.peak / 2**20:.0f} MiB during it",
            flush=True,
        )
        # The final check against the source, record by record: the product's audit.
        started_audit = time.monotonic()
        with OpsContext.open(settings, "audit") as ctx:
            audit = run_audit(ctx, AuditOptions(concurrency=2))
        print(f"audit ({time.monotonic() - started_audit:.0f} s): " + audit.summary(), flush=True)
        failed = bool(
            lost or doubled or differ or growth > args.max_growth_mib or audit.exit_code != 0
        )
        return 1 if failed else 0
    finally:
        if service is not None and service.alive():
            service.stop()
        s3p.close()
        azp.close()
        stack.down()
        if failed or args.keep:
            print(f"kept {root} (servers' data and the service's log)", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)  # gigabytes after a 30-minute run


if __name__ == "__main__":
    sys.exit(main())
