"""Lag you can trust in Grafana, proven against a real Prometheus server (Debian's package).

A real `replicator run` replicates into the real local servers while a real Prometheus
scrapes its /metrics every second and evaluates the project's alert rules every second:

- lag rises while records arrive and returns to 0, and the exported positions equal the
  real end offsets;
- while Azure is stopped, its lag in records and seconds grows, its up gauge is 0, and
  Prometheus fires ReplicatorStoreDown and the lag alerts, while S3 stays at 0;
- when Azure is back, its lag returns to 0 and the alerts resolve;
- every query of the Grafana dashboard returns data;
- the logs are JSON lines with the fields SREs filter on, and neither they nor /metrics
  hold a secret of the run;
- /healthz and /readyz answer for Kubernetes, and /readyz is 503 when no store answers;
- /metrics and /healthz answer while the broker does not, and /readyz says why;
- the live consumer's figures (records consumed per topic, owned partitions, rebalances,
  librdkafka's own statistics) and each store's last put and commit are exported.

The rules Prometheus loads are monitoring/alerts.rules.yml with every `for:` shortened to
5 s (`rules_with_for`, which checks that nothing else differs): a test cannot wait the
production durations, but it evaluates the production expressions and thresholds. To cross
the lag thresholds (15 minutes, one hour) within seconds, the records produced while Azure
is down start with a burst stamped two hours ago, as a backfill of old events would be:
lag in seconds is the age of the oldest record not in the store, by the record's timestamp.

Records are produced one per batch (linger.ms=0, batch.num.messages=1): the local broker's
high watermark is only right then (Tansu reports the last batch's base offset + 1 after a
batched produce), and the test compares exact offsets.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from replicator.config import Settings
from replicator.devtools.produce import produce
from replicator.devtools.stack import AZURITE_ACCOUNT, AZURITE_KEY, LocalStack
from replicator.devtools.synthetic import SyntheticSource
from replicator.model import TP
from replicator.schemas import SchemaRegistry
from tests.support.loopback import LoopbackServer, pump
from tests.support.monitoring import dashboard_queries, rules_with_for, substitute, tool
from tests.support.service import Service

pytestmark = pytest.mark.integration

ONE_PER_BATCH = {"linger.ms": 0, "batch.num.messages": 1}
LAG_ALERTS = {"ReplicatorStoreLagHigh", "ReplicatorStoreLagCritical"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Answer:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(url: str, timeout: float = 5.0) -> Answer:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return Answer(response.status, response.read().decode())
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, exc.read().decode())


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Prometheus:
    """A real Prometheus server on a free loopback port, scraping one target every second."""

    def __init__(self, root: Path, target: str, rules: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "rules.yml").write_text(rules)
        (root / "prometheus.yml").write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "rule_files: [rules.yml]\n"
            "scrape_configs:\n"
            "  - job_name: replicator\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={self.root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: http_get(f"{self.url}/-/ready").status == 200, 30, "prometheus ready")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def _api(self, path: str, **params: Any) -> Any:
        answer = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        assert answer.status == 200, (path, params, answer.body[:500])
        data = answer.json()
        assert data["status"] == "success", data
        return data["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._api("query", query=expr)["result"]
        return result

    def values(self, expr: str, by: str = "store") -> dict[str, float]:
        """An instant query's values, keyed by one label."""
        return {r["metric"].get(by, ""): float(r["value"][1]) for r in self.query(expr)}

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._api(
            "query_range", query=expr, start=start, end=end, step="1s"
        )["result"]
        return result

    def alerts(self, state: str = "firing") -> set[tuple[str, str]]:
        """(alert name, store label) of the alerts in `state`."""
        return {
            (a["labels"]["alertname"], a["labels"].get("store", ""))
            for a in self._api("alerts")["alerts"]
            if a["state"] == state
        }

    def all_alerts(self) -> set[tuple[str, str]]:
        return {
            (a["labels"]["alertname"], a["labels"].get("store", ""))
            for a in self._api("alerts")["alerts"]
        }


@contextmanager
def prometheus_for(root: Path, metrics_port: int) -> Iterator[Prometheus]:
    server = Prometheus(root, f"127.0.0.1:{metrics_port}", rules_with_for("5s"))
    try:
        yield server.start()
    finally:
        server.stop()


def produce_one_per_batch(
    settings: Settings, count: int, rate: float, seed: int, bad_share: float = 0.0
) -> dict[TP, int]:
    """Produce with the product's producer, one record per batch; the end offsets."""
    report = produce(
        {**settings.kafka_common(), **ONE_PER_BATCH},
        settings.topics,
        count,
        rate,
        seed,
        bad_share,
        None,
        SchemaRegistry.load(settings.schemas_dir),
        schema_topics=dict(settings.schema_topics),
    )
    assert report.delivered == count and report.failed == 0, report
    return dict(report.end_offsets)


class OldRecords:
    """Produces good records in the background: a burst stamped `age_s` ago, then records
    stamped now at `rate` per second, until stopped. Remembers the end offsets."""

    def __init__(self, settings: Settings, burst: int, age_s: float, rate: float) -> None:
        self.settings = settings
        self.burst, self.age_s, self.rate = burst, age_s, rate
        self.ends: dict[TP, int] = {}
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="old-records", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> OldRecords:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # reported by stop()
            self._error = exc

    def _produce(self) -> None:
        s = self.settings
        producer = Producer({**s.kafka_common(), **ONE_PER_BATCH, "enable.idempotence": True})
        source = SyntheticSource(7, SchemaRegistry.load(s.schemas_dir))
        failures: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
                return
            tp = (msg.topic(), msg.partition())
            self.ends[tp] = max(self.ends.get(tp, 0), msg.offset() + 1)

        try:
            while not self._stop.is_set():
                old = self.sent < self.burst
                topic = s.topics[self.sent % len(s.topics)]
                key, value, _schema = source.next_wire(s.schema_topic(topic))
                stamp = time.time() - (self.age_s if old else 0.0)
                producer.produce(
                    topic, value=value, key=key, timestamp=int(stamp * 1000), on_delivery=delivered
                )
                self.sent += 1
                producer.poll(0)
                if not old:
                    self._stop.wait(1.0 / self.rate)
        finally:
            assert producer.flush(30) == 0
        assert not failures, failures[:3]


def series_max(result: list[dict[str, Any]]) -> float:
    values = [float(v) for series in result for _, v in series["values"]]
    values = [v for v in values if not math.isnan(v)]
    return max(values) if values else math.nan


def test_lag_metrics_alerts_and_dashboard_against_a_real_prometheus(
    stack: LocalStack, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    metrics_port = free_port()
    settings = settings_factory(
        metrics_port=metrics_port,
        lag_interval_s=1.0,
        health_interval_s=1.0,
        write_retry_s=2.0,
        chunk_max_records=100,
        kafka_statistics_interval_ms=1000,
    )
    base = f"http://127.0.0.1:{metrics_port}"
    lag_records = "sum by (store) (max by (store, topic, partition) (replicator_store_lag_records))"
    lag_seconds = "max by (store) (replicator_store_lag_seconds)"
    partitions = len(settings.topics) * 3
    service = Service(settings, tmp_path)
    with prometheus_for(tmp_path / "prometheus", metrics_port) as prom:
        service.start()
        started = time.time()
        try:
            # -- the service is up: probes, and every partition exported for every store
            ready = wait_for(lambda: http_get(f"{base}/readyz").status == 200, 60, "readyz 200")
            assert ready
            body = http_get(f"{base}/readyz").json()
            assert body == {
                "ready": True,
                "phase": "running",
                "broker": True,
                "stores": {"s3": True, "azure": True},
                "dead_letter": {"delivering": True, "undelivered": 0},
                "schema_registry": {"mode": "file", "available": True, "held_partitions": []},
            }
            health = http_get(f"{base}/healthz")
            assert health.status == 200 and health.json()["alive"] is True, health
            wait_for(
                lambda: len(prom.query("replicator_store_lag_records")) == 2 * partitions,
                30,
                "every partition's lag for both stores in Prometheus",
            )

            # -- records arrive: lag rises, then returns to 0
            phase_a = time.time()
            ends = produce_one_per_batch(settings, count=400, rate=100, seed=51, bad_share=0.02)
            wait_for(
                lambda: (
                    prom.values(lag_records) == {"s3": 0.0, "azure": 0.0}
                    and prom.values(lag_seconds) == {"s3": 0.0, "azure": 0.0}
                ),
                60,
                "lag back to 0 in Prometheus",
            )
            peak_records = {
                store: series_max(
                    prom.query_range(
                        f'sum(max by (topic, partition) (replicator_store_lag_records{{store="{store}"}}))',
                        phase_a,
                        time.time(),
                    )
                )
                for store in ("s3", "azure")
            }
            peak_seconds = {
                store: series_max(
                    prom.query_range(
                        f'max(replicator_store_lag_seconds{{store="{store}"}})',
                        phase_a,
                        time.time(),
                    )
                )
                for store in ("s3", "azure")
            }
            assert all(v > 0 for v in peak_records.values()), peak_records
            assert all(v > 0 for v in peak_seconds.values()), peak_seconds
            # the exported positions are the real end offsets
            committed = {
                (r["metric"]["store"], r["metric"]["topic"], int(r["metric"]["partition"])): float(
                    r["value"][1]
                )
                for r in prom.query("replicator_store_committed_offset")
            }
            for (topic, partition), end in ends.items():
                for store in ("s3", "azure"):
                    assert committed[(store, topic, partition)] == end, (store, topic, partition)
            high = {
                (r["metric"]["topic"], int(r["metric"]["partition"])): float(r["value"][1])
                for r in prom.query("replicator_high_watermark_offset")
            }
            assert {tp: high[tp] for tp in ends} == {tp: float(e) for tp, e in ends.items()}
            check_service_metrics(prom, settings, ends, started, partitions)

            # -- Azure stops: its lag grows, its up gauge is 0, the alerts fire; S3 goes on
            stack.stop_service("azure")
            with OldRecords(settings, burst=30, age_s=2 * 3600, rate=20) as old:
                wait_for(
                    lambda: (
                        prom.values("min by (store) (replicator_store_up)")
                        == {"s3": 1.0, "azure": 0.0}
                    ),
                    60,
                    "azure down (store up gauge 0), s3 up",
                )
                first = prom.values(lag_records)["azure"], prom.values(lag_seconds)["azure"]
                wait_for(
                    lambda: prom.values(lag_records)["azure"] > first[0] + 20,
                    30,
                    "azure's lag in records growing",
                )
                second = prom.values(lag_records)["azure"], prom.values(lag_seconds)["azure"]
                assert second[1] > first[1] > 2 * 3600 - 60, (first, second)
                wait_for(
                    lambda: (
                        {("ReplicatorStoreDown", "azure")}
                        | {(name, "azure") for name in LAG_ALERTS}
                        <= prom.alerts("firing")
                    ),
                    60,
                    "ReplicatorStoreDown and the lag alerts firing for azure",
                )
                readiness = http_get(f"{base}/readyz")
                assert readiness.status == 200, readiness
                assert readiness.json()["stores"] == {"s3": True, "azure": False}
            ends = {tp: max(ends.get(tp, 0), old.ends.get(tp, 0)) for tp in {*ends, *old.ends}}
            # S3 holds everything while Azure is still down
            wait_for(
                lambda: (
                    prom.values(lag_records).get("s3") == 0.0
                    and prom.values(lag_seconds).get("s3") == 0.0
                ),
                60,
                "s3's lag at 0 while azure is down",
            )
            assert prom.values(lag_records)["azure"] >= old.sent - 1
            assert ("ReplicatorStoreDown", "s3") not in prom.alerts("firing")

            # -- Azure is back: it catches up, its lag returns to 0, the alerts resolve
            stack.start_service("azure")
            wait_for(
                lambda: (
                    prom.values(lag_records) == {"s3": 0.0, "azure": 0.0}
                    and prom.values(lag_seconds) == {"s3": 0.0, "azure": 0.0}
                    and prom.values("min by (store) (replicator_store_up)")
                    == {"s3": 1.0, "azure": 1.0}
                ),
                90,
                "azure caught up: lag 0, up 1",
            )
            wait_for(
                lambda: (
                    not {
                        (name, store)
                        for name, store in prom.all_alerts()
                        if name in LAG_ALERTS | {"ReplicatorStoreDown"}
                    }
                ),
                30,
                "the store-down and lag alerts resolved",
            )
            # dead letters were produced: that alert fires, and nothing else remains
            assert {name for name, _ in prom.alerts("firing")} <= {"ReplicatorDeadLettersRising"}
            committed = {
                (r["metric"]["store"], r["metric"]["topic"], int(r["metric"]["partition"])): float(
                    r["value"][1]
                )
                for r in prom.query("replicator_store_committed_offset")
            }
            for (topic, partition), end in ends.items():
                for store in ("s3", "azure"):
                    assert committed[(store, topic, partition)] == end, (store, topic, partition)

            # -- every dashboard query returns data over the run
            empty = []
            for title, expr in dashboard_queries():
                query = substitute(expr, {"__rate_interval": "10s"})
                result = prom.query_range(query, started, time.time())
                if math.isnan(series_max(result)):
                    empty.append(title)
            assert not empty, f"dashboard panels without data: {empty}"

            metrics_text = http_get(f"{base}/metrics").body
            probes = http_get(f"{base}/healthz").body + http_get(f"{base}/readyz").body
        finally:
            if not stack.answering("azure"):
                stack.start_service("azure")
            code = service.stop()
    assert code == 0, service.log_text()[-3000:]

    # -- secrets: none in the logs, /metrics or the probes' bodies
    log_text = service.log_text()
    secrets = {
        "s3 secret key": stack.s3_secret_key,
        "azure account key": AZURITE_KEY,
        "azure connection string": stack.azure_connection_string,
    }
    for name, value in secrets.items():
        for where, text in (("log", log_text), ("/metrics", metrics_text), ("probes", probes)):
            assert value not in text, f"the {name} appears in the {where}"

    # -- logs: one JSON object per line, with the fields SREs filter on
    events = [json.loads(line) for line in log_text.splitlines() if line.strip()]
    for event in events:
        assert {"time", "level", "event"} <= set(event), event
    by_name: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_name.setdefault(event["event"], []).append(event)
    assert by_name["configuration"][0]["s3_secret_key"] == "**********"
    assert by_name["configuration"][0]["azure_connection_string"] == "**********"
    assert any(e["store"] == "azure" for e in by_name["store_down"])
    assert all(
        {"topic", "partition", "offset", "reason"} <= set(e) for e in by_name["dead_lettered"]
    )
    assert all("store" in e for e in by_name["catchup_started"])
    assert all({"topic", "partition", "start"} <= set(e) for e in by_name["partition_assigned"])
    print(f"\nend-to-end metrics test: {time.time() - started:.1f}s of service run")


def check_service_metrics(
    prom: Prometheus, settings: Settings, ends: dict[TP, int], started: float, partitions: int
) -> None:
    """The metrics an SRE expects besides lag, once every record produced so far is in both
    stores: what the live consumer read, what it owns, its own statistics, each store's
    last put and commit, readiness."""
    consumed = prom.values("sum by (topic) (replicator_records_consumed_total)", by="topic")
    for topic in settings.topics:
        produced = sum(end for (t, _p), end in ends.items() if t == topic)
        assert consumed[topic] >= produced > 0, (topic, consumed, produced)
    assert prom.values("replicator_assigned_partitions", by="") == {"": partitions}
    rebalances = prom.values("replicator_rebalances_total", by="event")
    assert rebalances["assigned"] >= 1, rebalances
    assert prom.values("replicator_ready", by="") == {"": 1.0}

    def client_statistics() -> bool:
        lag = prom.query("replicator_kafka_consumer_lag_records")
        fetchq = prom.query("replicator_kafka_fetch_queue_records")
        rtt = prom.values("replicator_kafka_broker_rtt_seconds", by="broker")
        return len(lag) == partitions and len(fetchq) == partitions and bool(rtt)

    wait_for(client_statistics, 30, "the client's statistics for every owned partition")
    rtt = prom.values("replicator_kafka_broker_rtt_seconds", by="broker")
    assert all(v > 0 for v in rtt.values()), rtt
    for name in ("last_put", "last_commit"):
        stamps = prom.values(f"max by (store) (replicator_store_{name}_timestamp_seconds)")
        # moved past the replica's start: a put and a commit happened for each store
        assert set(stamps) == {"s3", "azure"}, stamps
        assert all(v > started for v in stamps.values()), (name, stamps, started)


class Relay(LoopbackServer):
    """A TCP relay to the broker on a port chosen beforehand: until it starts, nothing
    listens there (the broker "does not answer")."""

    name = "broker-relay"

    def __init__(self, port: int, upstream: tuple[str, int]) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        self.upstream = upstream
        super().__init__(listener)

    def _serve(self, sock: socket.socket) -> None:
        self._track(sock)
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            sock.close()
            return
        self._track(upstream)
        threading.Thread(target=pump, args=(upstream, sock), daemon=True).start()
        pump(sock, upstream)


def test_metrics_and_healthz_answer_while_the_broker_does_not_and_readyz_says_why(
    stack: LocalStack, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """A replica that cannot reach the broker is scraped and says why it is not ready;
    once the broker answers, the same process becomes ready."""
    broker_port, metrics_port = free_port(), free_port()  # nothing listens on broker_port yet
    host, _, port = stack.kafka_bootstrap.rpartition(":")
    settings = settings_factory(
        kafka_bootstrap=f"127.0.0.1:{broker_port}", metrics_port=metrics_port, lag_interval_s=1.0
    )
    base = f"http://127.0.0.1:{metrics_port}"
    service = Service(settings, tmp_path).start()
    relay: Relay | None = None
    try:
        waiting = wait_for(
            lambda: (
                (a := http_get(f"{base}/readyz")).status == 503
                and "does not answer" in a.json().get("reason", "")
                and a
            ),
            60,
            "readyz saying the broker does not answer",
        )
        assert waiting.json() == {
            "ready": False,
            "phase": "waiting_for_broker",
            "reason": waiting.json()["reason"],
        }
        assert waiting.json()["reason"].startswith(
            f"Kafka at 127.0.0.1:{broker_port} does not answer: "
        )
        health = http_get(f"{base}/healthz")
        assert (health.status, health.json()) == (
            200,
            {"alive": True, "phase": "waiting_for_broker"},
        )
        metrics = http_get(f"{base}/metrics")
        assert metrics.status == 200
        lines = metrics.body.splitlines()
        assert "replicator_ready 0.0" in lines
        assert any(line.startswith("process_start_time_seconds ") for line in lines)
        assert any(line.startswith("replicator_build_info{") for line in lines)
        assert service.alive()

        # -- the broker answers: the same process starts the service and becomes ready
        relay = Relay(broker_port, (host or "127.0.0.1", int(port))).start()
        ready = wait_for(
            lambda: (a := http_get(f"{base}/readyz")).status == 200 and a, 90, "readyz 200"
        )
        assert ready.json() == {
            "ready": True,
            "phase": "running",
            "broker": True,
            "stores": {"s3": True, "azure": True},
            "dead_letter": {"delivering": True, "undelivered": 0},
            "schema_registry": {"mode": "file", "available": True, "held_partitions": []},
        }
        assert "replicator_ready 1.0" in http_get(f"{base}/metrics").body.splitlines()
    finally:
        code = service.stop()
        if relay is not None:
            relay.close()
    assert code == 0, service.log_text()[-3000:]
    events = [json.loads(line)["event"] for line in service.log_text().splitlines() if line]
    assert "waiting_for_broker" in events and "http_listening" in events
    assert events.index("http_listening") < events.index("waiting_for_broker")


def test_readyz_is_503_and_lag_still_exported_when_no_store_answers(
    stack: LocalStack, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    dead = free_port()  # nothing listens there
    metrics_port = free_port()
    settings = settings_factory(
        metrics_port=metrics_port,
        lag_interval_s=1.0,
        health_interval_s=1.0,
        store_timeout_s=1.0,
        s3_endpoint=f"http://127.0.0.1:{dead}",
        azure_connection_string=(
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{dead}/{AZURITE_ACCOUNT};"
        ),
    )
    ends = produce_one_per_batch(settings, count=30, rate=1000, seed=52)
    base = f"http://127.0.0.1:{metrics_port}"
    service = Service(settings, tmp_path).start()
    try:
        answer = wait_for(
            lambda: (a := http_get(f"{base}/readyz")).body and a.json().get("broker") and a,
            60,
            "readyz answering with the broker reached",
        )
        assert answer.status == 503, answer
        assert answer.json() == {
            "ready": False,
            "phase": "running",
            "broker": True,
            "stores": {"s3": False, "azure": False},
            "dead_letter": {"delivering": True, "undelivered": 0},
            "schema_registry": {"mode": "file", "available": True, "held_partitions": []},
            "reason": "no store accepts writes (see the store_down logs)",
        }
        health = http_get(f"{base}/healthz")
        assert health.status == 200 and health.json()["alive"] is True, health

        def lag_of(text: str, name: str, store: str) -> list[float]:
            prefix = f"{name}{{"
            return [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith(prefix) and f'store="{store}"' in line
            ]

        def exported() -> str | None:
            text = http_get(f"{base}/metrics").body
            done = all(
                sum(lag_of(text, "replicator_store_lag_records", store)) == sum(ends.values())
                and f'replicator_store_up{{store="{store}"}} 0.0' in text
                for store in ("s3", "azure")
            )
            return text if done else None

        text = wait_for(exported, 30, "the lag of the down stores exported")
        for store in ("s3", "azure"):
            assert sum(lag_of(text, "replicator_store_lag_records", store)) == sum(ends.values())
            assert max(lag_of(text, "replicator_store_lag_seconds", store)) > 0
            assert f'replicator_store_up{{store="{store}"}} 0.0' in text
    finally:
        code = service.stop()
    assert code == 0, service.log_text()[-3000:]
