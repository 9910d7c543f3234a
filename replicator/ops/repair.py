"""`replicator verify --repair`: fix what verify found, then verify again.

Per finding:

- `missing` / `gap` in a store: the range is driven again into that store by the replay path
  (same cuts, so the same keys; a key another store holds with the same records is copied
  from it, byte for byte). Below the first retained offset Kafka cannot help: the object is
  copied from a store whose copy reads entirely.
- `differs`: the object of the store that holds the right one (it matches Kafka's records;
  below the first retained offset: it reads entirely while the other does not) replaces the
  wrong one, delete then create, only with `force_overwrite`. When no store holds a right
  one, every copy is deleted and rebuilt from Kafka with the same cut (`force_overwrite`).
- `overlap`: the object that does not match the other store's cut is deleted, only with
  `force_overwrite` (a gap it leaves is filled in the next round).
- `cut_mismatch`, `behind_retention`: reported, left to the operator (see the runbook).

Then verify runs again; while a round changed something and divergence remains, another
round runs (at most `max_rounds`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from replicator.container import object_metadata
from replicator.errors import ConflictError, StoreError
from replicator.kafka.view import KafkaUnavailable
from replicator.ops.context import OpsContext
from replicator.ops.findings import (
    Finding,
    FindingKind,
    PartitionReport,
    VerifyReport,
    merge_ranges,
    right_stores,
)
from replicator.ops.replay import RangeRequest, run_replay
from replicator.ops.verify import VerifyOptions, read_objects, run_verify
from replicator.stores.base import PutOutcome

log = logging.getLogger("replicator.repair")


@dataclass
class RepairAction:
    action: str  # copy, replace, rebuild, replay, delete, none
    outcome: str  # done, refused, failed, nothing_to_do
    topic: str
    partition: int
    store: str
    first: int
    last: int
    key: str | None = None
    detail: str = ""

    def describe(self) -> str:
        what = self.key or f"offsets {self.first}-{self.last}"
        text = f"{self.outcome.upper():<8} {self.action} {self.topic}/{self.partition} {self.store}: {what}"
        return text + (f": {self.detail}" if self.detail else "")


@dataclass
class RepairReport:
    rounds: list[list[RepairAction]] = field(default_factory=list)
    before: VerifyReport | None = None
    after: VerifyReport | None = None

    @property
    def actions(self) -> list[RepairAction]:
        return [a for r in self.rounds for a in r]

    def to_json(self) -> dict[str, Any]:
        return {
            "rounds": [[asdict(a) for a in r] for r in self.rounds],
            "before": self.before.to_json() if self.before is not None else None,
        }

    def summary(self) -> str:
        lines = []
        for i, actions in enumerate(self.rounds, 1):
            lines.append(f"repair round {i}: {len(actions)} action(s)")
            lines.extend("  " + a.describe() for a in actions)
        return "\n".join(lines)


def run_repair(
    ctx: OpsContext,
    options: VerifyOptions,
    force_overwrite: bool = False,
    max_rounds: int = 3,
    verify: Callable[[], VerifyReport] | None = None,
) -> RepairReport:
    """Verify, repair, verify again (see the module docstring)."""

    def again() -> VerifyReport:
        return verify() if verify is not None else run_verify(ctx, options)

    out = RepairReport()
    report = again()
    out.before = report
    refused: set[tuple[str, str, str, int, int, str | None]] = set()
    for _ in range(max_rounds):
        if report.status != "diverged":
            break
        actions: list[RepairAction] = []
        for part in report.partitions:
            if part.status == "diverged":
                actions.extend(_repair_partition(ctx, part, force_overwrite))
        # What an earlier round refused is refused again for the same reason: say it once.
        fresh = [a for a in actions if _signature(a) not in refused]
        refused.update(_signature(a) for a in actions if a.outcome == "refused")
        if not fresh:
            break
        out.rounds.append(fresh)
        report = again()
        if not any(a.outcome == "done" for a in actions):
            break
    out.after = report
    return out


def _signature(a: RepairAction) -> tuple[str, str, str, int, int, str | None]:
    return (a.action, a.store, a.topic, a.partition, a.first, a.key)


def _repair_partition(ctx: OpsContext, part: PartitionReport, force: bool) -> list[RepairAction]:
    tp = part.tp
    actions: list[RepairAction] = []
    low = part.low_watermark
    replays: dict[str, list[tuple[int, int]]] = {}

    def act(f: Finding, action: str, outcome: str, store: str, detail: str = "") -> None:
        actions.append(
            RepairAction(action, outcome, tp[0], tp[1], store, f.first, f.last, f.key, detail)
        )

    # Overlaps first: a deletion may open a gap, which the replays below or the next round fill.
    for f in part.findings:
        if f.kind is FindingKind.OVERLAP:
            if f.suspect is None:
                act(f, "delete", "refused", f.store, "cannot tell which object is wrong")
            elif not force:
                act(
                    f,
                    "delete",
                    "refused",
                    f.store,
                    f"{f.suspect} would be deleted: needs --force-overwrite",
                )
            else:
                try:
                    ctx.stores[f.store].delete(f.suspect)
                    act(f, "delete", "done", f.store, f"deleted {f.suspect}")
                except StoreError as exc:
                    act(f, "delete", "failed", f.store, str(exc))

    for f in part.findings:
        if f.kind in (FindingKind.MISSING, FindingKind.GAP):
            if f.last >= low:
                replays.setdefault(f.store, []).append((max(f.first, low), f.last))
            if f.first < low:
                if f.kind is FindingKind.MISSING and f.key is not None:
                    _copy_history(ctx, f, act)
                else:
                    act(
                        f,
                        "replay",
                        "refused",
                        f.store,
                        f"offsets {f.first}-{min(f.last, low - 1)} are no longer in Kafka and "
                        "no store holds them",
                    )
        elif f.kind is FindingKind.DIFFERS:
            _repair_differs(ctx, f, low, force, act)
        elif f.kind is FindingKind.CUT_MISMATCH:
            act(
                f,
                "none",
                "refused",
                f.store,
                f"cut as {', '.join(f.other_keys)} here: the stores disagree on cuts; see the "
                "runbook (keep one store's objects, delete the other's, replay)",
            )
        elif f.kind is FindingKind.BEHIND_RETENTION:
            act(f, "none", "refused", f.store, f.detail + "; see the runbook")

    for store, ranges in replays.items():
        requests = [RangeRequest(tp, a, b) for a, b in merge_ranges(ranges)]
        result = run_replay(ctx, requests, [store])
        for req, rp in zip(requests, result.partitions, strict=True):
            assert req.first is not None and req.last is not None
            written = rp.written.get(store, [])
            copied = rp.copied.get(store, [])
            problems = [c["reason"] for c in rp.conflicts] + ([rp.error] if rp.error else [])
            detail = f"{len(written)} object(s) created ({len(copied)} copied from another store), {rp.skipped.get(store, 0)} already present"
            if rp.notes:
                detail += "; " + "; ".join(rp.notes)
            if problems:
                detail += "; " + "; ".join(problems)
            outcome = "failed" if problems else ("done" if written else "nothing_to_do")
            actions.append(
                RepairAction(
                    "replay", outcome, tp[0], tp[1], store, req.first, req.last, None, detail
                )
            )
    return actions


def _copy_history(ctx: OpsContext, f: Finding, act: Callable[..., None]) -> None:
    """A missing object below the first retained offset: copy it from a store whose copy
    reads entirely."""
    assert f.key is not None
    objects = read_objects(ctx, f.key, f.sources)
    good = [(s, data) for s, (data, obj) in objects.items() if obj.error is None]
    if not good:
        act(f, "copy", "refused", f.store, "no store holds a readable copy")
        return
    source, data = good[0]
    _create(ctx, f, f.store, data, source, "copy", act)


def _create(
    ctx: OpsContext,
    f: Finding,
    store: str,
    data: bytes,
    source: str,
    action: str,
    act: Callable[..., None],
) -> None:
    assert f.key is not None
    obj_meta = object_metadata(data)
    try:
        outcome = ctx.stores[store].create_if_absent(
            f.key, data, hashlib.md5(data).digest(), obj_meta
        )
    except ConflictError as exc:
        act(f, action, "refused", store, str(exc))
        return
    except StoreError as exc:
        act(f, action, "failed", store, str(exc))
        return
    if outcome is PutOutcome.ALREADY_PRESENT:
        act(f, action, "nothing_to_do", store, f"already present (from {source})")
    else:
        act(f, action, "done", store, f"from {source}")


def _repair_differs(
    ctx: OpsContext, f: Finding, low: int, force: bool, act: Callable[..., None]
) -> None:
    assert f.key is not None
    right = right_stores(f.records)
    wrong = [s for s in f.sources if s not in right]
    if not f.records:
        act(f, "replace", "refused", f.store, "its copies could not be compared")
        return
    if right:
        source = right[0]
        if not force:
            for store in wrong:
                act(
                    f,
                    "replace",
                    "refused",
                    store,
                    f"{source} holds the right object; replacing needs --force-overwrite",
                )
            return
        try:
            data = ctx.read(source, f.key)
        except StoreError as exc:
            act(f, "replace", "failed", ",".join(wrong), str(exc))
            return
        for store in wrong:
            try:
                ctx.stores[store].delete(f.key)
            except StoreError as exc:
                act(f, "replace", "failed", store, str(exc))
                continue
            _create(ctx, f, store, data, source, "replace", act)
        return
    if f.first < low:
        act(
            f,
            "rebuild",
            "refused",
            f.store,
            "no store holds a right copy and Kafka no longer holds these offsets",
        )
        return
    if not force:
        act(
            f,
            "rebuild",
            "refused",
            f.store,
            "no store holds a right copy: rebuilding from Kafka needs --force-overwrite",
        )
        return
    tp = (f.topic, f.partition)
    try:
        for store in f.sources:
            ctx.stores[store].delete(f.key)
        result = run_replay(
            ctx,
            [RangeRequest(tp, f.first, f.last)],
            list(f.sources),
            extra_cuts={tp: [(f.first, f.last)]},
        )
    except (StoreError, KafkaUnavailable) as exc:
        act(f, "rebuild", "failed", f.store, str(exc))
        return
    rp = result.partitions[0]
    problems = [c["reason"] for c in rp.conflicts] + ([rp.error] if rp.error else [])
    act(
        f,
        "rebuild",
        "failed" if problems else "done",
        f.store,
        "; ".join(problems) or "rebuilt from Kafka",
    )
