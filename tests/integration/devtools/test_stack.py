"""The local stack: start, idempotence, status, settings, restarts that keep data, stop."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

import replicator.devtools.stack as stack_module
from replicator.cli.stack import app
from replicator.config import load_settings
from replicator.devtools.stack import (
    ENV_KEYS,
    SERVICES,
    LocalStack,
    StackError,
    StackPorts,
    pid_alive,
    port_open,
)
from replicator.errors import ReplicatorError
from tests.support.fresh import FreshNames

REQUIRED_ENV_KEYS = {
    "kafka_bootstrap",
    "topics",
    "dead_letter_topic",
    "s3_endpoint",
    "s3_bucket",
    "s3_access_key",
    "s3_secret_key",
    "azure_connection_string",
    "azure_container",
}


def run_cli(*args: str) -> tuple[int, str, str]:
    """`replicator stack ARGS` as a user runs it, in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "replicator", "stack", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def pids(stack: LocalStack) -> dict[str, int | None]:
    return {service: stack.pid(service) for service in SERVICES}


def process_gone(pid: int) -> bool:
    return not pid_alive(pid)


def live_group_members(pgid: int) -> list[int]:
    """Processes still running (not zombies) in the process group pgid."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


# ---- no server needed -------------------------------------------------------------------


def test_free_ports_are_distinct_and_leave_room_for_seaweed_grpc_twins() -> None:
    first, second = StackPorts.free(), StackPorts.free()
    ports = list(first.all_ports().values()) + list(second.all_ports().values())
    assert len(ports) == len(set(ports)) == 24  # 12 per stack
    for port in first.seaweed_ports().values():
        assert port < 65536
    assert first.seaweed_ports()["s3.port.grpc"] == first.s3 + 10000


def test_ports_must_not_collide() -> None:
    ports = StackPorts.default()
    with pytest.raises(ReplicatorError, match="both 9092"):
        dataclasses.replace(ports, azure=ports.kafka)
    with pytest.raises(ReplicatorError, match=r"not in 1\.\.65535"):
        dataclasses.replace(ports, seaweed_admin=60000)  # its gRPC twin would be 70000


def test_env_exports_survive_a_shell(tmp_path: Path) -> None:
    local = LocalStack(
        tmp_path, StackPorts.default(), ["a.b", "c"], "dl", "bucket-1", "container-1"
    )
    exports = local.env_exports()
    assert [line.split("=", 1)[0] for line in exports.splitlines()] == [
        f"export REPLICATOR_{key.upper()}" for key in ENV_KEYS
    ]
    shell = subprocess.run(
        ["bash", "-c", 'eval "$EXPORTS"; env -0'],
        env={"EXPORTS": exports, "PATH": os.environ["PATH"]},
        capture_output=True,
        check=True,
    )
    seen = dict(item.split("=", 1) for item in shell.stdout.decode().split("\0") if "=" in item)
    for key, value in local.env().items():
        assert seen[f"REPLICATOR_{key.upper()}"] == value
    assert ";AccountKey=" in seen["REPLICATOR_AZURE_CONNECTION_STRING"]


def test_missing_azurite_says_to_run_make_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack_module, "AZURITE_DIR", tmp_path / "no-azurite")
    with pytest.raises(ReplicatorError, match="make setup"):
        stack_module.azurite_binary()
    root = tmp_path / "stack"
    result = CliRunner().invoke(app, ["up", "--free-ports", "--root", str(root)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Azurite is not installed")
    assert "make setup" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(root.glob("*.pid"))  # nothing was started


def test_cli_reports_a_missing_stack_in_one_line(tmp_path: Path) -> None:
    code, out, err = run_cli("env", "--root", str(tmp_path / "none"))
    assert code == 1
    assert out == ""
    assert err.startswith("error: no stack in ")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# ---- the session stack ------------------------------------------------------------------


@pytest.mark.integration
def test_up_twice_keeps_the_same_servers(stack: LocalStack) -> None:
    before = pids(stack)
    assert all(before.values())
    stack.up()
    assert pids(stack) == before
    other = LocalStack.from_root(stack.root)  # as `replicator stack up --root` does
    try:
        other.up()
        assert pids(other) == before
    finally:
        other.close()


@pytest.mark.integration
def test_status_reports_every_server_answering(stack: LocalStack) -> None:
    status = stack.status()
    assert set(status) == set(SERVICES)
    for service, entry in status.items():
        assert entry["running"] is True
        assert entry["answering"] is True
        assert entry["pid"] == stack.pid(service)
        assert entry["port"] == stack.port(service)
    code, out, _ = run_cli("status", "--json", "--root", str(stack.root))
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(status))


@pytest.mark.integration
def test_up_created_the_stack_topics_bucket_and_container(stack: LocalStack) -> None:
    topics = stack.admin.list_topics(timeout=10).topics
    for topic in [*stack.topics, stack.dead_letter_topic]:
        assert len(topics[topic].partitions) == stack.partitions
    stack.s3.head_bucket(Bucket=stack.bucket)
    stack.blob.get_container_client(stack.container).get_container_properties()


@pytest.mark.integration
def test_env_json_from_the_cli_loads_as_settings(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_cli("env", "--json", "--root", str(stack.root))
    assert code == 0, err
    env = json.loads(out)
    assert set(env) >= REQUIRED_ENV_KEYS
    assert env == stack.env()
    assert env["topics"] == ",".join(stack.topics)

    code, exports, err = run_cli("env", "--root", str(stack.root))
    assert code == 0, err
    assert exports == stack.env_exports()
    for name in list(os.environ):
        if name.startswith("REPLICATOR_"):
            monkeypatch.delenv(name)
    for key, value in env.items():
        monkeypatch.setenv(f"REPLICATOR_{key.upper()}", value)
    settings = load_settings()
    assert settings.kafka_bootstrap == stack.kafka_bootstrap
    assert settings.topics == stack.topics
    assert settings.s3_endpoint == stack.s3_endpoint
    assert settings.azure_connection_string is not None
    assert settings.azure_connection_string.get_secret_value() == stack.azure_connection_string


@pytest.mark.integration
def test_s3_restart_keeps_the_data(stack: LocalStack, fresh: FreshNames) -> None:
    key, body = f"restart/{uuid.uuid4().hex}", os.urandom(300_000)
    stack.s3.put_object(Bucket=fresh.bucket, Key=key, Body=body)
    old_pid = stack.pid("s3")
    assert old_pid is not None
    try:
        stack.stop_service("s3")
        assert not port_open(stack.ports.s3)
        assert stack.status()["s3"]["running"] is False
        assert process_gone(old_pid)
    finally:
        stack.start_service("s3")
    assert stack.pid("s3") not in (None, old_pid)
    assert stack.s3.get_object(Bucket=fresh.bucket, Key=key)["Body"].read() == body


@pytest.mark.integration
def test_azure_restart_keeps_the_data(stack: LocalStack, fresh: FreshNames) -> None:
    name, body = f"restart/{uuid.uuid4().hex}", os.urandom(300_000)
    stack.blob.get_blob_client(fresh.container, name).upload_blob(body)
    old_pid = stack.pid("azure")
    try:
        stack.stop_service("azure")
        assert not port_open(stack.ports.azure)
        assert stack.status()["azure"]["running"] is False
    finally:
        stack.start_service("azure")
    assert stack.pid("azure") not in (None, old_pid)
    assert stack.blob.get_blob_client(fresh.container, name).download_blob().readall() == body


@pytest.mark.integration
def test_kafka_restart_recreates_the_topics(stack: LocalStack, fresh: FreshNames) -> None:
    try:
        stack.stop_service("kafka")
        assert not port_open(stack.ports.kafka)
    finally:
        stack.start_service("kafka")
    topics = stack.admin.list_topics(timeout=10).topics
    for topic in [*stack.topics, stack.dead_letter_topic]:
        assert len(topics[topic].partitions) == stack.partitions
    for topic in [*fresh.topics, fresh.dead_letter_topic]:
        assert len(topics[topic].partitions) == fresh.partitions


# ---- stacks of their own ----------------------------------------------------------------


@pytest.mark.integration
def test_down_leaves_no_process_and_no_open_port(tmp_path: Path) -> None:
    own = LocalStack(tmp_path / "own", StackPorts.free(), ["own.a"], "own.dl", "own-b", "own-c", 1)
    try:
        own.up()
        started = pids(own)
        assert all(started.values())
    finally:
        own.down()
    for pid in started.values():
        assert pid is not None
        assert process_gone(pid)
        assert live_group_members(pid) == []  # nothing left in its process group either
    for name, port in own.ports.all_ports().items():
        assert not port_open(port), name
    assert not list(own.root.glob("*.pid"))
    assert not any(entry["running"] for entry in own.status().values())


@pytest.mark.integration
def test_up_refuses_a_port_taken_by_another_process(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = dataclasses.replace(StackPorts.free(), kafka=taken.getsockname()[1])
        own = LocalStack(tmp_path, ports, ["x.a"], "x.dl", "x-bucket", "x-container")
        with pytest.raises(StackError, match=f"port {ports.kafka} .* already in use") as info:
            own.up()
    assert info.value.server == "kafka"
    assert not list(tmp_path.glob("*.pid"))


@pytest.mark.integration
def test_a_server_that_dies_at_start_is_named_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken-azurite"
    broken.write_text("#!/bin/sh\necho 'boom: cannot open the database' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setattr(stack_module, "azurite_binary", lambda: broken)
    own = LocalStack(tmp_path / "own", StackPorts.free(), ["x.a"], "x.dl", "x-bucket", "x-cont")
    with pytest.raises(StackError) as info:
        own.up()
    message = str(info.value)
    assert info.value.server == "azure"
    assert "azure (Azurite) exited during start-up" in message
    assert "boom: cannot open the database" in message
    assert str(own.log_file("azure")) in message
    assert "\n" not in message
    # what this call started was stopped again
    assert not list(own.root.glob("*.pid"))
    assert not port_open(own.ports.kafka)
    assert not port_open(own.ports.s3)
