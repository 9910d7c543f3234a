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
import weakref
from concurrent.futures import ProcessPoolExecutor
from io import BytesIO
from types import ModuleType
from typing import cast

from fastavro import schemaless_reader

from replicator.judge.compiled import Checker, checker_for
from replicator.judge.native import compiled, extension, native_programs
from replicator.judge.rules import Headers, check_record, find_identifier_in_message
from replicator.schemas import (
    HEADER_SIZE,
    DecodeError,
    SchemaRegistry,
    SchemaSpec,
    decode_wire,
    from_spec,
)

Verdict = tuple[int | None, str, str]
GOOD = ""

_registry: SchemaRegistry | None = None
_max_bytes = 0


def judge(
    registry: SchemaRegistry,
    schema_topic: str,
    value: bytes | None,
    max_bytes: int,
    key: bytes | None = None,
    headers: Headers | None = None,
) -> Verdict:
    """The verdict of one message: a NIR in its key or headers first (whatever the value),
    then the value's decode, then the health-data checks of the decoded record."""
    if key is not None or headers:
        found = find_identifier_in_message(key, headers)
        if found is not None:
            return None, found.reason, found.detail
    try:
        decoded = decode_wire(registry, schema_topic, value, max_bytes=max_bytes)
    except DecodeError as exc:
        return None, exc.reason, exc.detail
    violation = check_record(schema_topic, decoded.record)
    if violation is not None:
        return None, violation.reason, violation.detail
    return decoded.schema.id, GOOD, GOOD


def _init_worker(specs: tuple[SchemaSpec, ...], max_bytes: int) -> None:
    global _registry, _max_bytes  # noqa: PLW0603 - one registry per worker process
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _registry = SchemaRegistry({spec[0]: from_spec(spec) for spec in specs})
    _max_bytes = max_bytes
    _checkers(_registry)
    _programs(_registry)


# schema topic, value, offset, timestamp ms, key, headers
Item = tuple[str, bytes | None, int, int, bytes | None, Headers | None]


def judge_items(registry: SchemaRegistry, items: list[Item], max_bytes: int) -> list[Verdict]:
    """The verdict of each item, in order.

    Three paths, fastest first; a verdict never depends on the path taken:

    1. the compiled extension (`judge.native`), which accepts a well-formed, healthy record
       of a primitive-only schema, with ASCII key and headers holding no NIR, without
       decoding it into Python objects;
    2. for a record it is not sure about, the same reader as `judge` without its wrapper
       objects, then the checks compiled for its writer schema (`judge.compiled`, identical
       verdicts to `check_record`);
    3. anything else goes through `judge`, which names the reason."""
    native = _programs(registry)
    verdicts: list[Verdict | None]
    if native is None:
        verdicts = [None] * len(items)
    else:
        module, programs = native
        verdicts = module.accept(programs, items, max_bytes)
        if None not in verdicts:  # all accepted (the usual batch): no Python pass over them
            return cast(list[Verdict], verdicts)
    by_header = registry.by_header()
    checkers = _checkers(registry)
    for index, native_verdict in enumerate(verdicts):
        if native_verdict is not None:
            continue
        topic, value, _offset, _timestamp_ms, key, headers = items[index]
        record: object = None
        schema = None
        found = None
        if key is not None or headers:
            found = find_identifier_in_message(key, headers)
        if found is not None:
            verdicts[index] = (None, found.reason, found.detail)
            continue
        if value is not None and HEADER_SIZE <= len(value) <= max_bytes and value[0] == 0:
            schema = by_header.get(value[1:HEADER_SIZE])
            if schema is not None and topic in schema.topics:
                stream = BytesIO(value)
                stream.seek(HEADER_SIZE)
                try:
                    record = schemaless_reader(stream, schema.plain)
                except Exception:  # fastavro raises many types: `judge` tells which
                    record = None
                else:
                    if stream.tell() != len(value):
                        record = None
        if type(record) is not dict or schema is None:
            verdict = judge(registry, topic, value, max_bytes)  # key, headers: done above
        else:
            violation = checkers[schema.id](record)
            verdict = (
                (schema.id, GOOD, GOOD)
                if violation is None
                else (None, violation.reason, violation.detail)
            )
        verdicts[index] = verdict
    return cast(list[Verdict], verdicts)


# Per registry: (its generation when built, what was built). A registry only grows
# (`SchemaRegistry.add`): when its generation moves, the new schemas' checks and programs are
# built then, on first use, and the others kept (one integer compare per batch otherwise).
_compiled: weakref.WeakKeyDictionary[SchemaRegistry, tuple[int, dict[int, Checker]]] = (
    weakref.WeakKeyDictionary()
)


_Native = tuple[ModuleType, dict[int, object]]
_native: weakref.WeakKeyDictionary[SchemaRegistry, tuple[int, _Native | None]] = (
    weakref.WeakKeyDictionary()
)


def _programs(registry: SchemaRegistry) -> _Native | None:
    """The compiled extension and its programs for `registry`, made once per schema; None
    without it."""
    made = _native.get(registry)
    if made is not None and made[0] == registry.generation:
        return made[1]
    generation = registry.generation
    if made is None or made[1] is None:
        module, programs = extension(), native_programs(registry)
        native = None if module is None or programs is None else (module, programs)
    else:
        native = made[1]
        module, programs = native
        for schema_id in registry.ids():
            if schema_id not in programs:
                program = compiled(module, registry.get(schema_id))
                if program is not None:
                    programs[schema_id] = program
    _native[registry] = (generation, native)
    return native


def _checkers(registry: SchemaRegistry) -> dict[int, Checker]:
    """The compiled checks of every schema of `registry`, made once per schema."""
    made = _compiled.get(registry)
    if made is not None and made[0] == registry.generation:
        return made[1]
    checkers = made[1] if made is not None else {}
    for schema_id in registry.ids():
        if schema_id not in checkers:
            checkers[schema_id] = checker_for(registry.get(schema_id))
    _compiled[registry] = (registry.generation, checkers)
    return checkers


def judge_batch(items: list[Item], added: tuple[SchemaSpec, ...] = ()) -> list[Verdict]:
    """In a worker: `judge_items` with the worker's registry, after adding the schemas the
    main process found at run time (`added`: all of them, in order, each batch; the ones
    this worker has are skipped by their count)."""
    registry = _registry
    assert registry is not None, "worker not initialised"
    if len(added) > len(registry.added):
        for spec in added[len(registry.added) :]:
            registry.add(from_spec(spec))
    return judge_items(registry, items, _max_bytes)


def _ready() -> None:
    """Nothing: submitted once per worker so that the workers start at once."""


def start_pool(workers: int, specs: tuple[SchemaSpec, ...], max_bytes: int) -> ProcessPoolExecutor:
    """The worker processes, started now: a spawned worker takes about a second to import
    and compile its checks, which then overlaps with the consumer group join instead of
    delaying the first batch."""
    # spawn, not fork: the parent runs librdkafka threads, which a fork would copy mid-state.
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(specs, max_bytes),
    )
    for _ in range(workers):
        pool.submit(_ready)
    return pool
