"""The commands that prove and restore alignment: verify, replay, cutover, rclone-check.

Exit codes (see docs/runbook.md):
  verify:   0 aligned, 1 diverged, 3 could not check, 2 bad arguments or settings
            (with --records: 0 only when the stores are aligned and the audit is clean)
  audit:    0 every offset accounted for, 1 findings (missing, altered, doubled,
            unexpected), 3 could not audit (Kafka or a store unavailable, manifest not
            written), 2 bad arguments or settings
  replay:   0 done (written or already present), 1 conflicts or refused partitions,
            3 Kafka or a store unavailable, 2 bad arguments or settings
  cutover:  0 done (or rolled back), 1 refused: diverged, 3 could not check,
            4 refused: lag not 0 within the timeout, 5 refused: a cutover record or report
            already exists that this one cannot complete (another store retired, stores
            that differ), 2 bad arguments or settings
  redrive:  0 done (every selected dead letter re-driven, or none selected; with --dry-run:
            none that cannot be), 1 some selected dead letters cannot be re-driven (sent
            without their value, origin topic not replicated, refused by the origin topic),
            3 Kafka unavailable (what was committed stays: run again), 2 bad arguments or
            settings
  rclone-check: rclone's own (0: no difference), 2 bad settings
  status:   0 read (whatever the stores' states), 3 Kafka unavailable, 2 bad arguments or
            settings

Every reporting command takes `--json` (the JSON report on standard output, the human summary
on stderr) and `--output FILE` (the same bytes into FILE; `--json-report` is its older name).
Progress goes to stderr: a bar on a terminal, a line every few seconds otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from replicator.cli.common import (
    JsonOpt,
    OutputOpt,
    check_output,
    emit_report,
    fail,
    load_or_exit,
)
from replicator.cli.progress import CliProgress
from replicator.errors import ConfigError, ReplicatorError
from replicator.kafka.view import KafkaUnavailable
from replicator.logs import setup_logging
from replicator.ops.audit import AuditOptions, AuditReport, run_audit
from replicator.ops.context import OpsContext
from replicator.ops.cutover import run_cutover, run_rollback
from replicator.ops.findings import VerifyReport, report_json
from replicator.ops.rclone import rclone_check
from replicator.ops.redrive import DEFAULT_BATCH, RedriveOptions, run_redrive
from replicator.ops.redrive_logic import Selection
from replicator.ops.repair import run_repair
from replicator.ops.replay import RangeRequest, resolve_times, run_replay
from replicator.ops.status import DEFAULT_DEAD_LETTER_WINDOW, Thresholds, collect_status
from replicator.ops.verify import VerifyOptions, run_verify

TopicOpt = Annotated[list[str] | None, typer.Option("--topic", help="Only this topic (repeatable)")]
PartitionOpt = Annotated[
    list[int] | None, typer.Option("--partition", help="Only this partition (repeatable)")
]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(text: str, option: str) -> int:
    """ISO 8601 (e.g. 2026-11-26T10:00:00Z; no zone means UTC) -> milliseconds since the
    epoch."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise fail(
            f"{option}: {text!r} is not an ISO 8601 time (2026-11-26T10:00:00Z)", 2
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def verify_command(
    topic: TopicOpt = None,
    partition: PartitionOpt = None,
    since: Annotated[
        str | None, typer.Option(help="Only offsets from this record time (ISO 8601, UTC)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only offsets before this record time (ISO 8601, UTC)")
    ] = None,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Fix what verify finds, then verify again")
    ] = False,
    force_overwrite: Annotated[
        bool,
        typer.Option(
            "--force-overwrite",
            help="With --repair: replace or delete an object that exists with wrong bytes",
        ),
    ] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Partitions checked at once")] = 8,
    records: Annotated[
        bool,
        typer.Option(
            "--records",
            help="Then audit every record against Kafka (`replicator audit`, manifest written)",
        ),
    ] = False,
) -> None:
    """Prove both stores hold the same data: coverage without gap or overlap from the first
    retained offset to each store's committed offset, the same keys with the same size and
    MD5, and record-level differences for any object that differs. Exit 0 aligned,
    1 diverged, 3 could not check. With --records, then account for every source offset
    record by record (the audit): exit 0 only when both pass."""
    settings = load_or_exit()
    setup_logging("WARNING", "human")
    if force_overwrite and not repair:
        raise fail("--force-overwrite only makes sense with --repair", 2)
    check_output(output)
    since_ms = parse_time(since, "--since") if since else None
    until_ms = parse_time(until, "--until") if until else None
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise fail("--until must be after --since", 2)

    options = VerifyOptions(
        topics=topic or None,
        partitions=partition or None,
        since_ms=since_ms,
        until_ms=until_ms,
        concurrency=concurrency,
    )
    try:
        ctx = OpsContext.open(settings, "verify")
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    try:

        def verify_once() -> VerifyReport:
            with CliProgress("verify", "partitions") as progress:
                return run_verify(ctx, options, progress)

        report: VerifyReport
        if repair:
            result = run_repair(ctx, options, force_overwrite=force_overwrite, verify=verify_once)
            assert result.before is not None and result.after is not None
            report = result.after
            summary = "\n".join(
                [
                    "before repair:",
                    result.before.summary(),
                    result.summary() or "nothing to repair",
                    "after repair:",
                    report.summary(),
                ]
            )
            data = report.to_json()
            data["repair"] = result.to_json()
            emit_report(summary, report_json(data), as_json, output)
        else:
            report = verify_once()
            emit_report(report.summary(), report.dumps(), as_json, output)
        code = report.exit_code
        if records:
            audit = run_audit(
                ctx,
                AuditOptions(
                    topics=topic or None,
                    partitions=partition or None,
                    since_ms=since_ms,
                    until_ms=until_ms,
                    concurrency=min(concurrency, 8),
                ),
            )
            # The audit's report goes to its manifest in both stores; its summary follows
            # verify's (on stderr with --json, so that stdout stays verify's JSON report).
            typer.echo(audit.summary(), err=as_json)
            code = _combined(code, audit.exit_code)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    finally:
        ctx.close()
    raise typer.Exit(code)


def _combined(*codes: int) -> int:
    """1 when anything was found, else 3 when anything could not be checked, else 0."""
    if 1 in codes:
        return 1
    return max(codes)


def audit_command(
    topic: TopicOpt = None,
    partition: PartitionOpt = None,
    from_offset: Annotated[int | None, typer.Option(min=0, help="First offset (inclusive)")] = None,
    to_offset: Annotated[int | None, typer.Option(min=0, help="Last offset (inclusive)")] = None,
    since: Annotated[
        str | None, typer.Option(help="From the first record at or after this time (ISO 8601)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Up to the last record before this time (ISO 8601)")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Partitions audited at once")] = 4,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", help="Also write the manifest (JSON Lines) to this file"),
    ] = None,
    no_manifest: Annotated[
        bool, typer.Option("--no-manifest", help="Write no manifest to the stores")
    ] = False,
) -> None:
    """Account for every source offset against Kafka, record by record: stored (each store,
    one object, same key, value bytes and timestamp), dead-lettered, no record, or behind
    retention; anything else is a finding. Writes a manifest (JSON Lines, SHA-256 of every
    object) to every store under _audit/. Exit 0 clean, 1 findings, 3 could not audit."""
    settings = load_or_exit()
    setup_logging("WARNING", "human")
    check_output(output)
    check_output(manifest)
    since_ms = parse_time(since, "--since") if since else None
    until_ms = parse_time(until, "--until") if until else None
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise fail("--until must be after --since", 2)
    if from_offset is not None and to_offset is not None and to_offset < from_offset:
        raise fail("--to-offset is below --from-offset", 2)
    options = AuditOptions(
        topics=topic or None,
        partitions=partition or None,
        from_offset=from_offset,
        to_offset=to_offset,
        since_ms=since_ms,
        until_ms=until_ms,
        concurrency=concurrency,
        write_manifest=not no_manifest,
    )
    try:
        ctx = OpsContext.open(settings, "audit")
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    report: AuditReport
    try:
        with CliProgress("audit", "partitions") as progress:
            report = run_audit(ctx, options, progress)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    finally:
        ctx.close()
    if manifest is not None:
        manifest.write_bytes(report.manifest())
    emit_report(report.summary(), report_json(report.to_json()), as_json, output)
    raise typer.Exit(report.exit_code)


def replay_command(
    store: Annotated[
        list[str] | None,
        typer.Option("--store", help="Write into this store (repeatable; default: every one)"),
    ] = None,
    topic: TopicOpt = None,
    partition: PartitionOpt = None,
    from_offset: Annotated[int | None, typer.Option(min=0, help="First offset (inclusive)")] = None,
    to_offset: Annotated[int | None, typer.Option(min=0, help="Last offset (inclusive)")] = None,
    from_time: Annotated[
        str | None, typer.Option(help="From the first record at or after this time (ISO 8601)")
    ] = None,
    to_time: Annotated[
        str | None, typer.Option(help="Up to the last record before this time (ISO 8601)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, write nothing")] = False,
    advance_groups: Annotated[
        bool,
        typer.Option(
            "--advance-groups",
            help="Move a store's committed offset to the end of the range when it lies in it",
        ),
    ] = False,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Drive an offset or time range of some partitions into one or both stores again;
    data already present is left as is (nothing is created twice). Exit 0 done,
    1 conflicts, 3 Kafka or a store unavailable."""
    settings = load_or_exit()
    setup_logging("WARNING", "human")
    by_offset = from_offset is not None or to_offset is not None
    by_time = from_time is not None or to_time is not None
    if by_offset and by_time:
        raise fail("give an offset range or a time range, not both", 2)
    if from_offset is not None and to_offset is not None and to_offset < from_offset:
        raise fail("--to-offset is below --from-offset", 2)
    from_ms = parse_time(from_time, "--from-time") if from_time else None
    to_ms = parse_time(to_time, "--to-time") if to_time else None
    if from_ms is not None and to_ms is not None and to_ms <= from_ms:
        raise fail("--to-time must be after --from-time", 2)
    check_output(output)

    try:
        ctx = OpsContext.open(settings, "replay")
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    try:
        targets = ctx.check_store_names(store or list(ctx.stores))
        tps = ctx.targets(topic or None, partition or None)
        if by_time:
            requests = resolve_times(ctx, tps, from_ms, to_ms)
        else:
            requests = [RangeRequest(tp, from_offset, to_offset) for tp in tps]
        with CliProgress("replay", "partitions") as progress:
            report = run_replay(
                ctx, requests, targets, dry_run=dry_run, advance=advance_groups, progress=progress
            )
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    except KafkaUnavailable as exc:
        raise fail(str(exc), 3) from None
    finally:
        ctx.close()
    emit_report(report.summary(), report_json(report.to_json()), as_json, output)
    raise typer.Exit(report.exit_code)


def redrive_command(
    reason: Annotated[
        list[str] | None,
        typer.Option("--reason", help="Only dead letters of this reason (dlq.reason; repeatable)"),
    ] = None,
    topic: Annotated[
        list[str] | None, typer.Option("--topic", help="Only this origin topic (repeatable)")
    ] = None,
    partition: Annotated[
        list[int] | None,
        typer.Option("--partition", min=0, help="Only this origin partition (repeatable)"),
    ] = None,
    from_offset: Annotated[
        int | None, typer.Option(min=0, help="Origin offsets from this one (inclusive)")
    ] = None,
    to_offset: Annotated[
        int | None, typer.Option(min=0, help="Origin offsets up to this one (inclusive)")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Origin records at or after this time (their own timestamp, ISO 8601)"),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Origin records before this time (ISO 8601)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be re-driven; write nothing")
    ] = False,
    batch: Annotated[
        int,
        typer.Option(min=1, max=1_000_000, help="Dead letters read between two commits at most"),
    ] = DEFAULT_BATCH,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Produce selected dead letters again to their origin topic and partition (original
    key, value, headers and timestamp, plus redrive.* headers naming where they come
    from), so that the service reads them once more. Progress is the consumer group
    <group_id>.redrive.<selection>: run again after an interruption, it goes on. Exit 0
    done, 1 some cannot be re-driven, 3 Kafka unavailable."""
    settings = load_or_exit()
    setup_logging("WARNING", "human")
    check_output(output)
    unknown = sorted(set(topic or ()) - set(settings.topics))
    if unknown:
        raise fail(
            f"topic(s) {', '.join(unknown)} not replicated (REPLICATOR_TOPICS: "
            f"{', '.join(settings.topics)})",
            2,
        )
    selection = Selection(
        reasons=frozenset(reason or ()),
        topics=frozenset(topic or ()),
        partitions=frozenset(partition or ()),
        from_offset=from_offset,
        to_offset=to_offset,
        since_ms=parse_time(since, "--since") if since else None,
        until_ms=parse_time(until, "--until") if until else None,
    )
    problems = selection.problems()
    if problems:
        raise fail(problems[0], 2)
    options = RedriveOptions(selection=selection, dry_run=dry_run, batch=batch)
    with CliProgress("redrive", "dead letters") as progress:
        report = run_redrive(settings, options, progress)
    emit_report(report.summary(), report_json(report.to_json()), as_json, output)
    raise typer.Exit(report.exit_code)


def cutover_command(
    retire: Annotated[
        str | None, typer.Option(help="The store to stop writing (s3 or azure)")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for every store's lag to reach 0")
    ] = 300.0,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Undo a cutover: write every store again")
    ] = False,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Retire a store: wait for lag 0, verify, and only if aligned write a cutover record
    into both stores (the service then stops writing the retired store at its next start).
    Run again, it completes an interrupted cutover. --rollback undoes a complete or
    interrupted one. Exit 0 done, 1 diverged, 3 could not check or write (run again),
    4 lagging, 5 a cutover record or report already exists that this one cannot complete."""
    settings = load_or_exit()
    setup_logging("WARNING", "human")
    if rollback == (retire is not None):
        raise fail("give either --retire STORE or --rollback", 2)
    check_output(output)

    try:
        ctx = OpsContext.open(settings, "cutover")
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    try:
        if rollback:
            result = run_rollback(ctx)
        else:
            assert retire is not None
            result = run_cutover(ctx, retire, timeout, say=_say(as_json))
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    finally:
        ctx.close()
    if result.report_bytes is not None:
        # The verify report of the cutover, made by this run or taken from the stores.
        summary = result.report.summary() if result.report is not None else ""
        emit_report(summary, result.report_bytes, as_json, output)
    elif result.report is not None:
        emit_report(result.report.summary(), result.report.dumps(), as_json, output)
    if result.exit_code == 0:
        typer.echo(result.message, err=as_json)
    else:
        typer.echo(f"error: {result.message}", err=True)
    raise typer.Exit(result.exit_code)


def _say(as_json: bool) -> Callable[[str], None]:
    """Where a tool's running commentary goes: stdout, or stderr when stdout is the JSON."""

    def say(text: str) -> None:
        typer.echo(text, err=as_json)

    return say


def rclone_check_command() -> None:
    """Independent check with rclone: compare every object's size and MD5 between the S3
    store and the Azure store (exit 0: no difference; rclone's exit code otherwise)."""
    settings = load_or_exit()

    try:
        result = rclone_check(settings)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    except ReplicatorError as exc:
        raise fail(str(exc), 3) from None
    typer.echo(" ".join(result.command))
    typer.echo(result.output.rstrip())
    raise typer.Exit(result.returncode)


def status_command(
    topic: TopicOpt = None,
    partition: PartitionOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document (with --watch: one per line)")
    ] = False,
    output: OutputOpt = None,
    watch: Annotated[
        float | None,
        typer.Option(min=0.5, help="Refresh every this many seconds until Ctrl-C"),
    ] = None,
    dead_letters: Annotated[
        int,
        typer.Option(
            min=0, help="Dead letters tallied: the last N records of each partition (0: none)"
        ),
    ] = DEFAULT_DEAD_LETTER_WINDOW,
    live_records: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="A store this many records behind the end or fewer is live "
            "(default: 2 x REPLICATOR_CHUNK_MAX_RECORDS)",
        ),
    ] = None,
    live_seconds: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="... and its oldest missing record younger than this "
            "(default: 2 x REPLICATOR_FLUSH_INTERVAL_S + 30)",
        ),
    ] = None,
) -> None:
    """Where each store stands, per partition: committed offset, lag in records and
    seconds, last object written, catch-up state, and dead letters by reason. Reads Kafka
    and the stores directly: works while the service is down. Exit 0, 3 Kafka unavailable."""
    settings = load_or_exit()
    setup_logging("WARNING", "human")
    check_output(output)
    default = Thresholds.from_settings(settings.chunk_max_records, settings.flush_interval_s)
    thresholds = Thresholds(
        live_records if live_records is not None else default.live_records,
        live_seconds if live_seconds is not None else default.live_seconds,
    )
    try:
        ctx = OpsContext.open(settings, "status")
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    try:
        while True:
            if watch is None:
                with CliProgress("status: dead letters read", "records") as progress:
                    report = collect_status(
                        ctx, topic or None, partition or None, thresholds, dead_letters, progress
                    )
            else:
                report = collect_status(
                    ctx, topic or None, partition or None, thresholds, dead_letters
                )
            data = report_json(report.to_json())
            if watch is None:
                emit_report(report.render(), data, as_json, output)
                break
            if output is not None:
                output.write_bytes(data)
            if as_json:
                typer.echo(json.dumps(report.to_json(), sort_keys=True))
            else:
                if sys.stdout.isatty():
                    typer.echo("\x1b[2J\x1b[H", nl=False)  # clear the screen
                typer.echo(report.render())
            time.sleep(watch)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    finally:
        ctx.close()
    raise typer.Exit(report.exit_code)
