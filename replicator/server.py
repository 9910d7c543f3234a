"""HTTP endpoints for Kubernetes and Prometheus: /metrics, /healthz, /readyz."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from replicator.pipeline import Replicator

HEALTHY_LOOP_AGE_S = 60.0  # the loop turns many times a second; a minute without a turn is stuck


def start_http(host: str, port: int, service: Replicator) -> ThreadingHTTPServer:
    """Serve in a daemon thread; `port=0` picks a free port (read it from server.server_port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(service.metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                age = time.monotonic() - service.last_loop_at
                ok = age < HEALTHY_LOOP_AGE_S
                body = {"alive": ok, "loop_age_s": round(age, 3)}
                self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
            elif path == "/readyz":
                status = service.readiness()
                ok = status["broker"] and any(status["stores"].values())
                self._send(200 if ok else 503, json.dumps(status).encode(), "application/json")
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
    return server
