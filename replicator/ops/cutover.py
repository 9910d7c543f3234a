"""`replicator cutover`: retire one store once both provably hold the same data.

`run_cutover`:
1. refuses when a cutover record already exists (roll back first);
2. waits (up to a timeout) until every store's lag is 0 on every partition: its committed
   offset has reached the real end of the partition (`KafkaView.ends`);
3. runs verify over everything; refuses unless it reports "aligned";
4. writes, into every store (under its prefix), `_cutover/verify-report.json` (the verify
   report) and then `_cutover/record.json`: the retired store, the committed offsets per
   partition per store, the object counts, the SHA-256 of the verify report, the UTC time
   and the versions. Both stores receive the same bytes.

The service reads the record when it starts (`retired_stores`, called once by
`replicator run`) and neither writes nor watches the retired store (no lag metrics or
alerts for it); a running service keeps writing
both stores until it is restarted (a rolling restart is enough).

`run_rollback` moves the record aside (`_cutover/rolled-back-<time>.json`, for the audit
trail) in every store, so the service writes both stores again after its next start; the
store that was retired then catches up by itself from its own consumer group, whose
committed offsets stayed where they were at cutover (as long as Kafka still retains those
offsets; otherwise `verify --repair` copies what it lacks from the other store).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicator import __version__
from replicator.errors import StoreError, StoreErrorKind
from replicator.kafka.view import KafkaUnavailable
from replicator.model import TP
from replicator.ops.context import BadArgument, OpsContext
from replicator.ops.findings import VerifyReport, report_json, utc_now
from replicator.ops.verify import VerifyOptions, run_verify
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


@dataclass
class CutoverResult:
    exit_code: int
    message: str
    record: dict[str, Any] | None = None
    report: VerifyReport | None = None
    lag: dict[str, dict[str, int]] = field(default_factory=dict)


def read_records(ctx: OpsContext) -> dict[str, dict[str, Any] | None]:
    """The cutover record of each store (None: it has none). StoreError when one cannot be
    read."""
    out: dict[str, dict[str, Any] | None] = {}
    for name, store in ctx.stores.items():
        try:
            out[name] = json.loads(store.read(RECORD_KEY))
        except StoreError as exc:
            if exc.kind is not StoreErrorKind.NOT_FOUND:
                raise
            out[name] = None
        except ValueError:
            out[name] = {"retired": "?", "malformed": True}
    return out


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
        existing = read_records(ctx)
    except StoreError as exc:
        return CutoverResult(EXIT_UNCHECKED, f"could not read the cutover records: {exc}")
    found = {s: r for s, r in existing.items() if r is not None}
    if found:
        store, record = next(iter(found.items()))
        return CutoverResult(
            EXIT_ALREADY,
            f"a cutover record already exists in {', '.join(found)} (retired "
            f"{record.get('retired')} at {record.get('time')}): roll back first "
            "(replicator cutover --rollback)",
        )

    # 1. lag 0 everywhere
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
                break
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

    # 2. verify
    say("lag is 0 for every store; verifying both stores against each other and Kafka ...")
    report = run_verify(ctx, VerifyOptions())
    if report.status != "aligned":
        reason = (
            f"verify found {len(report.findings)} difference(s)"
            if report.status == "diverged"
            else "verify could not check everything"
        )
        return CutoverResult(
            report.exit_code, f"refused: {reason}; nothing was changed", report=report
        )

    # 3. the record, into every store
    report_bytes = report.dumps()
    record = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "replicator_version": __version__,
        "retired": retire,
        "kept": kept,
        "time": utc_now(),
        "group_id": ctx.settings.group_id,
        "topics": list(ctx.settings.topics),
        "committed": {
            store: {f"{p.topic}/{p.partition}": p.committed.get(store) for p in report.partitions}
            for store in ctx.stores
        },
        "objects": report.totals()["objects"],
        "bytes": report.totals()["bytes"],
        "verify_report_key": REPORT_KEY,
        "verify_report_sha256": hashlib.sha256(report_bytes).hexdigest(),
    }
    record_bytes = report_json(record)
    written: list[tuple[str, str]] = []
    try:
        # Kept stores first, the retired one last: the record is complete once every
        # store holds it.
        for store in [*kept, retire]:
            for key, data in ((REPORT_KEY, report_bytes), (RECORD_KEY, record_bytes)):
                ctx.stores[store].create_if_absent(
                    key, data, hashlib.md5(data).digest(), {"kind": "cutover"}
                )
                written.append((store, key))
    except StoreError as exc:
        for store, key in written:
            try:
                ctx.stores[store].delete(key)
            except StoreError:
                log.error(
                    "cutover_cleanup_failed",
                    extra={"replicator_fields": {"store": store, "key": key}},
                )
        return CutoverResult(
            EXIT_UNCHECKED, f"could not write the cutover record: {exc}", report=report
        )
    return CutoverResult(
        EXIT_DONE,
        f"cut over: {retire} is retired (record {RECORD_KEY} in {', '.join(ctx.stores)}, "
        f"verify report sha256 {record['verify_report_sha256']}). Restart the service "
        f"(a rolling restart): it then writes only {', '.join(kept)}.",
        record=record,
        report=report,
    )


def run_rollback(ctx: OpsContext) -> CutoverResult:
    """Move the cutover record aside in every store: the service writes every configured
    store again after its next start."""
    try:
        records = read_records(ctx)
    except StoreError as exc:
        return CutoverResult(
            EXIT_UNCHECKED, f"could not read the cutover records (nothing changed): {exc}"
        )
    holders = {s: r for s, r in records.items() if r is not None}
    if not holders:
        return CutoverResult(EXIT_DONE, "no cutover record: nothing to roll back")
    first = next(iter(holders.values()))
    assert first is not None
    stamp = utc_now().replace(":", "").replace("-", "")
    archive_key = f"{ROLLED_BACK_PREFIX}{stamp}.json"
    archived = {**first, "rolled_back_at": utc_now()}
    data = report_json(archived)
    try:
        for name in holders:
            store = ctx.stores[name]
            store.create_if_absent(
                archive_key, data, hashlib.md5(data).digest(), {"kind": "cutover"}
            )
            store.delete(RECORD_KEY)
            store.delete(REPORT_KEY)
    except StoreError as exc:
        return CutoverResult(
            EXIT_UNCHECKED,
            f"rollback incomplete, run it again when the store answers: {exc}",
        )
    return CutoverResult(
        EXIT_DONE,
        f"rolled back: the cutover record (retired {first.get('retired')}) is archived as "
        f"{archive_key} in {', '.join(holders)}. Restart the service: it writes "
        f"{', '.join(ctx.stores)} again, and {first.get('retired')} catches up from its "
        "consumer group by itself.",
        record=archived,
    )


def write_report(path: Path, report: VerifyReport) -> None:
    path.write_bytes(report.dumps())
