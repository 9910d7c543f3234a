"""`replicator stack ...`: start, stop and inspect the local stack (see replicator/devtools/stack.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from replicator.devtools.stack import DEFAULT_ROOT, SERVICES, LocalStack, StackPorts
from replicator.errors import ReplicatorError

app = typer.Typer(
    help="The local stack on 127.0.0.1: Kafka (Tansu), S3 (SeaweedFS) and Azure Blob "
    "(Azurite), as detached processes with pid files and logs under --root.",
    no_args_is_help=True,
    add_completion=False,
)

RootOption = Annotated[
    Path,
    typer.Option(
        "--root",
        help="Folder of the stack's pid files, logs, data and stack.json.",
        file_okay=False,
    ),
]


def _fail(exc: BaseException) -> typer.Exit:
    message = " ".join(str(exc).split()) or type(exc).__name__
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _existing(root: Path) -> LocalStack:
    return LocalStack.from_root(root)


def _status_lines(status: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for service in SERVICES:
        entry = status[service]
        pid = f"pid {entry['pid']}" if entry["pid"] else "not running"
        state = "answering" if entry["answering"] else "NOT answering"
        lines.append(
            f"{entry['server']:<17} 127.0.0.1:{entry['port']:<6} {pid:<12} {state:<14} "
            f"log {entry['log']}"
        )
    return lines


@app.command()
def up(
    root: RootOption = DEFAULT_ROOT,
    free_ports: Annotated[
        bool,
        typer.Option(
            "--free-ports",
            help="For a new stack: pick free loopback ports instead of the usual ones "
            "(Kafka 9092, S3 8333, Azure 10000). A stack already set up in --root keeps its ports.",
        ),
    ] = False,
) -> None:
    """Start what is not running, wait until all three answer, create topics, bucket, container."""
    try:
        if LocalStack.read_state(root) is not None:
            stack = _existing(root)
        else:
            stack = LocalStack.demo(root, StackPorts.free() if free_ports else StackPorts.default())
        started = time.monotonic()
        try:
            stack.up()
            status = stack.status()
        finally:
            stack.close()
    except (ReplicatorError, OSError) as exc:
        raise _fail(exc) from None
    for line in _status_lines(status):
        typer.echo(line)
    typer.echo(
        f"stack up in {time.monotonic() - started:.1f}s (root {stack.root}); "
        f'settings for a shell: eval "$(replicator stack env --root {root})"'
    )


@app.command()
def down(root: RootOption = DEFAULT_ROOT) -> None:
    """Stop every server (SIGTERM, then SIGKILL); the data stays in --root."""
    try:
        if LocalStack.read_state(root) is None:
            typer.echo(f"no stack in {root.absolute()}: nothing to stop")
            return
        stack = _existing(root)
        stack.down()
    except (ReplicatorError, OSError) as exc:
        raise _fail(exc) from None
    typer.echo(f"stack in {stack.root} stopped")


@app.command()
def status(
    root: RootOption = DEFAULT_ROOT,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Each server's pid, port, log and whether it answers; exit code 1 unless all answer."""
    try:
        if LocalStack.read_state(root) is None:
            result: dict[str, dict[str, Any]] = {}
        else:
            stack = _existing(root)
            try:
                result = stack.status()
            finally:
                stack.close()
    except (ReplicatorError, OSError) as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
    elif not result:
        typer.echo(f"no stack in {root.absolute()}: start one with `replicator stack up`")
    else:
        for line in _status_lines(result):
            typer.echo(line)
    if not result or not all(entry["answering"] for entry in result.values()):
        raise typer.Exit(1)


@app.command()
def env(
    root: RootOption = DEFAULT_ROOT,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead.")] = False,
) -> None:
    """Print the settings for the stack: export lines (eval "$(replicator stack env)") or JSON."""
    try:
        stack = _existing(root)
    except (ReplicatorError, OSError) as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(stack.env(), sort_keys=True))
    else:
        typer.echo(stack.env_exports(), nl=False)


if __name__ == "__main__":  # pragma: no cover - `python -m replicator.cli.stack`
    app()
