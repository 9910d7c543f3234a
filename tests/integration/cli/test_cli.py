"""The command line as an operator meets it: exit codes, one clear line, no traceback, no secret."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicator.config import Settings
from tests.support.service import Service, settings_env

pytestmark = pytest.mark.integration


def cli(
    settings_or_env: Settings | dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    env.update(
        settings_env(settings_or_env) if isinstance(settings_or_env, Settings) else settings_or_env
    )
    return subprocess.run(
        [sys.executable, "-m", "replicator", *args],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def secrets_of(settings: Settings) -> list[str]:
    assert settings.s3_secret_key is not None and settings.azure_connection_string is not None
    account_key = (
        settings.azure_connection_string.get_secret_value().split("AccountKey=")[1].split(";")[0]
    )
    return [settings.s3_secret_key.get_secret_value(), account_key]


def test_a_bad_setting_gets_one_clear_line_and_exit_2(
    settings_factory: Callable[..., Settings],
) -> None:
    env = settings_env(settings_factory())
    env["REPLICATOR_CHUNK_MAX_RECORDS"] = "many"
    result = cli(env, "run")
    assert result.returncode == 2
    assert "REPLICATOR_CHUNK_MAX_RECORDS" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1

    env = settings_env(settings_factory())
    del env["REPLICATOR_S3_BUCKET"]
    result = cli(env, "run")
    assert result.returncode == 2
    assert "REPLICATOR_S3_BUCKET" in result.stderr
    for secret in secrets_of(settings_factory()):
        assert secret not in result.stderr


def test_config_masks_secrets(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    result = cli(settings, "config")
    assert result.returncode == 0
    assert "s3_secret_key = **********" in result.stdout
    for secret in secrets_of(settings):
        assert secret not in result.stdout


def test_check_passes_on_a_good_configuration(settings_factory: Callable[..., Settings]) -> None:
    result = cli(settings_factory(), "check")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok") and " kafka " in f" {line} " for line in lines)
    assert any(line.startswith("ok   s3") for line in lines)
    assert any(line.startswith("ok   azure") for line in lines)


def test_check_names_what_failed(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(s3_bucket="no-such-bucket-here")
    result = cli(settings, "check")
    assert result.returncode == 1
    assert any(
        line.startswith("FAIL s3") and "not_found" in line for line in result.stdout.splitlines()
    )
    assert any(line.startswith("ok   azure") for line in result.stdout.splitlines())
    assert "check failed: s3" in result.stderr

    result = cli(
        settings_factory(kafka_bootstrap=f"127.0.0.1:{closed_port()}"), "check", timeout=90
    )
    assert result.returncode == 1
    assert any(line.startswith("FAIL kafka") for line in result.stdout.splitlines())
    for secret in secrets_of(settings):
        assert secret not in result.stdout + result.stderr


def test_unreachable_broker_at_start_is_retried_and_reported(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(kafka_bootstrap=f"127.0.0.1:{closed_port()}")
    service = Service(settings, tmp_path).start()
    try:
        # Each attempt waits up to 5 s for the broker: wait for the first report, not a
        # fixed time (a loaded machine takes seconds to start the process).
        deadline = time.monotonic() + 60
        while "waiting_for_broker" not in service.log_text() and time.monotonic() < deadline:
            assert service.alive(), service.log_text()
            time.sleep(0.2)
        assert service.alive(), service.log_text()
    finally:
        service.stop()
    log = service.log_text()
    assert "waiting_for_broker" in log
    assert "Traceback" not in log


def test_an_unreachable_store_at_start_does_not_stop_the_service(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(
        s3_endpoint=f"http://127.0.0.1:{closed_port()}", store_timeout_s=1.0
    )
    service = Service(settings, tmp_path).start()
    try:
        time.sleep(8)
        assert service.alive(), service.log_text()
    finally:
        assert service.stop() == 0
    log = service.log_text()
    assert "store_unavailable_at_start" in log
    assert "Traceback" not in log
    for secret in secrets_of(settings):
        assert secret not in log
