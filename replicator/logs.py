"""Logging: one JSON object per line for machines, a readable line for terminals.

Call sites log an event name plus fields: `log.info("chunk_written", extra=fields(store="s3", ...))`.
Secrets never reach a log: settings are only ever logged through `Settings.printable()`, and
every line goes through `mask_secrets` on its way out (the configured secret values, and
anything shaped like a credential: `AccountKey=`, `sig=`, `password=`, `user:pass@` in a URL),
so a secret inside an exception's message or stack trace is masked too.

An exception logged with `exc_info` becomes three fields: `exc_type` (its qualified name),
`exc_message` and `stack` (the formatted traceback, chained causes included).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, SecretStr

_FIELDS = "replicator_fields"

# librdkafka's log lines (connection failures, broker changes) arrive on this logger: every
# Kafka client gets it through `Settings.kafka_common()`, so they are JSON lines too.
KAFKA_LOGGER = "replicator.kafka"
_DIGITS = re.compile(r"\d+")
# librdkafka's warning for a property of the other kind of client, e.g. "Configuration
# property fetch.min.bytes is a consumer property and will be ignored by this producer instance"
_OTHER_KIND = re.compile(
    r"is a (consumer|producer) property and will be ignored by this (producer|consumer) instance"
)


def fields(**values: Any) -> dict[str, Any]:
    return {_FIELDS: values}


class KafkaLogFilter(logging.Filter):
    """Turns confluent-kafka's `log(level, "%s [%s] %s", facility, client, text)` calls into
    the event `kafka_client_log` with the fields facility, client and detail.

    The warning that a property is ignored by a client of the other kind (a consumer
    property in a producer) is dropped: the operator's client properties go to every client
    by design.

    While a broker is down, each client retries its connections many times a second and
    librdkafka logs every failure: a line that repeats one already logged by the same client
    within `window_s` (digits aside) is dropped, and the next one logged says how many were
    (`suppressed`)."""

    def __init__(self, window_s: float = 30.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}  # -> (logged at, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and len(args) == 3 and record.msg == "%s [%s] %s"):
            return True
        facility, client, detail = (str(a) for a in args)
        if facility == "CONFWARN" and _OTHER_KIND.search(detail):
            return False  # every client gets every client property (docs/configuration.md)
        values: dict[str, Any] = {"facility": facility, "client": client, "detail": detail}
        key = (client, facility, _DIGITS.sub("0", detail))
        now = time.monotonic()
        with self._lock:
            logged_at, dropped = self._seen.get(key, (-self.window_s, 0))
            if now - logged_at < self.window_s:
                self._seen[key] = (logged_at, dropped + 1)
                return False
            if len(self._seen) > 1000:  # bounded: forget lines older than the window
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window_s}
            self._seen[key] = (now, 0)
        if dropped:
            values["suppressed"] = dropped
        record.msg = "kafka_client_log"
        record.args = ()
        setattr(record, _FIELDS, values)
        return True


logging.getLogger(KAFKA_LOGGER).addFilter(KafkaLogFilter())


class EventBudget:
    """At most `per_window` lines per key (e.g. a dead-letter reason) in each `window_s`, so a
    flood of bad input cannot flood the logs; the rest are counted, and the next line logged
    for that key says how many were left out. Pure logic: the caller passes the clock."""

    def __init__(self, per_window: int = 100, window_s: float = 60.0) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._state: dict[str, list[float]] = {}  # key -> [window start, logged, suppressed]

    def take(self, key: str, now: float) -> int | None:
        """None: leave this line out. Otherwise log it, with the number of lines left out
        for `key` since the last one logged (0: none)."""
        state = self._state.get(key)
        if state is None or now - state[0] >= self.window_s:
            suppressed = 0 if state is None else int(state[2])
            self._state[key] = [now, 1, 0]
            return suppressed
        if state[1] < self.per_window:
            state[1] += 1
            suppressed, state[2] = int(state[2]), 0
            return suppressed
        state[2] += 1
        return None


MASK = "**********"

# Credentials by shape, wherever they appear: connection-string and SAS parts, key=value
# pairs named like a secret, and the user:password part of a URL.
_SHAPES = re.compile(
    r"(?i)(?P<name>(?:AccountKey|SharedAccessSignature|sig|password|passwd|secret|"
    r"secret_?key|access_?key|token|sasl\.password)\s*[=:]\s*)(?P<value>[^\s;&,'\"]+)"
)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^/\s:@]+:)(?P<value>[^/\s@]+)@")
_secret_values: set[str] = set()
_secret_lock = threading.Lock()


def register_secrets(values: Iterable[str]) -> None:
    """Secret values to mask in every log line from now on (at least 4 characters long)."""
    with _secret_lock:
        _secret_values.update(v for v in values if len(v) >= 4)


def secrets_of(settings: BaseModel) -> list[str]:
    """The values of a settings model's secret fields (`SecretStr`)."""
    out = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            out.append(value.get_secret_value())
    return out


def mask_secrets(text: str) -> str:
    """`text` with every registered secret value and every credential-shaped value masked."""
    with _secret_lock:
        values = sorted(_secret_values, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    text = _SHAPES.sub(lambda m: m["name"] + MASK, text)
    return _URL_USERINFO.sub(lambda m: m["scheme"] + MASK + "@", text)


def exception_fields(exc_info: Any) -> dict[str, str]:
    """exc_type, exc_message and stack of a record's `exc_info` (masked by the caller)."""
    exc_type, exc, tb = exc_info
    name = f"{exc_type.__module__}.{exc_type.__qualname__}"
    if exc_type.__module__ == "builtins":
        name = exc_type.__qualname__
    return {
        "exc_type": name,
        "exc_message": str(exc),
        "stack": "".join(traceback.format_exception(exc_type, exc, tb)).rstrip("\n"),
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        out.update(getattr(record, _FIELDS, {}))
        if record.exc_info and record.exc_info[1] is not None:
            out["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            out.update(exception_fields(record.exc_info))
        elif record.stack_info:
            out["stack"] = record.stack_info
        return mask_secrets(json.dumps(out, default=str))


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extra = getattr(record, _FIELDS, {})
        tail = " ".join(f"{k}={v}" for k, v in extra.items())
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}"
        if tail:
            line += "  " + tail
        if record.exc_info and record.exc_info[1] is not None:
            line += f"  error={type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            line += "\n" + exception_fields(record.exc_info)["stack"]
        return mask_secrets(line)


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "human" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(HumanFormatter() if fmt == "human" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # SDK loggers can print request URLs (with SAS tokens) and headers: keep them quiet.
    # httpx (the schema registry client) logs every request at INFO: one line per lookup
    for name in (
        "azure",
        "botocore",
        "boto3",
        "urllib3",
        "s3transfer",
        "httpx",
        "httpx2",
        "httpcore",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
