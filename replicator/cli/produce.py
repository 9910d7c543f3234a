"""`replicator produce`: write synthetic SNDS change events (and bad records) to Kafka.

Mounted by the main CLI with ``app.command("produce")(produce_command)``; runnable alone
as ``python -m replicator.cli.produce``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from replicator.cli.common import JsonOpt, OutputOpt, check_output, emit_report
from replicator.cli.progress import CliProgress
from replicator.config import DEFAULT_SCHEMAS_DIR, load_client_properties
from replicator.devtools.produce import ProduceError, ProduceReport, produce
from replicator.devtools.synthetic import BAD_KINDS
from replicator.errors import ConfigError
from replicator.ops.findings import report_json
from replicator.schemas import PRESCRIPTIONS_TOPIC, REIMBURSEMENTS_TOPIC, SchemaRegistry

app = typer.Typer(add_completion=False)


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


@app.command()
def produce_command(
    bootstrap: Annotated[
        str,
        typer.Option(
            "--bootstrap",
            envvar="REPLICATOR_KAFKA_BOOTSTRAP",
            help="Kafka bootstrap servers, host:port[,host:port] (plaintext; the client "
            "properties REPLICATOR_KAFKA_PROPERTY_* and REPLICATOR_KAFKA_PROPERTIES_FILE apply).",
        ),
    ],
    count: Annotated[
        int, typer.Option("--count", min=0, help="Records to produce; 0: until Ctrl-C.")
    ] = 1000,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate", min=0.001, help="Records per second (default: as fast as possible)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic data.")] = 0,
    bad_share: Annotated[
        float,
        typer.Option("--bad-share", min=0.0, max=1.0, help="Share of bad records, 0 to 1."),
    ] = 0.0,
    bad_kinds: Annotated[
        str | None,
        typer.Option(
            "--bad-kinds", help=f"Comma-separated bad kinds (default all: {','.join(BAD_KINDS)})."
        ),
    ] = None,
    topics: Annotated[
        str, typer.Option("--topics", help="Comma-separated topics to produce to.")
    ] = f"{REIMBURSEMENTS_TOPIC},{PRESCRIPTIONS_TOPIC}",
    partitions: Annotated[
        int, typer.Option("--partitions", min=1, help="Partitions of topics created if missing.")
    ] = 3,
    v2_share: Annotated[
        float,
        typer.Option("--v2-share", min=0.0, max=1.0, help="Share of records in schema version 2."),
    ] = 0.3,
    start_time: Annotated[
        str | None,
        typer.Option("--start-time", help="ISO time of the first event (default: now; UTC)."),
    ] = None,
    schemas_dir: Annotated[
        Path, typer.Option("--schemas-dir", envvar="REPLICATOR_SCHEMAS_DIR")
    ] = DEFAULT_SCHEMAS_DIR,
    connect_timeout: Annotated[
        float, typer.Option("--connect-timeout", min=0.1, help="Seconds to reach the broker.")
    ] = 10.0,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Produce synthetic reimbursement and prescription change events to Kafka. Exit 0
    delivered, 1 not every record delivered or the broker unreachable, 2 bad arguments."""
    check_output(output)
    try:
        conf = load_client_properties(bootstrap)
        registry = SchemaRegistry.load(schemas_dir)
        start = _parse_time(start_time) if start_time else None
        with CliProgress("produce", "records delivered") as progress:
            report = produce(
                conf,
                _csv(topics) or [],
                count or None,
                rate,
                seed,
                bad_share,
                _csv(bad_kinds),
                registry,
                progress.set_done,
                start_time=start,
                v2_share=v2_share,
                create_partitions=partitions,
                connect_timeout_s=connect_timeout,
            )
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ProduceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    emit_report(summary(report, bootstrap), report_json(report.to_json()), as_json, output)
    if report.failed:
        raise typer.Exit(1)


def _parse_time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--start-time {text!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def summary(report: ProduceReport, bootstrap: str) -> str:
    """A short human summary of a produce run."""
    per_second = report.delivered / report.elapsed_s if report.elapsed_s > 0 else 0.0
    lines = [
        f"delivered {report.delivered} records to {bootstrap} in {report.elapsed_s:.2f} s "
        f"({per_second:,.0f}/s)" + (" (interrupted)" if report.interrupted else ""),
        "  per topic: " + ", ".join(f"{t} {n}" for t, n in report.per_topic.items()),
        f"  good: {report.good} ("
        + ", ".join(f"schema {i}: {n}" for i, n in sorted(report.good_per_schema.items()))
        + ")",
    ]
    if report.bad_per_kind:
        lines.append(
            f"  bad: {report.bad} ("
            + ", ".join(f"{k}: {n}" for k, n in sorted(report.bad_per_kind.items()))
            + ")"
        )
    if report.failed:
        lines.append(f"  FAILED: {report.failed} records, first error: {report.first_error}")
    return "\n".join(lines)


if __name__ == "__main__":
    app()
