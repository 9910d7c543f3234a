"""The command line: a thin layer over the service and its tools.

Every command turns an expected failure (bad setting, unreachable server) into one readable
line on stderr and a non-zero exit code: 2 for a bad setting, 1 for anything else.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from replicator import __version__
from replicator.cli.common import fail, load_or_exit
from replicator.cli.ops import (
    cutover_command,
    rclone_check_command,
    replay_command,
    verify_command,
)
from replicator.cli.produce import produce_command
from replicator.cli.stack import app as stack_app
from replicator.config import Settings
from replicator.errors import ConfigError, ReplicatorError, StoreError
from replicator.logs import fields, setup_logging

log = logging.getLogger("replicator")

app = typer.Typer(
    name="replicator",
    help="Replicate SNDS change events from Kafka into Azure Blob Storage and Scaleway Object "
    "Storage at once, and keep the two identical.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(
    stack_app, name="stack", help="Run the local stack (Kafka, S3, Azure) for demos and tests."
)
app.command("produce", help="Produce synthetic SNDS change events (optionally with bad ones).")(
    produce_command
)
app.command("verify", short_help="Prove both stores hold the same data (exit 0/1/3).")(
    verify_command
)
app.command("replay", short_help="Drive an offset or time range into the stores again.")(
    replay_command
)
app.command("cutover", short_help="Retire a store once verify passes; or roll back.")(
    cutover_command
)
app.command("rclone-check", short_help="Compare both stores with rclone (sizes and MD5s).")(
    rclone_check_command
)


def wait_for_broker(settings: Settings, stop_after: float | None = None) -> AdminClient:
    """Retry with backoff until the broker answers; report every attempt."""
    admin = AdminClient(settings.kafka_common())
    delay = 1.0
    started = time.monotonic()
    while True:
        try:
            metadata = admin.list_topics(timeout=5)
        except KafkaException as exc:
            if stop_after is not None and time.monotonic() - started > stop_after:
                raise ReplicatorError(
                    f"Kafka at {settings.kafka_bootstrap} did not answer: {exc.args[0]}"
                ) from None
            log.warning(
                "waiting_for_broker",
                extra=fields(
                    bootstrap=settings.kafka_bootstrap, retry_in_s=delay, error=str(exc.args[0])
                ),
            )
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
            continue
        missing = [
            t for t in [*settings.topics, settings.dead_letter_topic] if t not in metadata.topics
        ]
        if missing:
            raise ConfigError(
                "topic(s) not found on the broker: "
                + ", ".join(missing)
                + " (create them, or fix REPLICATOR_TOPICS / REPLICATOR_DEAD_LETTER_TOPIC)"
            )
        return admin


# Generation-0 threshold of the service's garbage collector (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Tune the cyclic garbage collector for a process that holds hundreds of thousands of
    records in flight: freeze what startup made (modules, schemas, clients: never garbage),
    and collect the young generation every 50,000 allocations instead of every 700. With
    the defaults, collections took about 10% of the main thread and full ones walked every
    record held in the chunkers (docs/performance.md). Almost nothing the loop makes is in a
    reference cycle, so reference counting frees it; the collector still runs, less often."""
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


@app.command()
def run() -> None:
    """Run the service: consume, validate, and write every record to every store."""
    settings = load_or_exit()
    setup_logging(settings.log_level, settings.log_format)
    from replicator.pipeline.service import Replicator
    from replicator.schemas import SchemaRegistry
    from replicator.telemetry.lag import LagMonitor
    from replicator.telemetry.metrics import Metrics
    from replicator.telemetry.server import start_http

    try:
        registry = SchemaRegistry.load(settings.schemas_dir)
        log.info("configuration", extra=fields(**settings.printable()))
        wait_for_broker(settings)
        from replicator.stores.factory import build_stores

        stores = build_stores(settings)
        # After a cutover the retired store is neither written nor watched (no lag alerts).
        from replicator.ops.cutover import retired_stores

        retired = retired_stores(stores)
        for store in [st for st in stores if st.name in retired]:
            log.warning("store_retired", extra=fields(store=store.name))
            store.close()
        if retired:
            stores = [st for st in stores if st.name not in retired]
            settings = settings.model_copy(
                update={"stores": [n for n in settings.stores if n not in retired]}
            )
        metrics = Metrics(stores=settings.stores, topics=settings.topics)
        service = Replicator(settings, stores, registry, metrics)
        service.install_signal_handlers()
        tune_gc()
        lag = LagMonitor(settings, metrics).start()  # its own thread and Kafka clients
        try:
            server = start_http(settings.metrics_host, settings.metrics_port, service, lag)
            try:
                service.run()
            finally:
                server.shutdown()
                server.server_close()
        finally:
            lag.stop()
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    except ReplicatorError as exc:
        raise fail(str(exc)) from None


@app.command()
def check() -> None:
    """Test connectivity and permissions to the broker and to every store; exit 1 naming
    what failed."""
    settings = load_or_exit()
    setup_logging("WARNING", "human")
    from replicator.ops.check import run_checks

    results = run_checks(settings)
    width = max(len(r.target) for r in results)
    for r in results:
        mark = "ok  " if r.ok else "FAIL"
        typer.echo(f"{mark} {r.target:<{width}}  {r.detail}")
    failed = [r.target for r in results if not r.ok]
    if failed:
        raise fail("check failed: " + ", ".join(failed))


@app.command("config")
def show_config(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object")] = False,
) -> None:
    """Print the effective configuration, secrets masked."""
    settings = load_or_exit()
    values = settings.printable()
    if as_json:
        typer.echo(json.dumps(values, default=str))
    else:
        for name, value in values.items():
            typer.echo(f"{name} = {value}")


@app.command()
def demo(
    count: Annotated[int, typer.Option(help="Records to produce over both topics")] = 20_000,
    bad_share: Annotated[float, typer.Option(help="Share of bad records")] = 0.01,
    root: Annotated[Path, typer.Option(help="Folder of the local stack")] = Path(".stack"),
) -> None:
    """Start the local stack, produce synthetic records (some bad), replicate them into both
    stores until caught up, and print what landed where."""
    from replicator.devtools.demo import run_demo

    try:
        run_demo(count=count, bad_share=bad_share, root=root)
    except ReplicatorError as exc:
        raise fail(str(exc)) from None


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


_ = (Any, StoreError)
