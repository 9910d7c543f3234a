"""A cutover or a rollback stopped after any of its steps, against the real servers, is
finished by running the same command again or undone by `cutover --rollback`.

The command runs as an operator runs it (a subprocess of the CLI) and is stopped by the
product's test hook (`REPLICATOR_TEST_CRASH_AFTER`: `os._exit` right after the named step),
so each case lands exactly between two writes. The steps come from the product
(`CUTOVER_STEPS`, `rollback_steps`): a new step is a new case."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from replicator.config import Settings
from replicator.ops.cutover import (
    CRASH_ENV,
    CRASH_EXIT,
    CUTOVER_STEPS,
    REPORT_KEY,
    archive_key,
    rollback_steps,
    write_plan,
)
from replicator.stores.retirement import RECORD_KEY, retired_stores
from tests.support.ops import cli, md5s, ops, replicate
from tests.support.produce import Produced, produce_records

pytestmark = pytest.mark.integration

RETIRE = "azure"
DEFAULT_STORES: list[str] = Settings.model_fields["stores"].default
Objects = dict[str, dict[str, bytes]]  # store -> key -> bytes


def cutover_objects(settings: Settings) -> Objects:
    """Every object under `_cutover/` in each store, with its bytes."""
    with ops(settings) as ctx:
        return {
            name: {o.key: store.read(o.key) for o in store.list("_cutover/")}
            for name, store in ctx.stores.items()
        }


def data_objects(settings: Settings) -> dict[str, dict[str, str | None]]:
    with ops(settings) as ctx:
        return {
            s: {k: m for k, m in md5s(ctx, s).items() if not k.startswith("_cutover/")}
            for s in ctx.stores
        }


def service_view(settings: Settings) -> set[str]:
    """The stores `replicator run` leaves out at its start."""
    with ops(settings) as ctx:
        return retired_stores(list(ctx.stores.values()))


def restore(settings: Settings, objects: Objects) -> None:
    """Put the stores' `_cutover/` objects back to exactly `objects`."""
    with ops(settings) as ctx:
        for name, store in ctx.stores.items():
            for o in list(store.list("_cutover/")):
                store.delete(o.key)
            for key, data in objects[name].items():
                store.create_if_absent(key, data, hashlib.md5(data).digest(), {})
    assert cutover_objects(settings) == objects


def cutover(settings: Settings, *extra: str, crash: str | None = None) -> tuple[int, str, str]:
    result = cli(
        settings,
        "cutover",
        *extra,
        extra_env={CRASH_ENV: crash} if crash else None,
    )
    return result.returncode, result.stdout, result.stderr


def replicated(settings: Settings, seed: int) -> Produced:
    produced = produce_records(settings, count=400, bad_share=0.0, seed=seed)
    replicate(settings, produced.ends)
    assert settings.stores == DEFAULT_STORES
    assert cutover_objects(settings) == {s: {} for s in settings.stores}
    return produced


def assert_complete(
    settings: Settings, objects: Objects, produced: Produced, report: bytes, record: bytes
) -> None:
    """The state of a finished cutover: the same report and record in every store, the
    record naming the report and what the stores held."""
    assert objects == {s: {REPORT_KEY: report, RECORD_KEY: record} for s in settings.stores}
    data = json.loads(record)
    assert data["retired"] == RETIRE and data["kept"] == ["s3"]
    assert data["verify_report_sha256"] == hashlib.sha256(report).hexdigest()
    assert json.loads(report)["status"] == "aligned"
    ends = {f"{t}/{p}": end for (t, p), end in produced.ends.items()}
    assert data["committed"] == {"s3": ends, "azure": ends}
    assert data["objects"] == {s: len(v) for s, v in data_objects(settings).items()}
    assert service_view(settings) == {RETIRE}


@pytest.mark.parametrize("step", CUTOVER_STEPS)
def test_a_cutover_stopped_after_any_step_is_completed_by_a_rerun_or_undone_by_rollback(
    step: str, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(chunk_max_records=100)
    produced = replicated(settings, seed=131)
    data_before = data_objects(settings)

    # Stopped right after `step`.
    code, _, err = cutover(settings, "--retire", RETIRE, "--timeout", "30", crash=f"cutover:{step}")
    assert code == CRASH_EXIT, err
    assert f"{CRASH_ENV}=cutover:{step}: test hook" in err
    left = cutover_objects(settings)
    done = set(CUTOVER_STEPS[: CUTOVER_STEPS.index(step) + 1])
    expected_keys: dict[str, set[str]] = {s: set() for s in settings.stores}
    for name, store, key in write_plan(settings.stores, RETIRE):
        if name in done:
            expected_keys[store].add(key)
    assert {s: set(v) for s, v in left.items()} == expected_keys
    reports = {v[REPORT_KEY] for v in left.values() if REPORT_KEY in v}
    records = {v[RECORD_KEY] for v in left.values() if RECORD_KEY in v}
    assert len(reports) <= 1 and len(records) <= 1
    # The first record put is the decision the service follows.
    assert service_view(settings) == ({RETIRE} if records else set())
    assert data_objects(settings) == data_before

    # (a) The same command again finishes it, on the evidence already written.
    report_path = tmp_path / "cutover-verify.json"
    code, out, err = cutover(
        settings, "--retire", RETIRE, "--timeout", "30", "--json-report", str(report_path)
    )
    assert code == 0, out + err
    if left == {s: {} for s in settings.stores}:
        assert "cut over: azure is retired" in out
    elif step == CUTOVER_STEPS[-1]:  # every put was made: only the message was lost
        assert "already cut over, nothing written: azure is retired" in out
    else:
        assert "an earlier cutover was interrupted after its verify" in out
        assert "cut over (completed the interrupted cutover): azure is retired" in out
    complete = cutover_objects(settings)
    report = next(iter(reports)) if reports else complete["s3"][REPORT_KEY]
    record = next(iter(records)) if records else complete["s3"][RECORD_KEY]
    assert_complete(settings, complete, produced, report, record)
    assert report_path.read_bytes() == report
    assert data_objects(settings) == data_before
    # ... and once more: everything is already there.
    code, out, err = cutover(settings, "--retire", RETIRE, "--timeout", "30")
    assert code == 0, out + err
    assert "already cut over, nothing written: azure is retired" in out
    assert cutover_objects(settings) == complete
    # Retiring the other store instead is a conflict that says what is there.
    code, out, err = cutover(settings, "--retire", "s3", "--timeout", "1")
    assert code == 5, out + err
    assert "a cutover record already exists in s3, azure (retired azure at " in err
    assert "roll back first (replicator cutover --rollback)" in err

    # (b) From the same stopped state, a rollback undoes it.
    restore(settings, left)
    code, out, err = cutover(settings, "--rollback")
    assert code == 0, out + err
    archived = {archive_key(r): r for r in records}
    assert cutover_objects(settings) == {s: archived for s in settings.stores}
    assert data_objects(settings) == data_before
    assert service_view(settings) == set()
    if records:
        assert f"retired azure) is archived as {next(iter(archived))}" in out
    elif reports:
        assert "verify report is removed (no record was written)" in out
    else:
        assert "nothing to roll back" in out
    # Nothing is left in the way of the next cutover.
    code, out, err = cutover(settings, "--retire", RETIRE, "--timeout", "30")
    assert code == 0, out + err
    assert "cut over: azure is retired" in out


@pytest.mark.parametrize("step", rollback_steps(DEFAULT_STORES))
def test_a_rollback_stopped_after_any_step_is_finished_by_a_rerun(
    step: str, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(chunk_max_records=100)
    replicated(settings, seed=137)
    data_before = data_objects(settings)
    code, out, err = cutover(settings, "--retire", RETIRE, "--timeout", "30")
    assert code == 0, out + err
    record = cutover_objects(settings)["s3"][RECORD_KEY]
    archived = {archive_key(record): record}

    code, _, err = cutover(settings, "--rollback", crash=f"rollback:{step}")
    assert code == CRASH_EXIT, err
    assert f"{CRASH_ENV}=rollback:{step}: test hook" in err
    left = cutover_objects(settings)
    steps = rollback_steps(settings.stores)
    done = set(steps[: steps.index(step) + 1])
    for s in settings.stores:
        expected = {RECORD_KEY, REPORT_KEY}
        if f"archive-{s}" in done:
            expected.add(next(iter(archived)))
        expected -= {RECORD_KEY} if f"record-{s}" in done else set()
        expected -= {REPORT_KEY} if f"report-{s}" in done else set()
        assert set(left[s]) == expected, s
    still_recorded = any(RECORD_KEY in v for v in left.values())
    assert service_view(settings) == ({RETIRE} if still_recorded else set())

    code, out, err = cutover(settings, "--rollback")
    assert code == 0, out + err
    assert cutover_objects(settings) == {s: archived for s in settings.stores}
    assert data_objects(settings) == data_before
    assert service_view(settings) == set()
    code, out, err = cutover(settings, "--rollback")
    assert code == 0 and "nothing to roll back" in out, out + err
