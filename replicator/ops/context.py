"""What the operator tools (verify, replay, repair, cutover) share: the configured stores,
a read-only view of Kafka, each store's committed offsets, listings of one partition's
objects, and Kafka records turned into comparable prints.

Nothing here writes to Kafka: committed offsets are read from each store's group
(`<group_id>.<store>`) and only `advance` (asked for explicitly) commits to one.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, cast

import fastavro
from confluent_kafka import KafkaException, Message
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from replicator.chunking import ChunkRules
from replicator.config import Settings
from replicator.container import normalized_headers
from replicator.errors import ConfigError, ReplicatorError
from replicator.judge.registry import RegistryUnavailable, SchemaResolver, initial_registry
from replicator.judge.rules import check_record, find_identifier_in_message
from replicator.kafka.progress import ProgressLog
from replicator.kafka.view import KafkaUnavailable, KafkaView
from replicator.keys import offset_marker, parse_key, partition_prefix
from replicator.model import TP, RawRecord, RecordHeaders
from replicator.ops.findings import RecordPrint, canonical
from replicator.schemas import HEADER_SIZE, DecodeError, SchemaRegistry, decode_wire
from replicator.stores.base import ObjectInfo, Store
from replicator.stores.factory import build_store

# How long an operator tool waits for a schema registry that does not answer before it
# stops with an error (it never counts a record as bad because the registry was away).
REGISTRY_PATIENCE_S = 120.0


class BadArgument(ConfigError):
    """An option names something that does not exist (a topic, a partition, a store)."""


@dataclass
class OpsContext:
    settings: Settings
    registry: SchemaRegistry
    stores: dict[str, Store]
    kafka: KafkaView
    _progress: dict[str, ProgressLog] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # the writer schemas first seen (registry server mode): looked up as the service does
    resolver: SchemaResolver | None = None

    @classmethod
    def open(cls, settings: Settings, purpose: str) -> OpsContext:
        """Every configured store and a Kafka view; `close()` releases them."""
        registry = initial_registry(settings)
        resolver = SchemaResolver.from_settings(settings, registry)
        stores: dict[str, Store] = {}
        try:
            for name in settings.stores:
                stores[name] = build_store(settings, name)
            kafka = KafkaView(settings, purpose)
        except BaseException:
            for store in stores.values():
                store.close()
            raise
        return cls(settings, registry, stores, kafka, resolver=resolver)

    def known_schema(self, value: bytes | None) -> None:
        """Look up the writer schema of a wire-format value the registry does not know yet
        (registry server mode), waiting for a registry that does not answer (up to
        REGISTRY_PATIENCE_S, then a ReplicatorError): a record is never judged bad because
        the registry was away."""
        resolver = self.resolver
        if resolver is None or resolver.client is None or value is None:
            return
        if len(value) < HEADER_SIZE or value[0] != 0:
            return
        schema_id = int.from_bytes(value[1:HEADER_SIZE], "big")
        if self.registry.find(schema_id) is not None:
            return
        retrying = Retrying(
            retry=retry_if_exception_type(RegistryUnavailable),
            wait=wait_exponential(multiplier=0.5, max=10.0),
            stop=stop_after_delay(REGISTRY_PATIENCE_S),
            reraise=True,
        )
        try:
            retrying(resolver.lookup, schema_id)
        except RegistryUnavailable as exc:
            raise ReplicatorError(
                f"schema id {schema_id}: {exc} (for {REGISTRY_PATIENCE_S:.0f} s)"
            ) from None

    def close(self) -> None:
        for log in self._progress.values():
            log.close()
        self._progress.clear()
        self.kafka.close()
        for store in self.stores.values():
            store.close()

    def __enter__(self) -> OpsContext:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def rules(self) -> ChunkRules:
        return ChunkRules.from_settings(self.settings)

    # ------------------------------------------------------------------ targets
    def targets(
        self, topics: Iterable[str] | None = None, partitions: Iterable[int] | None = None
    ) -> list[TP]:
        """The (topic, partition) pairs selected by the filters; BadArgument for a topic the
        service does not replicate or a partition no selected topic has."""
        chosen = list(topics) if topics else list(self.settings.topics)
        unknown = [t for t in chosen if t not in self.settings.topics]
        if unknown:
            raise BadArgument(
                f"topic(s) {', '.join(unknown)} not replicated (REPLICATOR_TOPICS: "
                f"{', '.join(self.settings.topics)})"
            )
        wanted = set(partitions) if partitions else None
        out: list[TP] = []
        for topic in chosen:
            for p in self.kafka.partitions(topic):
                if wanted is None or p in wanted:
                    out.append((topic, p))
        if wanted is not None:
            missing = wanted - {p for _, p in out}
            if missing:
                raise BadArgument(
                    f"partition(s) {', '.join(map(str, sorted(missing)))} not found in "
                    f"{', '.join(chosen)}"
                )
        return out

    def check_store_names(self, names: Iterable[str]) -> list[str]:
        out = list(dict.fromkeys(names))
        unknown = [n for n in out if n not in self.stores]
        if unknown:
            raise BadArgument(
                f"store(s) {', '.join(unknown)} not configured (REPLICATOR_STORES: "
                f"{', '.join(self.stores)})"
            )
        return out

    # ------------------------------------------------------------------ progress
    def _log(self, store: str) -> ProgressLog:
        with self._lock:
            log = self._progress.get(store)
            if log is None:
                log = ProgressLog(self.settings.kafka_common(), self.settings.progress_group(store))
                self._progress[store] = log
            return log

    def committed(self, tps: list[TP]) -> dict[str, dict[TP, int | None]]:
        """Each store's committed offset (next offset to write) per partition."""
        out: dict[str, dict[TP, int | None]] = {}
        for store in self.stores:
            try:
                out[store] = self._log(store).committed(tps)
            except KafkaException as exc:
                raise KafkaUnavailable(
                    f"kafka: cannot read the committed offsets of group "
                    f"{self.settings.progress_group(store)}: {exc}"
                ) from None
        return out

    def advance(self, store: str, offsets: dict[TP, int]) -> None:
        """Commit `offsets` to the store's group (only when the operator asks for it)."""
        try:
            self._log(store).commit(offsets)
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"kafka: cannot commit to group {self.settings.progress_group(store)}: {exc}"
            ) from None

    # ------------------------------------------------------------------ listings
    def list_partition(
        self,
        store: str,
        tp: TP,
        first: int | None = None,
        last: int | None = None,
        count: Callable[[int], None] | None = None,
    ) -> list[ObjectInfo]:
        """The partition's objects in key order.

        With `first`, objects ending before it may be left out; with `last`, objects after
        the first one starting past it are left out (that one is kept: it tells where the
        next cut starts). A window starts a few chunks before `first` and falls back to the
        whole partition when no object of the window starts at or before `first`, so the
        object covering `first`, however long, is never missed."""
        lookback = 2 * self.settings.chunk_max_records
        if first is not None and first - lookback > 0:
            objs = self._list(store, tp, first - lookback, last, count)
            starts = [k.first for k in (parse_key(o.key) for o in objs) if k is not None]
            if any(s <= first for s in starts):
                return objs
        return self._list(store, tp, None, last, count)

    def _list(
        self,
        store: str,
        tp: TP,
        from_offset: int | None,
        last: int | None,
        count: Callable[[int], None] | None,
    ) -> list[ObjectInfo]:
        marker = offset_marker(tp[0], tp[1], from_offset) if from_offset is not None else None
        out: list[ObjectInfo] = []
        for info in self.stores[store].list(partition_prefix(*tp), start_after=marker):
            out.append(info)
            if count is not None:
                count(1)
            if last is not None:
                key = parse_key(info.key)
                if key is not None and key.first > last:
                    break
        return out

    # ------------------------------------------------------------------ Kafka records
    def decode(self, msg: Message) -> tuple[RawRecord | None, int | None]:
        """As the service decodes (pipeline._decode with live=False): the record and its
        schema id, or (None, None) for a bad record (covered but not stored)."""
        topic, offset = msg.topic(), msg.offset()
        assert topic is not None and offset is not None
        schema_topic = self.settings.schema_topic(topic)
        key, headers = msg.key(), msg.headers()
        if (key is not None or headers) and find_identifier_in_message(key, headers):
            return None, None
        self.known_schema(msg.value())
        try:
            decoded = decode_wire(self.registry, schema_topic, msg.value())
        except DecodeError:
            return None, None
        if check_record(schema_topic, decoded.record) is not None:
            return None, None
        return (
            RawRecord(
                offset=offset,
                timestamp_ms=int(msg.timestamp()[1]),
                key=key,
                body=bytes(decoded.body),
                headers=cast(RecordHeaders | None, headers),
            ),
            decoded.schema.id,
        )

    def record_print(self, record: RawRecord, schema_id: int) -> RecordPrint:
        """The comparable print of a good record (its event decoded as a container file
        gives it back: logical types applied)."""
        schema = self.registry.get(schema_id)
        value = fastavro.schemaless_reader(io.BytesIO(record.body), schema.parsed, None)
        return RecordPrint(
            record.timestamp_ms, record.key, canonical(value), normalized_headers(record.headers)
        )

    def kafka_prints(self, tp: TP, first: int, last: int) -> dict[int, RecordPrint]:
        """The good records Kafka holds in [first, last], as prints by offset."""
        out: dict[int, RecordPrint] = {}
        for msg in self.kafka.read_range(tp, first, last):
            record, schema_id = self.decode(msg)
            if record is not None and schema_id is not None:
                out[record.offset] = self.record_print(record, schema_id)
        return out

    def read(self, store: str, key: str) -> bytes:
        return self.stores[store].read(key)


class Progress(Protocol):
    """Where a long operator tool reports how far it is (the command line shows it: a bar on
    a terminal, a line every few seconds otherwise; `cli/progress.py`)."""

    def start(self, total: int | None) -> None:
        """The number of steps (partitions, records) the tool will take; None: unknown."""
        ...

    def advance(self, n: int = 1) -> None:
        """`n` more steps done."""
        ...

    def count(self, what: str, n: int = 1) -> None:
        """A side count shown beside the steps (e.g. "objects listed")."""
        ...
