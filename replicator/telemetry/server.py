"""HTTP endpoints for Kubernetes and Prometheus: /metrics, /healthz, /readyz.

They answer from the process's first second (`run_service` starts them before it waits for
the broker), first from the start-up phase (`Probes.starting`), then from the service once
it is attached (`Probes.attach`):

- /metrics: the service's registry in the Prometheus text format (docs/metrics.md), with
  `replicator_ready` set to what /readyz would answer;
- /healthz (liveness): 200 during start-up (waiting for the broker is not a reason to
  restart), then while the service loop turns (a turn in the last minute) and the lag
  monitor's thread runs; 503 otherwise, and Kubernetes restarts the pod;
- /readyz (readiness): 200 when the broker answers and at least one store accepts writes;
  503 otherwise, with the reason. The JSON body says which:
  {"ready": .., "phase": .., "broker": .., "stores": {name: ..}, "reason": ..,
  "dead_letter": {"delivering": .., "undelivered": ..}}; the dead-letter detail does not
  change readiness (a dead-letter topic that does not acknowledge holds every commit, and
  alerts: ReplicatorDeadLetterUndelivered).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from replicator.logs import fields
from replicator.telemetry.lag import LagMonitor
from replicator.telemetry.metrics import Metrics

log = logging.getLogger("replicator.http")

HEALTHY_LOOP_AGE_S = 60.0  # the loop turns many times a second; a minute without a turn is stuck


class ServiceStatus(Protocol):
    """What the probes read of the service (`pipeline.service.Replicator` has it)."""

    @property
    def metrics(self) -> Metrics: ...

    @property
    def last_loop_at(self) -> float: ...

    def readiness(self) -> dict[str, Any]: ...


def health(service: ServiceStatus, lag: LagMonitor | None = None) -> tuple[bool, dict[str, Any]]:
    age = time.monotonic() - service.last_loop_at
    body: dict[str, Any] = {
        "alive": age < HEALTHY_LOOP_AGE_S,
        "phase": RUNNING,
        "loop_age_s": round(age, 3),
    }
    if lag is not None:
        body["lag_monitor"] = lag.alive()
        body["alive"] = body["alive"] and body["lag_monitor"]
    return bool(body["alive"]), body


def readiness(service: ServiceStatus, lag: LagMonitor | None = None) -> tuple[bool, dict[str, Any]]:
    """Ready: the broker answers and at least one store accepts writes.

    The broker counts as answering when the lag monitor's last check reached it (it asks
    every `lag_interval_s`), or, without a monitor, when the service loop has been assigned
    partitions and has seen no "all brokers down" since."""
    status = service.readiness()
    broker = bool(lag.broker_ok) if lag is not None else bool(status["broker"])
    # A store counts once the service has seen it answer (its up gauge is 1): at start-up,
    # before its first probe, it does not.
    registry = service.metrics.registry
    stores = {
        name: bool(up) and registry.get_sample_value("replicator_store_up", {"store": name}) == 1
        for name, up in status["stores"].items()
    }
    ready = broker and any(stores.values())
    body: dict[str, Any] = {"ready": ready, "phase": RUNNING, "broker": broker, "stores": stores}
    if not ready:
        reasons = [] if broker else ["the broker does not answer (see the lag_check_failed logs)"]
        if not any(stores.values()):
            reasons.append("no store accepts writes (see the store_down logs)")
        body["reason"] = "; ".join(reasons)
    if "dead_letter" in status:
        body["dead_letter"] = status["dead_letter"]
    if "schema_registry" in status:  # a detail too: held partitions wait, nothing is lost
        body["schema_registry"] = status["schema_registry"]
    return ready, body


# The phases of a replica's start, in order; /readyz names the current one.
STARTING = "starting"
WAITING_FOR_BROKER = "waiting_for_broker"
OPENING_STORES = "opening_stores"
RUNNING = "running"


class Probes:
    """What the endpoints answer: the start-up phase until `attach` hands them the service.

    Written by the thread that starts the service, read by the HTTP threads: each field is
    replaced whole, never mutated, so a reader sees one phase or the next."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.phase = STARTING
        self.detail = "loading the schemas"
        self.service: ServiceStatus | None = None
        self.lag: LagMonitor | None = None

    def starting(self, phase: str, detail: str) -> None:
        self.phase, self.detail = phase, detail

    def attach(self, service: ServiceStatus, lag: LagMonitor | None = None) -> None:
        self.lag = lag
        self.service = service
        self.phase = RUNNING

    def health(self) -> tuple[bool, dict[str, Any]]:
        service = self.service
        if service is None:
            return True, {"alive": True, "phase": self.phase}
        return health(service, self.lag)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        service = self.service
        if service is None:
            return False, {"ready": False, "phase": self.phase, "reason": self.detail}
        return readiness(service, self.lag)

    def metrics_text(self) -> bytes:
        self.metrics.ready.set(1 if self.readiness()[0] else 0)
        return generate_latest(self.metrics.registry)


def start_http(host: str, port: int, probes: Probes) -> ThreadingHTTPServer:
    """Serve in a daemon thread; `port=0` picks a free port (read it from server.server_port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, probes.metrics_text(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, body = probes.health()
                self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
            elif path == "/readyz":
                ok, body = probes.readiness()
                self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # probes every few seconds would flood the logs

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("http_listening", extra=fields(host=host, port=server.server_port))
    return server
