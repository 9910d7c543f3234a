"""Fixtures shared by every test.

Integration tests (marked `pytest.mark.integration`) run against one real local stack per
test session (`stack`: Kafka, S3 and Azure servers on free loopback ports, in a temporary
folder; `make test` runs two sessions at once, pytest-xdist's workers, each with its own),
and each test works in names of its own (`fresh`), so tests never see each other's data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from hypothesis import settings as hypothesis_settings

from replicator.config import Settings
from replicator.devtools.stack import (
    DEMO_BUCKET,
    DEMO_CONTAINER,
    DEMO_DEAD_LETTER_TOPIC,
    DEMO_PARTITIONS,
    DEMO_TOPICS,
    LocalStack,
    StackPorts,
)
from tests.support.faulttable import rows_of, table
from tests.support.fresh import FreshNames, create_fresh

FRESH_PARTITIONS = 3

# Property tests assert verdicts, never speed: hypothesis's per-example deadline (200 ms by
# default) fails them on a loaded machine, and pytest-timeout already bounds each test.
hypothesis_settings.register_profile("project", deadline=None)
hypothesis_settings.load_profile("project")

SettingsFactory = Callable[..., Settings]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The session's local stack: demo topics, bucket and container, free ports."""
    local = LocalStack(
        root=tmp_path_factory.mktemp("stack"),
        ports=StackPorts.free(),
        topics=list(DEMO_TOPICS),
        dead_letter_topic=DEMO_DEAD_LETTER_TOPIC,
        bucket=DEMO_BUCKET,
        container=DEMO_CONTAINER,
        partitions=DEMO_PARTITIONS,
    )
    try:
        local.up()
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def admin(stack: LocalStack) -> AdminClient:
    """The stack's one AdminClient (kept for the session: destroying one right after
    create_topics() can fail its future with _DESTROY)."""
    return stack.admin


@pytest.fixture
def fresh(request: pytest.FixtureRequest, stack: LocalStack) -> FreshNames:
    """Two topics (3 partitions each), a dead-letter topic, a bucket, a container and a
    consumer group id, unique to this test and created on the session stack."""
    return create_fresh(stack, request.node.name, partitions=FRESH_PARTITIONS)


@pytest.fixture
def settings_factory(
    stack: LocalStack, fresh: FreshNames, monkeypatch: pytest.MonkeyPatch
) -> SettingsFactory:
    """`settings_factory(**overrides) -> Settings` for the session stack and this test's
    names, with test-friendly timings. REPLICATOR_* variables of the calling shell are
    removed for the test, so only these values count."""
    for name in list(os.environ):
        if name.startswith("REPLICATOR_"):
            monkeypatch.delenv(name)

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap": stack.kafka_bootstrap,
            "topics": list(fresh.topics),
            # fresh topic names; their schemas are registered for the demo topics
            "schema_topics": dict(zip(fresh.topics, DEMO_TOPICS, strict=True)),
            "dead_letter_topic": fresh.dead_letter_topic,
            "group_id": fresh.group_id,
            "s3_endpoint": stack.s3_endpoint,
            "s3_bucket": fresh.bucket,
            "s3_access_key": stack.s3_access_key,
            "s3_secret_key": stack.s3_secret_key,
            "azure_connection_string": stack.azure_connection_string,
            "azure_container": fresh.container,
            "session_timeout_ms": 6000,
            "flush_interval_s": 1.0,
            "commit_interval_s": 0.2,
            "shutdown_timeout_s": 10,
            "metrics_host": "127.0.0.1",
            "metrics_port": 0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault matrix's table (tests/integration/pipeline/test_faults.py), from the rows its
    tests put on their reports: printed where the whole session's results are, also when the
    tests ran in pytest-xdist's workers."""
    rows = [
        row
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for row in rows_of(getattr(report, "user_properties", []))
    ]
    if not rows:
        return
    runs = max(r.runs for _, r in rows)
    terminalreporter.write_sep("=", f"fault matrix ({runs} runs per fault)")
    text = table(rows)
    for line in text.splitlines():
        terminalreporter.write_line(line)
    target = os.environ.get("REPLICATOR_FAULTS_TABLE")
    if target:
        Path(target).write_text(text + "\n")
