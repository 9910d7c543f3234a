"""librdkafka client properties through the real command line (REPLICATOR_KAFKA_PROPERTY_*
and REPLICATOR_KAFKA_PROPERTIES_FILE): passed through to the service's clients and to the
operator commands with a visible effect against the local broker, and refused, with one line
naming them, when the service owns them or librdkafka does not know them.

The effect shown: `broker.address.family=v6` makes every client resolve the broker's IPv4
address (127.0.0.1) as IPv6 only, which fails ("Address family for hostname not
supported"), so a command that works without the property cannot reach Kafka with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from replicator.config import Settings
from tests.support.produce import produce_records
from tests.support.service import Service, settings_env, wait_committed

pytestmark = pytest.mark.integration

V6 = {"REPLICATOR_KAFKA_PROPERTY_BROKER_ADDRESS_FAMILY": "v6"}
SECRET = "kafka-Key-passw0rd-7361"  # a secret-named property's value: never printed


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    return subprocess.run(
        [sys.executable, "-m", "replicator", *args],
        env={**base, **env},
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )


def properties_file(folder: Path, client_id: str) -> Path:
    path = folder / "client.properties"
    path.write_text(
        "# Tuning a platform team would set; each one reaches every client.\n"
        f"client.id = {client_id}\n"
        "socket.keepalive.enable=true\n"
        "compression.type=lz4\n"
        "\n"
        "! a secret-named property, unused on a plaintext connection\n"
        f"ssl.key.password={SECRET}\n",
        encoding="utf-8",
    )
    return path


def test_a_property_takes_effect_in_check_and_status(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    env = {
        **settings_env(settings_factory()),
        "REPLICATOR_KAFKA_PROPERTIES_FILE": str(properties_file(tmp_path, "it-check")),
    }
    ok = cli(env, "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert any(line.startswith("ok   kafka") for line in ok.stdout.splitlines()), ok.stdout

    failed = cli({**env, **V6}, "check")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    lines = failed.stdout.splitlines()
    assert any(line.startswith("FAIL kafka") for line in lines), failed.stdout
    assert any(line.startswith("ok   s3") for line in lines), failed.stdout
    assert failed.stderr.strip().splitlines()[-1] == "error: check failed: kafka"

    status = cli(env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    unreachable = cli({**env, **V6}, "status")
    assert unreachable.returncode == 3, unreachable.stdout + unreachable.stderr
    assert "kafka" in unreachable.stderr
    for result in (ok, failed, status, unreachable):
        assert SECRET not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr


def test_the_service_replicates_with_properties_and_they_reach_its_clients(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    client_id = f"it-{settings.group_id}"
    file = properties_file(tmp_path, client_id)
    extra = {"REPLICATOR_KAFKA_PROPERTIES_FILE": str(file)}

    # With broker.address.family=v6 the service cannot reach the broker: it says so and
    # waits (the same settings without it replicate, below).
    blocked = Service(settings, tmp_path, name="v6")
    blocked.extra_env = {**extra, **V6}
    blocked.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "waiting_for_broker" not in blocked.log_text():
            assert blocked.alive(), blocked.log_text()[-3000:]
            time.sleep(0.3)
    finally:
        blocked.stop()
    log = blocked.log_text()
    assert "waiting_for_broker" in log, log[-3000:]
    assert '"broker.address.family": "v6"' in log  # the settings line names it
    assert SECRET not in log and "Traceback" not in log

    # The same properties without it: every record reaches both stores, the bad ones the
    # dead-letter topic (through the producer that got compression.type=lz4).
    produced = produce_records(settings, 300, 0.05, seed=15)
    service = Service(settings, tmp_path, name="ok")
    service.extra_env = extra
    service.start()
    try:
        wait_committed(
            settings.kafka_bootstrap,
            [settings.progress_group(s) for s in settings.stores],
            produced.ends,
            timeout=120,
            services=[service],
        )
    finally:
        assert service.stop() == 0
    assert SECRET not in service.log_text()
    assert "Traceback" not in service.log_text()

    env = {**settings_env(settings), **extra}
    verify = cli(env, "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert SECRET not in verify.stdout + verify.stderr


def offline_env(tmp_path: Path) -> dict[str, str]:
    """A valid configuration pointing at servers that do not exist: validation comes first."""
    return {
        "REPLICATOR_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "REPLICATOR_STORES": "s3",
        "REPLICATOR_S3_ENDPOINT": "http://127.0.0.1:1",
        "REPLICATOR_S3_BUCKET": "bucket",
        "REPLICATOR_S3_ACCESS_KEY": "access-key-id",
        "REPLICATOR_S3_SECRET_KEY": "s3-secret-value",
        "REPLICATOR_METRICS_HOST": "127.0.0.1",
        "REPLICATOR_METRICS_PORT": "0",
        "REPLICATOR_KAFKA_PROPERTY_SSL_KEY_PASSWORD": SECRET,
    }


REFUSED = [
    # (id, extra variables, properties file text or None, what the one line must name)
    (
        "group.id from the environment",
        {"REPLICATOR_KAFKA_PROPERTY_GROUP_ID": "other"},
        None,
        "REPLICATOR_KAFKA_PROPERTY_GROUP_ID (group.id): owned by the service",
    ),
    (
        "enable.auto.commit from the file",
        {},
        "# ok\nclient.id=x\nenable.auto.commit=true\n",
        "REPLICATOR_KAFKA_PROPERTIES_FILE line 3 (enable.auto.commit): owned by the service",
    ),
    (
        "partition.assignment.strategy",
        {"REPLICATOR_KAFKA_PROPERTY_PARTITION_ASSIGNMENT_STRATEGY": "cooperative-sticky"},
        None,
        "(partition.assignment.strategy): owned by the service",
    ),
    (
        "bootstrap.servers duplicates a setting",
        {"REPLICATOR_KAFKA_PROPERTY_BOOTSTRAP_SERVERS": "127.0.0.1:2"},
        None,
        "(bootstrap.servers): owned by the service: set by the setting REPLICATOR_KAFKA_BOOTSTRAP",
    ),
    (
        "an unknown property",
        {"REPLICATOR_KAFKA_PROPERTY_NO_SUCH_THING": "1"},
        None,
        "REPLICATOR_KAFKA_PROPERTY_NO_SUCH_THING (no.such.thing): librdkafka refuses it for a "
        'producer: No such configuration property: "no.such.thing"',
    ),
    (
        "a bad line in the file",
        {},
        "client.id: x\n",
        "REPLICATOR_KAFKA_PROPERTIES_FILE: line 1: not a key=value line",
    ),
]
COMMANDS = [("config",), ("check",), ("run",), ("status",), ("verify",)]


@pytest.mark.parametrize(
    ("extra", "text", "named"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_a_refused_property_is_one_line_and_exit_2_for_every_command(
    tmp_path: Path, extra: dict[str, str], text: str | None, named: str
) -> None:
    env = {**offline_env(tmp_path), **extra}
    if text is not None:
        (tmp_path / "client.properties").write_text(text, encoding="utf-8")
        env["REPLICATOR_KAFKA_PROPERTIES_FILE"] = str(tmp_path / "client.properties")
    for args in [*COMMANDS, ("produce", "--count", "1")]:
        result = cli(env, *args, timeout=60)
        what = f"{args}: {result.stderr!r}"
        assert result.returncode == 2, what
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: invalid configuration: "), what
        assert named in lines[0], what
        assert result.stdout == "", what
        assert "Traceback" not in result.stderr and SECRET not in result.stderr, what


def test_config_prints_the_properties_masked(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    env["REPLICATOR_KAFKA_PROPERTIES_FILE"] = str(properties_file(tmp_path, "shown-id"))
    env["REPLICATOR_KAFKA_PROPERTY_SASL_OAUTHBEARER_CLIENT_SECRET"] = SECRET + "-oidc"
    env["REPLICATOR_KAFKA_PROPERTY_COMPRESSION_TYPE"] = "zstd"  # wins over the file's lz4
    result = cli(env, "config")
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("kafka_properties = ")]
    assert line == (
        "kafka_properties = {'client.id': 'shown-id', 'compression.type': 'zstd', "
        "'sasl.oauthbearer.client.secret': '**********', 'socket.keepalive.enable': 'true', "
        "'ssl.key.password': '**********'}"
    )
