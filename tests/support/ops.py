"""Helpers for the verify / replay / cutover tests: replicate in-process until caught up, run
the CLI as an operator would, and damage a store on purpose."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from replicator.chunking import Chunk
from replicator.config import Settings
from replicator.container import encode_chunk
from replicator.keys import parse_key, partition_prefix
from replicator.model import TP, RawRecord
from replicator.ops.context import OpsContext
from replicator.pipeline.service import Replicator
from replicator.schemas import SchemaRegistry
from replicator.stores.factory import build_stores
from tests.support.service import settings_env


def replicate(settings: Settings, ends: dict[TP, int], timeout: float = 90.0) -> Replicator:
    """Run the service in this process until every store has committed `ends`."""
    service = Replicator(
        settings, build_stores(settings), SchemaRegistry.load(settings.schemas_dir)
    )
    started = time.monotonic()
    done: list[bool] = []

    def until(s: Replicator) -> bool:
        if s.caught_up(ends):
            done.append(True)
        return bool(done) or time.monotonic() - started > timeout

    service.run(until=until)  # (its committed offsets are forgotten once it stops)
    assert done, f"not caught up after {timeout} s"
    return service


@contextmanager
def ops(settings: Settings) -> Iterator[OpsContext]:
    ctx = OpsContext.open(settings, "test")
    try:
        yield ctx
    finally:
        ctx.close()


def cli(
    settings: Settings,
    *args: str,
    timeout: float = 120,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    env.update(settings_env(settings))
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "replicator", *args],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )


def keys(ctx: OpsContext, store: str, tp: TP) -> list[str]:
    return [o.key for o in ctx.stores[store].list(partition_prefix(*tp))]


def md5s(ctx: OpsContext, store: str) -> dict[str, str | None]:
    return {o.key: o.md5_hex for o in ctx.stores[store].list("")}


def replace(ctx: OpsContext, store: str, key: str, data: bytes) -> None:
    """Overwrite an object behind the service's back (delete, then create)."""
    ctx.stores[store].delete(key)
    ctx.stores[store].create_if_absent(key, data, hashlib.md5(data).digest(), {})


def rebuild(
    ctx: OpsContext, tp: TP, first: int, last: int, alter: int | None = None
) -> tuple[str, bytes]:
    """The container file for offsets [first, last] built from Kafka, as the service would
    (one chunk); with `alter`, the record at that offset gets another timestamp."""
    records: list[RawRecord] = []
    schema_ids: list[int] = []
    for msg in ctx.kafka.read_range(tp, first, last):
        record, sid = ctx.decode(msg)
        if record is None or sid is None:
            continue
        if record.offset == alter:
            record = RawRecord(record.offset, record.timestamp_ms + 1, record.key, record.body)
        records.append(record)
        schema_ids.append(sid)
    chunk = Chunk(
        tp[0], tp[1], first, last, records, schema_ids, last - first + 1 - len(records), "plan"
    )
    enc = encode_chunk(chunk, ctx.registry, ctx.settings.codec, ctx.settings.deflate_level)
    return enc.key, enc.data


def ranges(ctx: OpsContext, store: str, tp: TP) -> list[tuple[int, int]]:
    out = []
    for key in keys(ctx, store, tp):
        parsed = parse_key(key)
        assert parsed is not None, key
        out.append((parsed.first, parsed.last))
    return out


def report_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data
