"""`replicator cutover` against the real servers: it refuses on a lagging or a diverged store,
succeeds on aligned ones with a record in both stores, the service then stops writing the
retired store, and a rollback makes it write both again (the retired store catches up by
itself)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from replicator.config import Settings
from replicator.errors import StoreError
from replicator.ops.cutover import REPORT_KEY
from replicator.ops.repair import run_repair
from replicator.ops.verify import VerifyOptions
from replicator.stores.retirement import RECORD_KEY, retired_stores
from tests.support.ops import cli, keys, md5s, ops, replicate
from tests.support.produce import produce_records
from tests.support.service import Progress, Service, wait_committed

pytestmark = pytest.mark.integration


def has_record(settings: Settings) -> dict[str, bool]:
    out = {}
    with ops(settings) as ctx:
        for name, store in ctx.stores.items():
            try:
                store.read(RECORD_KEY)
                out[name] = True
            except StoreError:
                out[name] = False
    return out


def test_cutover_refuses_lagging_or_diverged_stores_then_retires_one_and_rolls_back(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(chunk_max_records=150)
    groups = [settings.progress_group(s) for s in settings.stores]
    produced = produce_records(settings, count=900, bad_share=0.01, seed=81)
    replicate(settings, produced.ends)

    # Lagging: records nobody has replicated yet.
    produced = produced.merge(produce_records(settings, count=150, bad_share=0.0, seed=82))
    result = cli(settings, "cutover", "--retire", "azure", "--timeout", "2")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "lag is not 0" in result.stderr and "s3 lags by" in result.stderr
    assert has_record(settings) == {"s3": False, "azure": False}
    replicate(settings, produced.ends)

    # Diverged: an object gone from azure.
    a = settings.topics[0]
    with ops(settings) as ctx:
        victim = keys(ctx, "azure", (a, 1))[0]
        ctx.stores["azure"].delete(victim)
    result = cli(settings, "cutover", "--retire", "azure", "--timeout", "5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "verify found 2 difference(s)" in result.stderr
    assert victim in result.stdout
    assert has_record(settings) == {"s3": False, "azure": False}
    with ops(settings) as ctx:
        assert run_repair(ctx, VerifyOptions()).after.status == "aligned"  # type: ignore[union-attr]

    # Aligned, with the service running: the cutover goes through.
    service = Service(settings, tmp_path, name="before").start()
    try:
        # The service is running (and has joined its group) while the cutover happens.
        produced = produced.merge(produce_records(settings, count=100, bad_share=0.0, seed=84))
        wait_committed(settings.kafka_bootstrap, groups, produced.ends, 90, [service])
        report_path = tmp_path / "cutover-verify.json"
        result = cli(
            settings,
            "cutover",
            "--retire",
            "azure",
            "--timeout",
            "60",
            "--json-report",
            str(report_path),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "azure is retired" in result.stdout
    finally:
        assert service.stop() == 0
    with ops(settings) as ctx:
        records = {s: ctx.read(s, RECORD_KEY) for s in ctx.stores}
        assert records["s3"] == records["azure"]
        record = json.loads(records["s3"])
        stored_report = ctx.read("s3", REPORT_KEY)
        assert ctx.read("azure", REPORT_KEY) == stored_report
        counts = {
            s: sum(1 for k in md5s(ctx, s) if not k.startswith("_cutover/")) for s in ctx.stores
        }
        assert retired_stores(list(ctx.stores.values())) == {"azure"}
    assert record["retired"] == "azure" and record["kept"] == ["s3"]
    assert record["verify_report_sha256"] == hashlib.sha256(stored_report).hexdigest()
    assert report_path.read_bytes() == stored_report
    assert json.loads(stored_report)["status"] == "aligned"
    assert record["objects"] == counts
    for store in ("s3", "azure"):
        assert record["committed"][store] == {
            f"{t}/{p}": end for (t, p), end in produced.ends.items()
        }
    assert record["time"].endswith("Z")
    result = cli(settings, "cutover", "--retire", "s3", "--timeout", "1")
    assert result.returncode == 5 and "roll back first" in result.stderr

    # After a restart the service writes s3 only.
    with ops(settings) as ctx:
        azure_before = md5s(ctx, "azure")
    produced = produced.merge(produce_records(settings, count=300, bad_share=0.0, seed=83))
    service = Service(settings, tmp_path, name="retired").start()
    try:
        wait_committed(
            settings.kafka_bootstrap, [settings.progress_group("s3")], produced.ends, 90, [service]
        )
    finally:
        assert service.stop() == 0
    assert '"event": "store_retired"' in service.log_text()
    azure_progress = Progress(settings.kafka_bootstrap, settings.progress_group("azure"))
    try:
        committed = azure_progress.committed(list(produced.ends))
    finally:
        azure_progress.close()
    assert any(committed[tp] < end for tp, end in produced.ends.items())
    with ops(settings) as ctx:
        assert md5s(ctx, "azure") == azure_before

    # verify still passes: the retired store is compared up to its committed offsets.
    result = cli(settings, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a cutover record retires azure" in result.stdout

    # Rollback: the service writes both again, azure catches up by itself, verify passes.
    result = cli(settings, "cutover", "--rollback")
    assert result.returncode == 0, result.stdout + result.stderr
    assert has_record(settings) == {"s3": False, "azure": False}
    with ops(settings) as ctx:
        assert any(k.startswith("_cutover/rolled-back-") for k in md5s(ctx, "azure"))
    service = Service(settings, tmp_path, name="rolled-back").start()
    try:
        wait_committed(settings.kafka_bootstrap, groups, produced.ends, 90, [service])
    finally:
        assert service.stop() == 0
    assert "store_retired" not in service.log_text()
    result = cli(settings, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
