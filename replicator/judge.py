"""Decode and check records, in this process or in worker processes (the second core).

A verdict is `(schema_id, "", "")` for a good record (its Avro body is the value after the
5-byte header) or `(None, reason, detail)` for a bad one. Only values cross the process
boundary, never Kafka messages, and verdicts come back in order.

Decoding and the health-data checks are the service's largest CPU cost per record (see
docs/performance.md); the rest of the loop (consume, chunk, encode, dispatch) stays on the
main thread, so a worker process lets both run at once.
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from replicator.container import encode_envelope
from replicator.schemas import DecodeError, SchemaRegistry, decode_wire
from replicator.validation import check_record

Verdict = tuple[int | None, str, str]
GOOD = ""

_registry: SchemaRegistry | None = None
_max_bytes = 0


def judge(
    registry: SchemaRegistry, schema_topic: str, value: bytes | None, max_bytes: int
) -> Verdict:
    try:
        decoded = decode_wire(registry, schema_topic, value, max_bytes=max_bytes)
    except DecodeError as exc:
        return None, exc.reason, exc.detail
    violation = check_record(schema_topic, decoded.record)
    if violation is not None:
        return None, violation.reason, violation.detail
    return decoded.schema.id, GOOD, GOOD


def _init_worker(schemas_dir: str, max_bytes: int) -> None:
    global _registry, _max_bytes  # noqa: PLW0603 - one registry per worker process
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _registry = SchemaRegistry.load(Path(schemas_dir))
    _max_bytes = max_bytes


Item = tuple[str, bytes | None, int, int, bytes | None]  # schema topic, value, offset, ts, key


def judge_items(
    registry: SchemaRegistry, items: list[Item], max_bytes: int
) -> tuple[list[Verdict], list[bytes | None]]:
    """The verdict of each item, in order, and for each good one its envelope record
    (`container.encode_envelope`, first branch): encoding it here, where decoding already
    happens, keeps that per-record work off the service's main thread."""
    verdicts: list[Verdict] = []
    envelopes: list[bytes | None] = []
    for topic, value, offset, timestamp_ms, key in items:
        verdict = judge(registry, topic, value, max_bytes)
        verdicts.append(verdict)
        if verdict[0] is None:
            envelopes.append(None)
        else:
            assert value is not None
            envelopes.append(encode_envelope(offset, timestamp_ms, key, value[5:], 0))
    return verdicts, envelopes


def judge_batch(items: list[Item]) -> tuple[list[Verdict], list[bytes | None]]:
    """In a worker: `judge_items` with the worker's registry."""
    assert _registry is not None, "worker not initialised"
    return judge_items(_registry, items, _max_bytes)


def start_pool(workers: int, schemas_dir: Path, max_bytes: int) -> ProcessPoolExecutor:
    # spawn, not fork: the parent runs librdkafka threads, which a fork would copy mid-state.
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(str(schemas_dir), max_bytes),
    )
