"""`replicator cutover`: retire one store once both provably hold the same data.

`run_cutover`:
1. reads what an earlier cutover left under `_cutover/` in every store (see below);
2. waits (up to a timeout) until every store's lag is 0 on every partition: its committed
   offset has reached the real end of the partition (`KafkaView.ends`);
3. runs verify over everything; refuses unless it reports "aligned";
4. writes, create-if-absent, `_cutover/verify-report.json` (the verify report) into every
   store, kept stores first, and only then `_cutover/record.json` into every store, kept
   stores first: the retired store, the committed offsets per partition per store, the
   object counts, the SHA-256 of the verify report, the time the verify finished and the
   versions. The record is a function of the report's bytes, the retired store and the
   settings, and both stores receive the same bytes.

Those four puts (`CUTOVER_STEPS`) are the only durable writes of a cutover (no Kafka commit,
no file but the operator's `--json-report`), and a crash can stop it between any two. The
first record put anywhere is the decision: from then on the service retires the store at its
next start (`stores.retirement.retired_stores`: a record in any store counts). Running the command again
finishes any partial state: when a report or a record is already there it is taken as it is
(no new lag check or verify: the decision was made on that evidence), the missing puts are
made, and the puts already made answer "already present". A record that retires another
store, or stores that hold different records or reports, is a conflict (exit 5) naming what
differs. `run_rollback` undoes any partial or complete state.

The service reads the record when it starts (`stores.retirement.retired_stores`, called once by
`replicator run`) and neither writes nor watches the retired store (no lag metrics or
alerts for it); a running service keeps writing
both stores until it is restarted (a rolling restart is enough).

`run_rollback` copies each record it finds, byte for byte, to
`_cutover/rolled-back-<cutover time>-<sha256 prefix>.json` in every store (the audit trail),
then deletes the record, then the report, from every store, so the service writes both
stores again after its next start; the store that was retired then catches up by itself
from its own consumer group, whose committed offsets stayed where they were at cutover (as
long as Kafka still retains those offsets; otherwise `verify --repair` copies what it lacks
from the other store). Every step is create-if-absent or a delete, so an interrupted
rollback is finished by running it again.

Test hook: `REPLICATOR_TEST_CRASH_AFTER=cutover:<step>` (a name of `CUTOVER_STEPS`) or
`rollback:<step>` (of `rollback_steps`) makes the process exit at once (`os._exit`, exit
code `CRASH_EXIT`) right after that step, as a crash there would. Tests use it to stop the
command between every two writes; nothing else sets it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicator import __version__
from replicator.errors import StoreError, StoreErrorKind
from replicator.kafka.view import KafkaUnavailable
from replicator.model import TP
from replicator.ops.context import BadArgument, OpsContext
from replicator.ops.findings import VerifyReport, report_json
from replicator.ops.verify import VerifyOptions, run_verify
from replicator.stores.base import PutOutcome, Store
from replicator.stores.retirement import RECORD_KEY

log = logging.getLogger("replicator.cutover")

REPORT_KEY = "_cutover/verify-report.json"
ROLLED_BACK_PREFIX = "_cutover/rolled-back-"
RECORD_FORMAT = "replicator-cutover-record"
RECORD_VERSION = 1

EXIT_DONE = 0
EXIT_DIVERGED = 1
EXIT_UNCHECKED = 3
EXIT_LAGGING = 4
EXIT_ALREADY = 5

CRASH_ENV = "REPLICATOR_TEST_CRASH_AFTER"
CRASH_EXIT = 86

# The steps of a cutover, in order: the verify (no write), then the four puts. There are at
# most two stores (s3 and azure), so one kept store and one retired store.
CUTOVER_STEPS: tuple[str, ...] = (
    "verified",
    "report-kept",
    "report-retired",
    "record-kept",
    "record-retired",
)


def _crash_point(command: str, step: str) -> None:
    """The test hook (see the module's docstring): exit at once after `step`."""
    if os.environ.get(CRASH_ENV) == f"{command}:{step}":
        sys.stderr.write(f"{CRASH_ENV}={command}:{step}: test hook, exiting after that step\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT)


def write_plan(stores: Sequence[str], retire: str) -> list[tuple[str, str, str]]:
    """The puts of a cutover in order, as (step, store, key): the verify report into every
    store, kept stores first, then the record the same way. Each step name is in
    `CUTOVER_STEPS`."""
    kept = [s for s in stores if s != retire]
    plan: list[tuple[str, str, str]] = []
    for kind, key in (("report", REPORT_KEY), ("record", RECORD_KEY)):
        plan.extend((f"{kind}-kept", store, key) for store in kept)
        plan.append((f"{kind}-retired", retire, key))
    return plan


def rollback_steps(stores: Sequence[str]) -> list[str]:
    """The steps of a rollback, in order: archive the record in each store, delete the
    record from each store, delete the report from each store."""
    return [f"{action}-{store}" for action in ("archive", "record", "report") for store in stores]


@dataclass(frozen=True)
class Found:
    """What one store holds of a cutover (None: absent)."""

    record: bytes | None = None
    report: bytes | None = None


class CutoverConflict(Exception):
    """What the stores hold cannot be completed into the cutover asked for."""


def _read_optional(store: Store, key: str) -> bytes | None:
    try:
        return store.read(key)
    except StoreError as exc:
        if exc.kind is StoreErrorKind.NOT_FOUND:
            return None
        raise


def read_state(ctx: OpsContext) -> dict[str, Found]:
    """The record and the report each store holds. StoreError when one cannot be read."""
    return {
        name: Found(_read_optional(store, RECORD_KEY), _read_optional(store, REPORT_KEY))
        for name, store in ctx.stores.items()
    }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise CutoverConflict(f"the {what} is not a JSON object (sha256 {_sha(data)})")
    return value


def _one(found: Mapping[str, bytes], what: str, key: str) -> bytes | None:
    """The bytes the stores hold under `key`; CutoverConflict when two stores differ."""
    distinct = {data for data in found.values()}
    if len(distinct) > 1:
        holders = ", ".join(f"{s}: sha256 {_sha(d)[:12]}" for s, d in found.items())
        raise CutoverConflict(
            f"the stores hold different {what}s under {key} ({holders}): "
            "roll back first (replicator cutover --rollback)"
        )
    return next(iter(distinct), None)


def resume_point(found: Mapping[str, Found], retire: str) -> tuple[bytes | None, bytes | None]:
    """What an earlier, possibly interrupted, cutover left that this one takes as it is:
    (the verify report's bytes, the record's bytes), None where nothing was left. Pure.
    CutoverConflict when it cannot be completed into retiring `retire`."""
    records = {s: f.record for s, f in found.items() if f.record is not None}
    reports = {s: f.report for s, f in found.items() if f.report is not None}
    record = _one(records, "cutover record", RECORD_KEY)
    report = _one(reports, "verify report", REPORT_KEY)
    if record is not None:
        parsed = _parse(record, f"cutover record in {', '.join(records)}")
        if parsed.get("retired") != retire:
            raise CutoverConflict(
                f"a cutover record already exists in {', '.join(records)} (retired "
                f"{parsed.get('retired')} at {parsed.get('time')}): roll back first "
                "(replicator cutover --rollback)"
            )
        if report is None:
            raise CutoverConflict(
                f"the cutover record in {', '.join(records)} names a verify report that no "
                f"store holds ({REPORT_KEY}): roll back first (replicator cutover --rollback)"
            )
        if parsed.get("verify_report_sha256") != _sha(report):
            raise CutoverConflict(
                f"the cutover record in {', '.join(records)} names a verify report with sha256 "
                f"{parsed.get('verify_report_sha256')}, the stores hold {REPORT_KEY} with "
                f"sha256 {_sha(report)}: roll back first (replicator cutover --rollback)"
            )
    return report, record


def build_record(report_bytes: bytes, retire: str, group_id: str, topics: Sequence[str]) -> bytes:
    """The record of retiring `retire` on the evidence of this verify report: a function of
    its arguments and the version only, so an interrupted cutover run again writes the same
    bytes. CutoverConflict when the report cannot support a cutover."""
    report = _parse(report_bytes, f"verify report in {REPORT_KEY}")
    stores = report.get("stores")
    if report.get("status") != "aligned" or not isinstance(stores, list):
        raise CutoverConflict(
            f"the verify report {REPORT_KEY} left by an earlier cutover is not an aligned "
            f"one (status {report.get('status')!r}): roll back first (replicator cutover "
            "--rollback)"
        )
    if retire not in stores or len(stores) < 2:
        raise CutoverConflict(
            f"the verify report {REPORT_KEY} left by an earlier cutover covers the stores "
            f"{', '.join(map(str, stores))}, not {retire} and another: roll back first "
            "(replicator cutover --rollback)"
        )
    try:
        committed = {
            store: {
                f"{p['topic']}/{p['partition']}": p["committed"].get(store)
                for p in report.get("partitions") or []
            }
            for store in stores
        }
        totals = report["totals"]
        objects, sizes = totals["objects"], totals["bytes"]
    except (KeyError, TypeError, AttributeError):
        raise CutoverConflict(
            f"the verify report {REPORT_KEY} left by an earlier cutover lacks the committed "
            "offsets or totals of a verify report: roll back first (replicator cutover "
            "--rollback)"
        ) from None
    record = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "replicator_version": __version__,
        "retired": retire,
        "kept": [s for s in stores if s != retire],
        "time": report.get("finished_at"),
        "group_id": group_id,
        "topics": list(topics),
        "committed": committed,
        "objects": objects,
        "bytes": sizes,
        "verify_report_key": REPORT_KEY,
        "verify_report_sha256": _sha(report_bytes),
    }
    return report_json(record)


@dataclass
class CutoverResult:
    exit_code: int
    message: str
    record: dict[str, Any] | None = None
    report: VerifyReport | None = None  # the verify this run made (None: none, or taken)
    report_bytes: bytes | None = None  # the verify report of the cutover (made or taken)
    lag: dict[str, dict[str, int]] = field(default_factory=dict)


def lags(ctx: OpsContext, tps: list[TP]) -> dict[str, dict[TP, int]]:
    """Each store's lag per partition, in offsets: real end - committed offset (a store that
    committed nothing lags by end - first retained offset)."""
    ends = ctx.kafka.ends(tps)
    committed = ctx.committed(tps)
    out: dict[str, dict[TP, int]] = {}
    for store, per in committed.items():
        out[store] = {}
        for tp in tps:
            c = per.get(tp)
            base = c if c is not None else ctx.kafka.low(tp)
            out[store][tp] = max(ends[tp] - base, 0)
    return out


def _wait_lag_zero(
    ctx: OpsContext, timeout_s: float, say: Callable[[str], None], poll_s: float
) -> CutoverResult | None:
    """None once every store's lag is 0; the refusal otherwise."""
    try:
        tps = ctx.targets()
        deadline = time.monotonic() + timeout_s
        say(f"waiting up to {timeout_s:.0f} s for every store's lag to be 0 ...")
        while True:
            current = lags(ctx, tps)
            behind = {
                store: {f"{t}/{p}": n for (t, p), n in per.items() if n > 0}
                for store, per in current.items()
            }
            behind = {s: v for s, v in behind.items() if v}
            if not behind:
                return None
            if time.monotonic() >= deadline:
                parts = []
                for store, per in behind.items():
                    total = sum(per.values())
                    worst = sorted(per.items(), key=lambda kv: -kv[1])[:3]
                    parts.append(
                        f"{store} lags by {total:,} offset(s) ("
                        + ", ".join(f"{tp}: {n:,}" for tp, n in worst)
                        + ")"
                    )
                return CutoverResult(
                    EXIT_LAGGING,
                    f"refused: lag is not 0 after {timeout_s:.0f} s: " + "; ".join(parts),
                    lag=behind,
                )
            time.sleep(poll_s)
    except KafkaUnavailable as exc:
        return CutoverResult(EXIT_UNCHECKED, f"could not check the lag: {exc}")


def run_cutover(
    ctx: OpsContext,
    retire: str,
    timeout_s: float,
    say: Callable[[str], None] = print,
    poll_s: float = 1.0,
) -> CutoverResult:
    if retire not in ctx.stores:
        raise BadArgument(
            f"store {retire!r} is not configured (REPLICATOR_STORES: {', '.join(ctx.stores)})"
        )
    kept = [s for s in ctx.stores if s != retire]
    if not kept:
        raise BadArgument(f"retiring {retire} would leave no store to write")
    try:
        found = read_state(ctx)
    except StoreError as exc:
        return CutoverResult(
            EXIT_UNCHECKED, f"could not read the cutover records (nothing changed): {exc}"
        )
    try:
        report_bytes, record_bytes = resume_point(found, retire)
    except CutoverConflict as exc:
        return CutoverResult(EXIT_ALREADY, str(exc))

    report: VerifyReport | None = None
    if report_bytes is None:
        refused = _wait_lag_zero(ctx, timeout_s, say, poll_s)
        if refused is not None:
            return refused
        say("lag is 0 for every store; verifying both stores against each other and Kafka ...")
        report = run_verify(ctx, VerifyOptions())
        report_bytes = report.dumps()
        if report.status != "aligned":
            reason = (
                f"verify found {len(report.findings)} difference(s)"
                if report.status == "diverged"
                else "verify could not check everything"
            )
            return CutoverResult(
                report.exit_code,
                f"refused: {reason}; nothing was changed",
                report=report,
                report_bytes=report_bytes,
            )
        _crash_point("cutover", "verified")
    else:
        say(
            f"an earlier cutover was interrupted after its verify (report sha256 "
            f"{_sha(report_bytes)[:12]}): completing it on that evidence"
        )
    if record_bytes is None:
        try:
            record_bytes = build_record(
                report_bytes, retire, ctx.settings.group_id, ctx.settings.topics
            )
        except CutoverConflict as exc:
            return CutoverResult(EXIT_ALREADY, str(exc), report_bytes=report_bytes)
    record = _parse(record_bytes, "cutover record")

    created: list[str] = []
    for step, store, key in write_plan(list(ctx.stores), retire):
        data = report_bytes if key == REPORT_KEY else record_bytes
        try:
            outcome = ctx.stores[store].create_if_absent(
                key, data, hashlib.md5(data).digest(), {"kind": "cutover"}
            )
        except StoreError as exc:
            decided = any(f.record is not None for f in found.values()) or any(
                c.endswith(RECORD_KEY) for c in created
            )
            return CutoverResult(
                EXIT_UNCHECKED,
                f"cutover incomplete: could not write {key} into {store}: {exc}. Run the same "
                "command again to complete it, or replicator cutover --rollback to undo it "
                + (
                    f"(a record is written: the service retires {retire} at its next start)"
                    if decided
                    else "(no record is written yet: the service still writes every store)"
                ),
                report=report,
                report_bytes=report_bytes,
            )
        if outcome is PutOutcome.CREATED:
            created.append(f"{store}:{key}")
        _crash_point("cutover", step)
    how = (
        "already cut over, nothing written"
        if not created
        else "cut over"
        if report is not None
        else "cut over (completed the interrupted cutover)"
    )
    return CutoverResult(
        EXIT_DONE,
        f"{how}: {retire} is retired (record {RECORD_KEY} in {', '.join(ctx.stores)}, "
        f"verify report sha256 {record['verify_report_sha256']}). Restart the service "
        f"(a rolling restart): it then writes only {', '.join(kept)}.",
        record=record,
        report=report,
        report_bytes=report_bytes,
    )


def archive_key(record: bytes) -> str:
    """Where a rollback keeps a record: named by the cutover's time and the record's hash,
    so a rollback run again finds its own copy "already present"."""
    try:
        parsed = json.loads(record)
        when = str(parsed["time"]) if isinstance(parsed, dict) else "unknown"
    except (ValueError, KeyError):
        when = "unknown"
    stamp = "".join(c for c in when if c.isalnum() or c == ".")
    return f"{ROLLED_BACK_PREFIX}{stamp}-{_sha(record)[:12]}.json"


def run_rollback(ctx: OpsContext) -> CutoverResult:
    """Undo a complete or partial cutover: every record found is kept aside in every store,
    then the records, then the reports, are deleted from every store. The service writes
    every configured store again after its next start."""
    try:
        found = read_state(ctx)
    except StoreError as exc:
        return CutoverResult(
            EXIT_UNCHECKED, f"could not read the cutover records (nothing changed): {exc}"
        )
    records: list[bytes] = []
    for f in found.values():
        if f.record is not None and f.record not in records:
            records.append(f.record)
    holders = [s for s, f in found.items() if f.record is not None or f.report is not None]
    if not holders:
        return CutoverResult(EXIT_DONE, "no cutover record or report: nothing to roll back")
    names = list(ctx.stores)
    try:
        for name in names:
            for record in records:
                ctx.stores[name].create_if_absent(
                    archive_key(record), record, hashlib.md5(record).digest(), {"kind": "cutover"}
                )
            if records:
                _crash_point("rollback", f"archive-{name}")
        for key, action in ((RECORD_KEY, "record"), (REPORT_KEY, "report")):
            for name in names:
                ctx.stores[name].delete(key)
                _crash_point("rollback", f"{action}-{name}")
    except StoreError as exc:
        return CutoverResult(
            EXIT_UNCHECKED,
            f"rollback incomplete, run it again when the store answers: {exc}",
        )
    retired = sorted({str(r.get("retired")) for r in (_loose(b) for b in records) if r is not None})
    archived = ", ".join(archive_key(r) for r in records) or "no record: nothing archived"
    what = (
        f"the cutover record (retired {', '.join(retired)}) is archived as {archived}"
        if records
        else "an interrupted cutover's verify report is removed (no record was written)"
    )
    return CutoverResult(
        EXIT_DONE,
        f"rolled back: {what} in {', '.join(names)}. Restart the service: it writes "
        f"{', '.join(names)} again"
        + (
            f", and {', '.join(retired)} catches up from its consumer group by itself."
            if retired
            else "."
        ),
        record=_loose(records[0]) if records else None,
    )


def _loose(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def write_report(path: Path, report: VerifyReport) -> None:
    path.write_bytes(report.dumps())
