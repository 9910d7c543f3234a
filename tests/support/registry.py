"""A small Confluent-compatible schema registry for the tests (no registry server can be
installed on the test machines: Confluent's and Apicurio's need a JVM and containers).

It implements the REST endpoints confluent-kafka's `SchemaRegistryClient` and `AvroSerializer`
call, with the documented answers and error bodies (`{"error_code": 40403, "message": ...}`):

- `POST /subjects/{subject}/versions`: register (the same schema text gets the same id in
  every subject, as Confluent's does; again in the same subject: the same version);
- `POST /subjects/{subject}`: look a schema up in a subject (40401 subject, 40403 schema);
- `GET /schemas/ids/{id}`, `GET /schemas/ids/{id}/versions`, `GET /schemas/ids/{id}/subjects`;
- `GET /subjects`, `GET /subjects/{subject}/versions`, `GET /subjects/{subject}/versions/{v}`
  (`latest` too).

`fail` switches it to an outage for every request: `"503"`, `"500"`, `"429"` (an answer with
that status and a documented body), `"timeout"` (no answer for `hang_s`), `"close"` (the
connection closed without an answer). Schemas are registered through the real client
(`register`, or an `AvroSerializer` with auto-registration), as producers do.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

Failure = Literal["503", "500", "429", "timeout", "close"]

_ERRORS: dict[str, tuple[int, int, str]] = {
    "503": (503, 50301, "Service unavailable"),
    "500": (500, 50001, "Error in the backend data store"),
    "429": (429, 42901, "Too many requests"),
}


class RegistryState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.schemas: dict[int, dict[str, Any]] = {}  # id -> {"schema": ..., "schemaType"?: ...}
        self.ids_by_text: dict[str, int] = {}
        self.subjects: dict[str, list[int]] = {}  # subject -> ids, version n at index n-1
        self.next_id = 101  # not the file registry's ids: a test cannot mix them up
        self.fail: Failure | None = None
        self.hang_s = 30.0
        self.requests: list[tuple[str, str]] = []  # (method, path), for the tests to read
        self.authorizations: set[str] = set()  # the Authorization headers seen

    def register(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        text = str(body["schema"])
        key = json.dumps(json.loads(text), sort_keys=True)
        kind = body.get("schemaType", "AVRO")
        with self.lock:
            schema_id = self.ids_by_text.get(f"{kind}:{key}")
            if schema_id is None:
                schema_id = self.next_id
                self.next_id += 1
                self.ids_by_text[f"{kind}:{key}"] = schema_id
                entry: dict[str, Any] = {"schema": text}
                if kind != "AVRO":
                    entry["schemaType"] = kind
                self.schemas[schema_id] = entry
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return {"id": schema_id}

    def version_of(self, subject: str, schema_id: int) -> dict[str, Any]:
        version = self.subjects[subject].index(schema_id) + 1
        return {"subject": subject, "version": version, "id": schema_id, **self.schemas[schema_id]}


def _not_found(code: int, what: str) -> tuple[int, dict[str, Any]]:
    return 404, {"error_code": code, "message": what}


class _Handler(BaseHTTPRequestHandler):
    state: RegistryState  # set on the subclass made per server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        state = self.state
        path = urlsplit(self.path).path
        state.requests.append((method, path))
        state.authorizations.add(self.headers.get("Authorization") or "")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        fail = state.fail
        if fail == "close":
            self.close_connection = True
            self.connection.close()
            return
        if fail == "timeout":
            time.sleep(state.hang_s)
            self.close_connection = True
            return
        if fail is not None:
            status, code, message = _ERRORS[fail]
            self._answer(status, {"error_code": code, "message": message})
            return
        body = json.loads(raw) if raw else {}
        status, answer = self._route(method, [unquote(p) for p in path.strip("/").split("/")], body)
        self._answer(status, answer)

    def _route(self, method: str, parts: list[str], body: dict[str, Any]) -> tuple[int, Any]:
        state = self.state
        with state.lock:
            if method == "GET" and parts[:2] == ["schemas", "ids"] and len(parts) >= 3:
                try:
                    schema_id = int(parts[2])
                except ValueError:
                    return _not_found(40403, "Schema not found")
                if schema_id not in state.schemas:
                    return _not_found(40403, "Schema not found")
                pairs = [
                    {"subject": s, "version": ids.index(schema_id) + 1}
                    for s, ids in sorted(state.subjects.items())
                    if schema_id in ids
                ]
                if len(parts) == 3:
                    return 200, state.schemas[schema_id]
                if parts[3] == "versions":
                    return 200, pairs
                if parts[3] == "subjects":
                    return 200, [p["subject"] for p in pairs]
            if method == "GET" and parts == ["subjects"]:
                return 200, sorted(state.subjects)
            if parts[0] == "subjects" and len(parts) >= 2:
                subject = parts[1]
                if method == "POST" and len(parts) == 3 and parts[2] == "versions":
                    return -1, body  # registered below, outside the lock
                if subject not in state.subjects:
                    return _not_found(40401, f"Subject '{subject}' not found.")
                ids = state.subjects[subject]
                if method == "POST" and len(parts) == 2:
                    key = json.dumps(json.loads(str(body["schema"])), sort_keys=True)
                    kind = body.get("schemaType", "AVRO")
                    found = state.ids_by_text.get(f"{kind}:{key}")
                    if found is None or found not in ids:
                        return _not_found(40403, "Schema not found")
                    return 200, state.version_of(subject, found)
                if method == "GET" and len(parts) == 3 and parts[2] == "versions":
                    return 200, list(range(1, len(ids) + 1))
                if method == "GET" and len(parts) == 4 and parts[2] == "versions":
                    index = len(ids) if parts[3] in ("latest", "-1") else int(parts[3])
                    if not 1 <= index <= len(ids):
                        return _not_found(40402, "Version not found.")
                    return 200, state.version_of(subject, ids[index - 1])
        return 404, {"error_code": 404, "message": "HTTP 404 Not Found"}

    def _answer(self, status: int, answer: Any) -> None:
        if status == -1:  # a registration
            parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
            status, answer = 200, self.state.register(parts[1], answer)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class TestRegistry:
    """The registry server on a loopback port, in a thread of the test process."""

    __test__ = False  # not a test class for pytest

    def __init__(self) -> None:
        self.state = RegistryState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> TestRegistry:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @contextmanager
    def outage(self, failure: Failure) -> Iterator[None]:
        self.state.fail = failure
        try:
            yield
        finally:
            self.state.fail = None

    def lookups(self) -> int:
        """GET /schemas/ids/... requests served (or failed) so far."""
        return sum(
            1 for m, p in self.state.requests if m == "GET" and p.startswith("/schemas/ids/")
        )


@contextmanager
def running_registry() -> Iterator[TestRegistry]:
    registry = TestRegistry().start()
    try:
        yield registry
    finally:
        registry.close()
