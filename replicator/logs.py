"""Logging: one JSON object per line for machines, a readable line for terminals.

Call sites log an event name plus fields: `log.info("chunk_written", extra=fields(store="s3", ...))`.
Secrets never reach a log: settings are only ever logged through `Settings.printable()`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = "replicator_fields"


def fields(**values: Any) -> dict[str, Any]:
    return {_FIELDS: values}


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
        return json.dumps(out, default=str)


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
        return line


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "human" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(HumanFormatter() if fmt == "human" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # SDK loggers can print request URLs (with SAS tokens) and headers: keep them quiet.
    for name in ("azure", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.WARNING)
