"""The independent check: after the service has replicated, `rclone check` (Debian's rclone)
between the S3 store and the Azure store finds no difference with MD5s compared, and it does
find one object altered behind the service's back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicator.config import Settings
from replicator.ops.rclone import rclone_check
from tests.support.ops import cli, keys, ops, replace
from tests.support.produce import produce_records
from tests.support.service import Service, wait_committed

pytestmark = pytest.mark.integration


def test_rclone_finds_no_difference_after_replication_and_finds_an_altered_object(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(chunk_max_records=200)
    groups = [settings.progress_group(s) for s in settings.stores]
    produced = produce_records(settings, count=1000, bad_share=0.01, seed=91)
    service = Service(settings, tmp_path).start()
    try:
        wait_committed(settings.kafka_bootstrap, groups, produced.ends, 120, [service])
    finally:
        assert service.stop() == 0

    result = rclone_check(settings)
    assert result.returncode == 0, result.output
    assert "0 differences found" in result.output
    with ops(settings) as ctx:
        objects = sum(len(keys(ctx, "s3", tp)) for tp in produced.ends)
    assert f"{objects} matching files" in result.output
    assert "hashes could not be checked" not in result.output  # MD5s were compared

    # One byte changed in one S3 object (same size): only the hashes can tell.
    a = settings.topics[0]
    with ops(settings) as ctx:
        key = keys(ctx, "s3", (a, 0))[0]
        data = bytearray(ctx.read("s3", key))
        data[len(data) // 2] ^= 0xFF
        replace(ctx, "s3", key, bytes(data))
    result = rclone_check(settings)
    assert result.returncode != 0
    assert "1 differences found" in result.output
    assert key in result.output and "md5 differ" in result.output.lower()

    # The same check from the command line, with no secret in what it prints.
    run = cli(settings, "rclone-check")
    assert run.returncode == result.returncode
    assert settings.s3_secret_key is not None and settings.azure_connection_string is not None
    account_key = (
        settings.azure_connection_string.get_secret_value().split("AccountKey=")[1].split(";")[0]
    )
    for secret in (settings.s3_secret_key.get_secret_value(), account_key, "sig="):
        assert secret not in run.stdout + run.stderr
