"""What every command shares: one error line and an exit code, the settings loaded once,
and the report of a long command (human summary, or JSON for scripts)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from replicator.config import Settings, load_settings, unknown_settings
from replicator.errors import ConfigError
from replicator.logs import register_secrets, secrets_of


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one `error: ...` line on stderr; raise the returned Exit with `code`."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def load_or_exit() -> Settings:
    """The settings, or exit 2 with one line naming the bad variable (no traceback). Each
    REPLICATOR_* name that is no setting gets a `warning: ...` line first. Their secret
    values are masked in every log line from here on."""
    for warning in unknown_settings():
        typer.echo(f"warning: {warning}", err=True)
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    register_secrets(secrets_of(settings) + settings.client_properties.secret_values())
    if settings.schema_registry_basic_auth is not None:  # 'user:password': the password alone too
        register_secrets([settings.schema_registry_basic_auth.get_secret_value().partition(":")[2]])
    return settings


JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the JSON report on standard output (the human summary goes to stderr)",
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        "--json-report",  # the older name, kept working
        help="Also write the JSON report to this file (--json-report is the older name)",
    ),
]


def check_output(output: Path | None) -> None:
    """Refuse, before any work, an --output whose folder does not exist (exit 2)."""
    if output is not None and not output.parent.is_dir():
        raise fail(f"--output {output}: folder {output.parent} does not exist", 2)


def emit_report(summary: str, data: bytes, as_json: bool, output: Path | None) -> None:
    """The end of every reporting command: the JSON report to `output` when given; on
    standard output either the JSON report (`--json`, byte for byte what the file holds) or
    the human summary (then on stderr, so that stdout parses as JSON)."""
    if output is not None:
        try:
            output.write_bytes(data)
        except OSError as exc:
            raise fail(f"--output {output}: {exc.strerror or exc}", 2) from None
    if as_json:
        if summary:
            typer.echo(summary, err=True)
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    elif summary:
        typer.echo(summary)
