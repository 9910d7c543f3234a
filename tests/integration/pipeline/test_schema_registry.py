"""Writer schemas from a schema registry server, and schema changes while the service runs.

The registry is tests/support/registry.py (the documented REST endpoints, in a thread);
every schema in it is registered by confluent-kafka's own `AvroSerializer` while producing,
as real producers do. Kafka, S3 and Azure are the real local servers. Covered:

- records of a schema registered while the service runs are all stored in both stores,
  with the judge in worker processes (the schema travels to them with the batches);
- an id the registry definitely does not know (404, error code 40403) is dead-lettered as
  `unknown_schema_id`;
- a registry outage in the middle of a run (503, 429, timeouts, closed connections) holds
  the partitions: nothing is dead-lettered, /readyz shows it, and everything is stored
  once the registry answers again; a store catching up on its own consumer holds the same
  way (nothing skipped, nothing committed past the record);
- the three subject name strategies: good records stored, a schema registered under
  another topic's subject dead-lettered as `wrong_topic_schema`;
- the file registry reloaded on SIGHUP (and a broken file refused, the old one kept).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.schema_registry import (
    SchemaRegistryClient,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import schemaless_reader

from replicator.config import DEFAULT_SCHEMAS_DIR, Settings
from replicator.devtools.stack import DEMO_TOPICS
from replicator.devtools.synthetic import SyntheticSource
from replicator.model import TP
from replicator.ops.check import CheckResult, check_schemas
from replicator.schemas import (
    PRESCRIPTIONS_TOPIC,
    REIMBURSEMENTS_TOPIC,
    RegisteredSchema,
    SchemaRegistry,
    encode_wire,
)
from tests.integration.pipeline.test_replication import PARTITIONS, groups, wait_for_log
from tests.integration.telemetry.test_metrics import free_port, http_get, wait_for
from tests.support.checker import (
    _norm,
    azure_objects,
    decode_objects,
    md5s,
    read_topic,
    s3_objects,
)
from tests.support.registry import Failure, TestRegistry, running_registry
from tests.support.service import Progress, Service, wait_committed

pytestmark = pytest.mark.integration

FILE_REGISTRY = SchemaRegistry.load(DEFAULT_SCHEMAS_DIR)
PASSWORD = "registry-pa55word-not-to-be-seen"
STRATEGIES: dict[str, Callable[..., Any]] = {
    "topic": topic_subject_name_strategy,
    "record": record_subject_name_strategy,
    "topic-record": topic_record_subject_name_strategy,
}
RECORD_NAMES = {
    REIMBURSEMENTS_TOPIC: "fr.hdh.snds.Reimbursement",
    PRESCRIPTIONS_TOPIC: "fr.hdh.snds.Prescription",
}


def version(topic: str, number: int) -> RegisteredSchema:
    return next(s for s in FILE_REGISTRY.versions_for_topic(topic) if s.version == number)


class Producing:
    """Produce good synthetic events with confluent-kafka's AvroSerializer (auto-registering
    their schema under the subject the strategy names) and remember where each landed."""

    clients: list[SchemaRegistryClient] = []  # closed by the `registry` fixture

    def __init__(self, settings: Settings, registry: TestRegistry, strategy: str) -> None:
        self.settings = settings
        self.client = SchemaRegistryClient({"url": registry.url})
        Producing.clients.append(self.client)
        self.strategy = STRATEGIES[strategy]
        self.source = SyntheticSource(7, FILE_REGISTRY)
        self.producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
        # where -> (key, value, the writer schema as the producer had it)
        self.good: dict[tuple[TP, int], tuple[bytes | None, bytes, RegisteredSchema]] = {}
        self.bad: dict[tuple[TP, int], str] = {}  # where -> the reason expected

    def send(
        self,
        topic: str,
        schema: RegisteredSchema,
        count: int,
        subject: Callable[..., Any] | None = None,
        expect: str = "",
    ) -> None:
        """`count` events of `schema` (its demo topic's generator) to `topic`; `subject`
        overrides the strategy (a schema registered under another topic's subject);
        `expect`: the dead-letter reason they must get ("" for good records)."""
        serializer = AvroSerializer(
            self.client,
            schema.schema_json,
            conf={"subject.name.strategy": subject or self.strategy},
        )
        for _ in range(count):
            key, record, _writer = self.source.next(schema.topic)
            record = {name: record.get(name) for name in schema.field_names}
            value = serializer(record, SerializationContext(topic, MessageField.VALUE))
            assert value is not None
            self._produce(topic, key, value, schema, expect)
        self.flush()

    def send_raw(self, topic: str, value: bytes, expect: str) -> None:
        self._produce(topic, b"raw", value, version(REIMBURSEMENTS_TOPIC, 1), expect)
        self.flush()

    def _produce(
        self, topic: str, key: bytes | None, value: bytes, schema: RegisteredSchema, expect: str
    ) -> None:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            assert err is None, err
            where = ((topic, int(msg.partition() or 0)), int(msg.offset() or 0))
            if expect:
                self.bad[where] = expect
            else:
                self.good[where] = (key, value, schema)

        self.producer.produce(topic, key=key, value=value, on_delivery=delivered)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0

    def ends(self) -> dict[TP, int]:
        """The next offset of each partition written to (an empty one has no commit)."""
        ends: dict[TP, int] = {}
        for tp, offset in [*self.good, *self.bad]:
            ends[tp] = max(ends.get(tp, 0), offset + 1)
        return ends


def assert_outcome(settings: Settings, stack: Any, producing: Producing) -> None:
    """Both stores hold exactly the good records (same bytes in both), the dead-letter topic
    exactly the bad ones with their reasons."""
    env = stack.env()
    assert settings.s3_bucket is not None and settings.azure_container is not None
    s3 = s3_objects(env, settings.s3_bucket)
    azure = azure_objects(env, settings.azure_container)
    assert md5s(s3) == md5s(azure), "the two stores differ"
    content = decode_objects(s3)
    assert content.doubled == []
    stored = {
        (tp, offset): record
        for tp, records in content.records.items()
        for offset, record in records.items()
    }
    assert set(stored) == set(producing.good), (
        sorted(set(producing.good) - set(stored))[:5],
        sorted(set(stored) - set(producing.good))[:5],
    )
    for where, (key, value, schema) in producing.good.items():
        got = stored[where]
        assert got["key"] == key, where
        sent = schemaless_reader(io.BytesIO(value[5:]), schema.parsed)
        assert _norm(got["value"]) == _norm(sent), where
    dead = read_topic(settings.kafka_bootstrap, settings.dead_letter_topic, PARTITIONS)
    reasons = {
        (
            (r.headers["dlq.origin.topic"].decode(), int(r.headers["dlq.origin.partition"])),
            int(r.headers["dlq.origin.offset"]),
        ): r.headers["dlq.reason"].decode()
        for records in dead.values()
        for r in records
    }
    assert reasons == producing.bad


@pytest.fixture
def registry() -> Iterator[TestRegistry]:
    """The registry server, and the producers' registry clients closed after the test."""
    with running_registry() as server:
        yield server
        for client in Producing.clients:
            client.close()
        Producing.clients.clear()


def registry_settings(
    settings_factory: Callable[..., Settings], registry: TestRegistry, **overrides: Any
) -> Settings:
    return settings_factory(
        schema_registry_url=[registry.url],
        schema_topics={},  # the producers register under the replicated topics' own names
        schema_registry_timeout_s=1.0,
        schema_registry_retry_max_s=1.0,
        **overrides,
    )


def test_a_schema_registered_while_running_is_stored_and_an_unknown_id_dead_lettered(
    stack: Any, settings_factory: Callable[..., Settings], registry: TestRegistry, tmp_path: Path
) -> None:
    settings = registry_settings(
        settings_factory,
        registry,
        decode_workers=1,
        schema_registry_basic_auth=f"replicator:{PASSWORD}",
    )
    a, b = settings.topics
    producing = Producing(settings, registry, "topic")
    producing.send(a, version(REIMBURSEMENTS_TOPIC, 1), 60)
    producing.send(b, version(PRESCRIPTIONS_TOPIC, 1), 60)
    service = Service(settings, tmp_path).start()
    try:
        wait_committed(settings.kafka_bootstrap, groups(settings), producing.ends(), 90, [service])
        # new versions, registered by the producers while the service runs
        producing.send(a, version(REIMBURSEMENTS_TOPIC, 2), 60)
        producing.send(b, version(PRESCRIPTIONS_TOPIC, 2), 60)
        # an id the registry never gave: 404 with error code 40403
        producing.send_raw(a, struct.pack(">bI", 0, 999_999) + b"\x02", "unknown_schema_id")
        wait_committed(settings.kafka_bootstrap, groups(settings), producing.ends(), 90, [service])
    finally:
        assert service.stop() == 0
    assert_outcome(settings, stack, producing)
    log = service.log_text()
    assert log.count('"schema_added"') == 4
    # the service authenticates with its basic auth, and its password is nowhere in the log
    basic = "Basic " + base64.b64encode(f"replicator:{PASSWORD}".encode()).decode()
    assert basic in registry.state.authorizations
    assert PASSWORD not in log and basic not in log


@pytest.mark.parametrize("workers", [0, 1], ids=["judged in the loop", "judged in a worker"])
def test_a_registry_outage_holds_the_partitions_and_dead_letters_nothing(
    stack: Any,
    settings_factory: Callable[..., Settings],
    registry: TestRegistry,
    tmp_path: Path,
    workers: int,
) -> None:
    port = free_port()
    settings = registry_settings(
        settings_factory, registry, metrics_port=port, decode_workers=workers
    )
    a, b = settings.topics
    base = f"http://127.0.0.1:{port}"
    producing = Producing(settings, registry, "topic")
    producing.send(a, version(REIMBURSEMENTS_TOPIC, 1), 30)
    service = Service(settings, tmp_path).start()
    try:
        wait_committed(settings.kafka_bootstrap, groups(settings), producing.ends(), 90, [service])
        # New schemas registered by the producers while the service is frozen; it meets
        # their ids once the registry is down.
        service.pause()
        producing.send(a, version(REIMBURSEMENTS_TOPIC, 2), 40)
        producing.send(b, version(PRESCRIPTIONS_TOPIC, 1), 40)
        registry.state.hang_s = 3.0  # over schema_registry_timeout_s
        registry.state.fail = "503"
        service.resume()
        body = wait_for(
            lambda: (
                (r := http_get(f"{base}/readyz").json())["schema_registry"]["held_partitions"] and r
            ),
            60,
            "held partitions in /readyz",
        )
        assert body["ready"] is True  # a detail: another replica would not do better
        assert body["schema_registry"]["available"] is False
        assert body["schema_registry"]["error"] == (
            "the schema registry does not answer: HTTP 503 (error code 50301)"
        )
        assert "replicator_schema_registry_up 0.0" in http_get(f"{base}/metrics").body.splitlines()
        failures: tuple[Failure, ...] = ("429", "timeout", "close", "500")
        for failure in failures:
            registry.state.fail = failure
            seen = registry.lookups()
            wait_for(lookups_past(registry, seen + 2), 60, f"lookups ({failure})")
        registry.state.fail = None
        wait_committed(settings.kafka_bootstrap, groups(settings), producing.ends(), 90, [service])
        assert http_get(f"{base}/readyz").json()["schema_registry"] == {
            "mode": "server",
            "available": True,
            "held_partitions": [],
        }
    finally:
        registry.state.fail = None
        assert service.stop() == 0
    assert_outcome(settings, stack, producing)  # nothing dead-lettered, everything stored
    assert '"partition_held"' in service.log_text()


def test_a_registry_outage_holds_a_catching_up_store_too(
    stack: Any, settings_factory: Callable[..., Settings], registry: TestRegistry, tmp_path: Path
) -> None:
    """The other path a record takes: a store catching up reads Kafka on its own consumer
    (`catchup_copy` off, so it reads rather than copies). Azure is down while S3 stores a
    new schema version; the service starts again (its cache of ids empty) with the
    registry down: Azure's catch-up meets the new id and holds (nothing skipped, nothing
    dead-lettered, nothing committed past it) until the registry answers."""
    settings = registry_settings(settings_factory, registry, catchup_copy=False)
    a, _b = settings.topics
    producing = Producing(settings, registry, "topic")
    producing.send(a, version(REIMBURSEMENTS_TOPIC, 1), 30)
    first = Service(settings, tmp_path, name="first").start()
    try:
        wait_committed(settings.kafka_bootstrap, groups(settings), producing.ends(), 90, [first])
        azure_at = dict(producing.ends())
        stack.stop_service("azure")
        try:
            producing.send(a, version(REIMBURSEMENTS_TOPIC, 2), 40)
            wait_committed(
                settings.kafka_bootstrap,
                [settings.progress_group("s3")],
                producing.ends(),
                90,
                [first],
            )
        finally:
            first.kill9()  # Azure is down: no clean stop to wait for
            stack.start_service("azure")
    except BaseException:
        if first.alive():
            first.kill9()
        raise
    registry.state.fail = "503"
    seen = registry.lookups()
    second = Service(settings, tmp_path, name="second").start()
    try:
        wait_for(lookups_past(registry, seen + 3), 60, "the catch-up's lookups")
        azure = Progress(settings.kafka_bootstrap, settings.progress_group("azure"))
        try:
            held = azure.committed(sorted(azure_at))
        finally:
            azure.close()
        # not one offset of the new version committed while its schema is unknown
        assert all(held[tp] <= azure_at[tp] for tp in azure_at), (held, azure_at)
        registry.state.fail = None
        wait_committed(settings.kafka_bootstrap, groups(settings), producing.ends(), 120, [second])
    finally:
        registry.state.fail = None
        assert second.stop() == 0
    assert_outcome(settings, stack, producing)  # all stored in both, nothing dead-lettered
    log = second.log_text()
    assert '"schema_registry_unavailable"' in log and '"catchup_started"' in log


def lookups_past(registry: TestRegistry, count: int) -> Callable[[], bool]:
    return lambda: registry.lookups() >= count


def _wrong_subject(strategy: str, other_topic: str) -> Callable[..., Any]:
    """A subject name that puts a schema under `other_topic` (or a record name not allowed
    on the topic, for the record strategy)."""
    if strategy == "topic":
        return lambda _ctx, _name: f"{other_topic}-value"
    if strategy == "topic-record":
        return lambda _ctx, name: f"{other_topic}-{name}"
    return record_subject_name_strategy


@pytest.mark.parametrize("strategy", ["topic", "record", "topic-record"])
def test_each_subject_name_strategy_stores_its_records_and_refuses_another_topics_schema(
    stack: Any,
    settings_factory: Callable[..., Settings],
    registry: TestRegistry,
    tmp_path: Path,
    strategy: str,
) -> None:
    topics = settings_factory().topics
    names = {topic: RECORD_NAMES[demo] for topic, demo in zip(topics, DEMO_TOPICS, strict=True)}
    settings = registry_settings(
        settings_factory,
        registry,
        schema_subject_strategy=strategy,
        schema_record_names=names if strategy == "record" else {},
    )
    a, b = settings.topics
    producing = Producing(settings, registry, strategy)
    producing.send(a, version(REIMBURSEMENTS_TOPIC, 2), 40)
    producing.send(b, version(PRESCRIPTIONS_TOPIC, 2), 40)
    # a prescription schema on the reimbursements' topic, under topic b's subject (or, for
    # the record strategy, a record name not allowed on topic a)
    wrong = _wrong_subject(strategy, b)
    producing.send(
        a, version(PRESCRIPTIONS_TOPIC, 1), 5, subject=wrong, expect="wrong_topic_schema"
    )
    service = Service(settings, tmp_path).start()
    try:
        wait_committed(settings.kafka_bootstrap, groups(settings), producing.ends(), 90, [service])
    finally:
        assert service.stop() == 0
    assert_outcome(settings, stack, producing)


def test_the_file_registry_is_reloaded_on_sighup_or_a_new_mtime_and_a_broken_file_refused(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(DEFAULT_SCHEMAS_DIR, schemas)
    path = schemas / "registry.json"
    entries = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in entries.items() if v["version"] == 1}))
    settings = settings_factory(schemas_dir=schemas, schemas_reload_interval_s=0.5)
    a, b = settings.topics
    producing = FileProducing(settings)
    producing.send(a, version(REIMBURSEMENTS_TOPIC, 1), 30)
    service = Service(settings, tmp_path).start()
    try:
        wait_committed(settings.kafka_bootstrap, groups(settings), producing.ends(), 90, [service])
        assert service.proc is not None
        # SIGHUP: a new file under the old modification time (the poll cannot see it)
        before = path.stat()
        path.write_text(json.dumps({k: v for k, v in entries.items() if k != "4"}))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        service.proc.send_signal(signal.SIGHUP)
        wait_for_log(service, '"schemas_reloaded"')
        producing.send(a, version(REIMBURSEMENTS_TOPIC, 2), 30)
        wait_committed(settings.kafka_bootstrap, groups(settings), producing.ends(), 90, [service])
        # a mounted ConfigMap replaced: a new modification time, no signal
        replaced = schemas / "registry.json.new"
        replaced.write_text(json.dumps(entries))
        replaced.replace(path)
        wait_for_log(service, '"schemas_reloaded"', more_than=1)
        producing.send(b, version(PRESCRIPTIONS_TOPIC, 2), 30)
        wait_committed(settings.kafka_bootstrap, groups(settings), producing.ends(), 90, [service])
        # a broken file: refused, the schemas known so far kept
        path.write_text('{"1": {"subject": "x"')
        wait_for_log(service, '"schemas_reload_refused"')
        producing.send(a, version(REIMBURSEMENTS_TOPIC, 2), 10)
        producing.send(b, version(PRESCRIPTIONS_TOPIC, 2), 10)
        wait_committed(settings.kafka_bootstrap, groups(settings), producing.ends(), 90, [service])
        assert service.alive()
    finally:
        assert service.stop() == 0
    assert_outcome(settings, stack, producing)
    log = service.log_text()
    assert log.count('"schemas_reloaded"') == 2 and log.count('"schemas_reload_refused"') == 1


class FileProducing(Producing):
    """Records in the wire format with the file registry's ids (no registry server)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.source = SyntheticSource(7, FILE_REGISTRY)
        self.producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
        self.good = {}
        self.bad = {}

    def send(
        self,
        topic: str,
        schema: RegisteredSchema,
        count: int,
        subject: Callable[..., Any] | None = None,
        expect: str = "",
    ) -> None:
        for _ in range(count):
            key, record, _writer = self.source.next(schema.topic)
            record = {name: record.get(name) for name in schema.field_names}
            self._produce(topic, key, encode_wire(schema, record), schema, expect)
        self.flush()


def test_check_says_whether_the_schemas_source_answers(
    settings_factory: Callable[..., Settings], registry: TestRegistry
) -> None:
    server = registry_settings(settings_factory, registry)
    Producing(server, registry, "topic").send(server.topics[0], version(REIMBURSEMENTS_TOPIC, 1), 1)
    assert check_schemas(server) == [CheckResult("schemas", True, "1 URL(s): 1 subject(s)")]
    with registry.outage("503"):
        assert check_schemas(server) == [
            CheckResult(
                "schemas",
                False,
                "the schema registry server does not answer: HTTP 503 (error code 50301)",
            )
        ]
    with registry.outage("close"):
        [result] = check_schemas(server)
        assert not result.ok and "://" not in result.detail
        assert result.detail.startswith("the schema registry server does not answer: ")
    nobody = server.model_copy(update={"schema_registry_url": [f"http://127.0.0.1:{free_port()}"]})
    assert check_schemas(nobody) == [
        CheckResult("schemas", False, "the schema registry server does not answer: ConnectError")
    ]
    [file] = check_schemas(settings_factory())
    assert file.ok and file.detail.endswith("registry.json: 4 schema(s)")
