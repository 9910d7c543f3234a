"""Logs, probes and the lag monitor's failure path, without servers."""

from __future__ import annotations

import io
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from typing import Any, cast

from pydantic import SecretStr

from replicator.config import Settings
from replicator.logs import (
    KAFKA_LOGGER,
    EventBudget,
    HumanFormatter,
    JsonFormatter,
    KafkaLogFilter,
    fields,
)
from replicator.pipeline.service import Replicator
from replicator.telemetry.lag import LagMonitor, LagSnapshot, PartitionLag
from replicator.telemetry.metrics import Metrics
from replicator.telemetry.server import Probes, start_http
from tests.support.settings import offline_settings

SECRET = "s3-secret-value-that-must-never-show"  # a test value


def settings(**overrides: Any) -> Settings:
    """The offline settings with a secret in each store's credentials (never to be shown)."""
    return offline_settings(
        **{
            "dead_letter_topic": "dlq",
            "s3_access_key": SecretStr("access"),
            "s3_secret_key": SecretStr(SECRET),
            "azure_connection_string": SecretStr(
                f"BlobEndpoint=http://127.0.0.1:9/acct;SharedAccessSignature=sig={SECRET}"
            ),
            **overrides,
        }
    )


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


# ---------------------------------------------------------------------------- logs
def test_json_lines_carry_time_level_event_and_fields() -> None:
    logger, out = capture(JsonFormatter())
    logger.warning(
        "dead_lettered", extra=fields(topic="t", partition=2, offset=41, reason="undecodable")
    )
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("store_down", extra=fields(store="azure"))
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2
    first, second = json.loads(lines[0]), json.loads(lines[-1])
    assert first["level"] == "warning" and first["event"] == "dead_lettered"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert (first["topic"], first["partition"], first["offset"]) == ("t", 2, 41)
    assert second["store"] == "azure" and second["error"] == "ValueError: boom"
    assert "\n" not in out.getvalue().strip().split("\n", 1)[0]


def test_human_lines_are_readable() -> None:
    logger, out = capture(HumanFormatter())
    logger.info("catchup_started", extra=fields(store="s3", partitions={"t/0": 5}))
    line = out.getvalue().strip()
    assert "INFO" in line and "catchup_started" in line and "store=s3" in line


def test_librdkafka_lines_become_events() -> None:
    logger, out = capture(JsonFormatter())
    kafka = logging.getLogger(KAFKA_LOGGER)
    kafka.handlers[:] = logger.handlers
    kafka.propagate = False
    try:
        # the call confluent-kafka makes for each librdkafka log line
        kafka.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect failed")
    finally:
        kafka.handlers[:] = []
        kafka.propagate = True
    event = json.loads(out.getvalue())
    assert event["event"] == "kafka_client_log" and event["level"] == "error"
    assert event["facility"] == "FAIL" and event["detail"] == "Connect failed"


def test_repeated_librdkafka_lines_are_suppressed_and_counted() -> None:
    logger, out = capture(JsonFormatter())
    logger.addFilter(KafkaLogFilter(window_s=60))
    for after in range(50):  # a client retrying a refused connection
        logger.log(
            logging.ERROR,
            "%s [%s] %s",
            "FAIL",
            "rdkafka#consumer-1",
            f"Connect to 127.0.0.1:9 failed (after {after}ms in state CONNECT)",
        )
    logger.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-2", "Connect failed")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["client"] for e in events] == ["rdkafka#consumer-1", "rdkafka#consumer-2"]
    assert "suppressed" not in events[0]

    logger, out = capture(JsonFormatter())
    logger.addFilter(KafkaLogFilter(window_s=0.2))
    for _ in range(3):
        logger.log(logging.ERROR, "%s [%s] %s", "FAIL", "c", "Connect failed")
    time.sleep(0.3)
    logger.log(logging.ERROR, "%s [%s] %s", "FAIL", "c", "Connect failed")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(events) == 2 and events[1]["suppressed"] == 2


def test_settings_route_kafka_logs_and_print_no_secret() -> None:
    s = settings()
    conf = s.kafka_common()
    assert conf["logger"].name == KAFKA_LOGGER
    assert s.lag_interval_s == 5.0
    printable = json.dumps(s.printable(), default=str)
    assert SECRET not in printable and SECRET not in repr(s) and SECRET not in str(s)


# ---------------------------------------------------------------------------- lag monitor
def test_lag_seconds_keep_growing_while_kafka_cannot_be_read() -> None:
    now = [1_000_000.0]
    metrics = Metrics(stores=["s3"], topics=["t"])
    monitor = LagMonitor(
        settings(kafka_bootstrap=f"127.0.0.1:{dead_port()}", lag_interval_s=0.5, stores=["s3"]),
        metrics,
        clock=lambda: now[0],
    )
    monitor.last = LagSnapshot(
        at=now[0],
        high_watermarks={("t", 0): 10},
        stores={"s3": {("t", 0): PartitionLag(4, 10, 6, oldest_timestamp_s=now[0] - 30)}},
    )
    now[0] += 70
    try:
        started = time.monotonic()
        monitor.check_safely()
        assert time.monotonic() - started < 10
    finally:
        monitor.close()
    sample = metrics.registry.get_sample_value
    assert monitor.broker_ok is False
    assert sample("replicator_lag_check_errors_total") == 1
    labels = {"store": "s3", "topic": "t", "partition": "0"}
    assert sample("replicator_store_lag_seconds", labels) == 100


def test_snapshot_seconds() -> None:
    snap = LagSnapshot(
        at=100.0,
        stores={
            "s3": {
                ("t", 0): PartitionLag(5, 5, 0, None),
                ("t", 1): PartitionLag(1, 5, 4, 40.0),
                ("t", 2): PartitionLag(1, 5, 4, 140.0),  # a record stamped in the future
            }
        },
    )
    assert snap.seconds("s3", ("t", 0), 100.0) == 0
    assert snap.seconds("s3", ("t", 1), 100.0) == 60
    assert snap.seconds("s3", ("t", 2), 100.0) == 0


# ---------------------------------------------------------------------------- probes
class FakeService:
    def __init__(self, stores: dict[str, bool]) -> None:
        self.metrics = Metrics(stores=list(stores))
        self.last_loop_at = time.monotonic()
        self.stores = stores
        self.dead_letter: dict[str, Any] = {"delivering": True, "undelivered": 0}
        for name, up in stores.items():
            self.metrics.store_up.labels(name).set(1 if up else 0)

    def readiness(self) -> dict[str, Any]:
        return {"broker": True, "stores": dict(self.stores), "dead_letter": self.dead_letter}


class FakeLag:
    broker_ok = True

    def alive(self) -> bool:
        return True


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def test_probes_answer_for_kubernetes() -> None:
    service = FakeService({"s3": True, "azure": False})
    lag = FakeLag()
    probes = Probes(service.metrics)
    server = start_http("127.0.0.1", 0, probes)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        # -- before the service exists: alive, not ready, and the reason
        assert json.loads(get(f"{base}/healthz")[1]) == {"alive": True, "phase": "starting"}
        probes.starting("waiting_for_broker", "Kafka at k:9092 does not answer: timed out")
        assert get(f"{base}/healthz")[0] == 200
        status, body = get(f"{base}/readyz")
        assert (status, json.loads(body)) == (
            503,
            {
                "ready": False,
                "phase": "waiting_for_broker",
                "reason": "Kafka at k:9092 does not answer: timed out",
            },
        )
        assert "replicator_ready 0.0" in get(f"{base}/metrics")[1]

        # -- the service runs
        probes.attach(cast(Replicator, service), cast(LagMonitor, lag))
        status, body = get(f"{base}/readyz")
        assert status == 200
        assert json.loads(body) == {
            "ready": True,
            "phase": "running",
            "broker": True,
            "stores": {"s3": True, "azure": False},
            "dead_letter": {"delivering": True, "undelivered": 0},
        }
        assert "replicator_ready 1.0" in get(f"{base}/metrics")[1]
        # A dead-letter topic that does not acknowledge is a detail, not unreadiness.
        service.dead_letter = {"delivering": False, "undelivered": 3, "error": "e"}
        status, body = get(f"{base}/readyz")
        assert status == 200 and json.loads(body)["dead_letter"] == service.dead_letter
        service.stores["s3"] = False  # no store answers
        service.metrics.store_up.labels("s3").set(0)
        status, body = get(f"{base}/readyz")
        assert status == 503 and json.loads(body)["stores"] == {"s3": False, "azure": False}
        assert json.loads(body)["reason"] == "no store accepts writes (see the store_down logs)"
        service.stores["s3"] = True  # up for the loop, but never seen answering: not ready
        assert get(f"{base}/readyz")[0] == 503
        service.metrics.store_up.labels("s3").set(1)
        lag.broker_ok = False
        status, body = get(f"{base}/readyz")
        assert status == 503 and json.loads(body)["broker"] is False
        assert json.loads(body)["reason"].startswith("the broker does not answer")
        assert "replicator_ready 0.0" in get(f"{base}/metrics")[1]

        status, body = get(f"{base}/healthz")
        assert status == 200 and json.loads(body)["alive"] is True
        service.last_loop_at -= 3600  # the loop is stuck
        status, body = get(f"{base}/healthz")
        assert status == 503 and json.loads(body)["alive"] is False

        status, body = get(f"{base}/metrics")
        assert status == 200 and "replicator_store_up" in body
        assert get(f"{base}/nothing")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_event_budget_caps_lines_per_key_and_says_how_many_were_left_out() -> None:
    budget = EventBudget(per_window=3, window_s=60.0)
    taken = [budget.take("oversized", 10.0 + i * 0.1) for i in range(5)]
    assert taken == [0, 0, 0, None, None]  # three lines, then two left out
    assert budget.take("not_wire_format", 11.0) == 0  # each reason has its own budget
    assert budget.take("oversized", 69.9) is None  # still the same window
    # A new window: logged again, saying how many were left out meanwhile.
    assert budget.take("oversized", 70.0) == 3
    assert budget.take("oversized", 70.1) == 0
