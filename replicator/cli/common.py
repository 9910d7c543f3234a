"""What every command shares: one error line and an exit code, and the settings loaded once."""

from __future__ import annotations

import typer

from replicator.config import Settings, load_settings, unknown_settings
from replicator.errors import ConfigError


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one `error: ...` line on stderr; raise the returned Exit with `code`."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def load_or_exit() -> Settings:
    """The settings, or exit 2 with one line naming the bad variable (no traceback). Each
    REPLICATOR_* name that is no setting gets a `warning: ...` line first."""
    for warning in unknown_settings():
        typer.echo(f"warning: {warning}", err=True)
    try:
        return load_settings()
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
