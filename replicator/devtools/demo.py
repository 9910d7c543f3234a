"""`replicator demo`: the whole product in a few minutes, against the local stack.

Starts the stack (Kafka, S3 and Azure servers on loopback), produces synthetic SNDS change
events with a share of bad ones, runs the service until both stores hold everything, then
reads both stores back and prints what landed where.
"""

from __future__ import annotations

import io
import logging
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, TopicPartition
from pydantic import SecretStr

from replicator.config import Settings
from replicator.devtools.produce import produce
from replicator.devtools.stack import LocalStack
from replicator.errors import ReplicatorError
from replicator.kafka.deadletter import H_REASON
from replicator.logs import setup_logging
from replicator.ops.audit import AuditOptions, run_audit
from replicator.ops.context import OpsContext
from replicator.pipeline.service import Replicator
from replicator.schemas import SchemaRegistry
from replicator.stores.base import Store
from replicator.stores.factory import build_stores
from replicator.telemetry.metrics import Metrics


def say(text: str) -> None:
    print(text, flush=True)


def _settings(stack: LocalStack, run_id: str) -> Settings:
    """Each demo run replicates into a prefix and a group of its own: the local broker keeps
    topics in memory only, so after a stack restart offsets start again at 0, and earlier
    runs' objects must not be mistaken for this run's."""
    env = stack.env()
    group = f"replicator-demo-{run_id}"
    return Settings(
        kafka_bootstrap=env["kafka_bootstrap"],
        topics=env["topics"].split(","),
        dead_letter_topic=env["dead_letter_topic"],
        group_id=group,
        s3_endpoint=env["s3_endpoint"],
        s3_bucket=env["s3_bucket"],
        s3_access_key=SecretStr(env["s3_access_key"]),
        s3_secret_key=SecretStr(env["s3_secret_key"]),
        azure_connection_string=SecretStr(env["azure_connection_string"]),
        azure_container=env["azure_container"],
        s3_prefix=f"demo-{run_id}",
        azure_prefix=f"demo-{run_id}",
        session_timeout_ms=6000,
        flush_interval_s=2.0,
        metrics_port=0,
        log_format="human",
        log_level="WARNING",
    )


def _store_summary(store: Store) -> tuple[int, int, int, dict[str, str]]:
    """(objects, bytes, records, key -> md5) read back from a store."""
    objects = size = records = 0
    md5s: dict[str, str] = {}
    for info in store.list(""):
        if info.key.startswith(("_check/", "_audit/", "_cutover/")):
            continue
        objects += 1
        size += info.size
        md5s[info.key] = info.md5_hex or ""
        reader = fastavro.reader(io.BytesIO(store.read(info.key)))
        records += sum(1 for _ in reader)
    return objects, size, records, md5s


def _dead_letters(settings: Settings, since: dict[int, int]) -> Counter[str]:
    consumer = Consumer(
        {
            **settings.kafka_common(),
            "group.id": "replicator-demo-reader",
            "enable.auto.commit": False,
        }
    )
    meta = consumer.list_topics(settings.dead_letter_topic, timeout=10)
    parts = list(meta.topics[settings.dead_letter_topic].partitions)
    consumer.assign([TopicPartition(settings.dead_letter_topic, p, since.get(p, 0)) for p in parts])
    reasons: Counter[str] = Counter()
    idle = time.monotonic()
    while time.monotonic() - idle < 2.0:
        for msg in consumer.consume(500, timeout=0.2):
            if msg.error() is not None:
                continue
            idle = time.monotonic()
            headers = dict(msg.headers() or [])
            reason = headers.get(H_REASON) or b"?"
            reasons[reason.decode() if isinstance(reason, bytes) else reason] += 1
    consumer.close()
    return reasons


def _dlq_positions(settings: Settings) -> dict[int, int]:
    """Where the dead-letter topic ends now (read, not the watermark: the local
    Tansu broker's high watermark stops at the last batch's base offset + 1)."""
    consumer = Consumer(
        {
            **settings.kafka_common(),
            "group.id": "replicator-demo-reader",
            "enable.auto.commit": False,
        }
    )
    meta = consumer.list_topics(settings.dead_letter_topic, timeout=10)
    parts = list(meta.topics[settings.dead_letter_topic].partitions)
    consumer.assign([TopicPartition(settings.dead_letter_topic, p, 0) for p in parts])
    ends: dict[int, int] = {}
    idle = time.monotonic()
    while time.monotonic() - idle < 1.5:
        for msg in consumer.consume(1000, timeout=0.2):
            partition, offset = msg.partition(), msg.offset()
            if msg.error() is None and partition is not None and offset is not None:
                idle = time.monotonic()
                ends[partition] = offset + 1
    consumer.close()
    return ends


def run_demo(count: int, bad_share: float, root: Path) -> None:
    # Each bad record is logged as a warning: the summary below counts them instead.
    setup_logging("ERROR", "human")
    say(
        f"1/5 starting a fresh local stack in {root}/ (Kafka: Tansu, S3: SeaweedFS, Azure: Azurite)"
    )
    # Fresh every time: the local broker keeps topics in memory only, so stores kept from an
    # earlier stack would hold other records under the same offsets.
    LocalStack.demo(root=root).down()
    shutil.rmtree(root, ignore_errors=True)
    stack = LocalStack.demo(root=root)
    stack.up()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    settings = _settings(stack, run_id)
    registry = SchemaRegistry.load(settings.schemas_dir)
    dlq_before = _dlq_positions(settings)

    say(
        f"2/5 producing {count:,} synthetic records over {', '.join(settings.topics)} "
        f"({bad_share:.0%} bad, of every kind)"
    )
    report = produce(
        settings.kafka_common(),
        settings.topics,
        count,
        None,
        int(time.time()),
        bad_share,
        None,
        registry,
    )
    if report.failed:
        raise ReplicatorError(f"{report.failed} records were not delivered: {report.first_error}")
    say(f"    {report.good:,} good and {report.bad:,} bad records in {report.elapsed_s:.1f} s")

    say("3/5 replicating into both stores until both hold everything")
    service = Replicator(settings, build_stores(settings), registry, Metrics())
    ends = report.end_offsets
    started = time.monotonic()
    stop_progress = threading.Event()

    def progress() -> None:
        while not stop_progress.wait(1.0):
            behind = {
                lane.name: sum(max(end - lane.committed.get(tp, 0), 0) for tp, end in ends.items())
                for lane in service.lanes
            }
            line = ", ".join(f"{name}: {n:,} offsets to go" for name, n in behind.items())
            print(
                f"\r    {time.monotonic() - started:5.1f} s  {line}   ",
                end="",
                file=sys.stdout,
                flush=True,
            )

    thread = threading.Thread(target=progress, daemon=True)
    thread.start()
    timeout = 600.0
    reached = threading.Event()  # read before run() returns: revoking clears the positions

    def until(s: Replicator) -> bool:
        if s.caught_up(ends):
            reached.set()
        return reached.is_set() or time.monotonic() - started > timeout

    service.run(until=until)
    stop_progress.set()
    thread.join()
    elapsed = time.monotonic() - started
    print()
    if not reached.is_set():
        raise ReplicatorError(f"not caught up after {timeout:.0f} s; see the logs above")
    rate = sum(ends.values()) / elapsed if elapsed else 0.0
    say(
        f"    caught up in {elapsed:.1f} s, joining the consumer group included ({rate:,.0f} records/s)"
    )

    say(f"4/5 reading both stores back (prefix demo-{run_id}/)")
    summaries = {}
    for store in build_stores(settings):
        summaries[store.name] = _store_summary(store)
        store.close()
    width = max(len(n) for n in summaries)
    for name, (objects, size, records, _) in summaries.items():
        say(
            f"    {name:<{width}}  {objects:6,} objects  {size / 1e6:8.2f} MB  {records:9,} records"
        )
    key_sets = [md5 for (_, _, _, md5) in summaries.values()]
    identical = all(k == key_sets[0] for k in key_sets)
    say(f"    same keys and MD5 in both stores: {'yes' if identical else 'NO'}")
    reasons = _dead_letters(settings, dlq_before)
    say(
        f"    dead-letter topic {settings.dead_letter_topic}: {sum(reasons.values()):,} records this run"
    )
    for reason, n in sorted(reasons.items()):
        say(f"      {reason:<20} {n:6,}")
    say("5/5 auditing every offset against Kafka, record by record (replicator audit)")
    with OpsContext.open(settings, "audit") as ctx:
        audit = run_audit(ctx, AuditOptions())
    for line in audit.summary().splitlines():
        say(f"    {line}")
    say("")
    say(
        "The stack keeps running: `.venv/bin/replicator stack env` prints its settings, "
        "`.venv/bin/replicator stack down` stops it."
    )
    if not identical:
        raise ReplicatorError("the two stores differ")
    if audit.exit_code != 0:
        raise ReplicatorError(f"the audit did not account for every offset ({audit.status})")
    logging.shutdown()
