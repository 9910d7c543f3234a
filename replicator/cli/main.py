"""The command line: a thin layer over the service and its tools.

Every command turns an expected failure (bad setting, unreachable server) into one readable
line on stderr and a non-zero exit code: 2 for a bad setting, 1 for anything else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from replicator import __version__
from replicator.app import run_service
from replicator.cli.common import fail, load_or_exit
from replicator.cli.ops import (
    audit_command,
    cutover_command,
    rclone_check_command,
    redrive_command,
    replay_command,
    status_command,
    verify_command,
)
from replicator.cli.produce import produce_command
from replicator.cli.stack import app as stack_app
from replicator.devtools.demo import run_demo
from replicator.errors import ConfigError, ReplicatorError
from replicator.logs import setup_logging
from replicator.ops.check import run_checks

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
app.command("status", short_help="Where each store stands per partition (works while down).")(
    status_command
)
app.command("verify", short_help="Prove both stores hold the same data (exit 0/1/3).")(
    verify_command
)
app.command(
    "audit", short_help="Account for every source offset against Kafka, with a manifest (0/1/3)."
)(audit_command)
app.command("replay", short_help="Drive an offset or time range into the stores again.")(
    replay_command
)
app.command(
    "redrive", short_help="Produce selected dead letters again to their origin topic (0/1/3)."
)(redrive_command)
app.command("cutover", short_help="Retire a store once verify passes; or roll back.")(
    cutover_command
)
app.command("rclone-check", short_help="Compare both stores with rclone (sizes and MD5s).")(
    rclone_check_command
)


@app.command()
def run() -> None:
    """Run the service: consume, validate, and write every record to every store."""
    settings = load_or_exit()
    setup_logging(settings.log_level, settings.log_format)
    try:
        run_service(settings)
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
