"""Writer schemas first seen at run time (replicator/judge/registry.py), pure logic.

- every registry failure holds, except the definite "schema not found" (404 with 40403);
- the resolver: a found schema joins the judge's registry with the topics its subjects
  give under each strategy; lookups cached in a bounded LRU; "not found" trusted only for a
  while; an outage backs off and the next answer ends it;
- the judge builds the compiled checks and the C programs of a schema added after its
  first batch, and a worker adds the schemas shipped with a batch;
- the registry file's reload: new ids added, a broken file or a changed id refused.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.common.schema_registry_client import SchemaVersion
from confluent_kafka.schema_registry.error import SchemaRegistryError as ClientError
from hypothesis import given
from hypothesis import strategies as st

from replicator.config import DEFAULT_SCHEMAS_DIR
from replicator.devtools.synthetic import SyntheticSource
from replicator.judge import batch
from replicator.judge.batch import judge_items
from replicator.judge.native import extension
from replicator.judge.registry import (
    NOT_FOUND_TTL_S,
    RegistryUnavailable,
    SchemaResolver,
    backoff_s,
    classify,
    describe,
)
from replicator.schemas import (
    SchemaRegistry,
    SchemaRegistryError,
    encode_wire,
    from_spec,
    topics_of,
)
from tests.support.nirs import nir_groups

FILE = SchemaRegistry.load(DEFAULT_SCHEMAS_DIR)
REIMBURSEMENT_V2 = FILE.get(3)
NAME = REIMBURSEMENT_V2.name  # fr.hdh.snds.Reimbursement


# ---------------------------------------------------------------- what a failure means


@pytest.mark.parametrize(
    ("failure", "outcome"),
    [
        (ClientError(404, 40403, "Schema not found"), "not_found"),
        (ClientError(404, 40401, "Subject not found"), "hold"),  # not about the id
        (ClientError(404, 404, "HTTP 404 Not Found"), "hold"),  # a proxy's 404, a wrong path
        (ClientError(404, -1, "Unknown Schema Registry Error: <html>"), "hold"),
        (ClientError(500, 50001, "Error in the backend data store"), "hold"),
        (ClientError(502, -1, "Bad gateway"), "hold"),
        (ClientError(503, 50301, "Service unavailable"), "hold"),
        (ClientError(504, -1, "Gateway timeout"), "hold"),
        (ClientError(429, 42901, "Too many requests"), "hold"),
        (ClientError(408, -1, "Request timeout"), "hold"),
        (ClientError(401, 40101, "Unauthorized"), "hold"),  # credentials: fix them, lose nothing
        (ClientError(403, 40301, "Forbidden"), "hold"),
        (httpx.ConnectError("refused"), "hold"),
        (httpx.ConnectTimeout("timed out"), "hold"),
        (httpx.ReadTimeout("timed out"), "hold"),
        (httpx.RemoteProtocolError("closed without a response"), "hold"),
        (TimeoutError("timed out"), "hold"),
        (ConnectionResetError(), "hold"),
        (ValueError("Expecting value: line 1 column 1"), "hold"),  # an answer that is no JSON
        (KeyError("schema"), "hold"),
    ],
)
def test_only_a_definite_not_found_is_not_found(failure: BaseException, outcome: str) -> None:
    assert classify(failure) == outcome


@given(status=st.integers(100, 599), code=st.integers(-1, 99999))
def test_every_status_and_error_code_holds_but_404_40403(status: int, code: int) -> None:
    expected = "not_found" if (status, code) == (404, 40403) else "hold"
    assert classify(ClientError(status, code, "m")) == expected


def test_a_failure_is_described_without_its_url() -> None:
    error = httpx.ConnectError("https://user:secret@registry.example/schemas/ids/3")
    assert describe(error) == "ConnectError"
    assert describe(ClientError(503, 50301, "x")) == "HTTP 503 (error code 50301)"


# ---------------------------------------------------------------- subject name strategies


@pytest.mark.parametrize(
    ("strategy", "subjects", "names", "topics"),
    [
        ("topic", ["a-value"], None, {"a"}),
        ("topic", ["a-value", "b-value", "c-key"], None, {"a", "b"}),
        ("topic", [f"a-{NAME}", NAME], None, set()),
        ("topic-record", [f"a-{NAME}", f"b.c-{NAME}"], None, {"a", "b.c"}),
        ("topic-record", ["a-value", NAME, "a-other.Name"], None, set()),
        ("record", [NAME], {"a": [NAME], "b": ["x.Other"]}, {"a"}),
        ("record", [NAME], {"a": [NAME], "b": [NAME]}, {"a", "b"}),
        ("record", ["a-value", f"a-{NAME}"], {"a": [NAME]}, set()),  # not under its name
        ("record", [NAME], {"a": ["x.Other"]}, set()),  # a name no topic allows
    ],
)
def test_the_topics_of_a_schema_follow_the_strategy(
    strategy: Any, subjects: list[str], names: dict[str, list[str]] | None, topics: set[str]
) -> None:
    assert topics_of(strategy, subjects, NAME, names) == frozenset(topics)


# ---------------------------------------------------------------- the resolver


@dataclass
class Found:
    schema_str: str
    schema_type: str = "AVRO"
    references: list[Any] | None = None


@dataclass
class Pair:
    subject: str
    version: int


class FakeRegistry:
    """The two calls the resolver makes, answering from a dict or failing on demand."""

    def __init__(self) -> None:
        self.schemas: dict[int, tuple[str, list[Pair]]] = {}
        self.failure: BaseException | None = None
        self.override: Found | None = None  # the answer to every get_schema
        self.calls = 0

    def get_schema(self, schema_id: int) -> Found:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        if schema_id not in self.schemas:
            raise ClientError(404, 40403, "Schema not found")
        return self.override or Found(self.schemas[schema_id][0])

    def get_schema_versions(self, schema_id: int) -> list[Pair]:
        return self.schemas[schema_id][1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


REPLICATED = ("snds.reimbursements", "snds.prescriptions")


def resolver(fake: FakeRegistry, clock: Clock, **kwargs: Any) -> SchemaResolver:
    return SchemaResolver(SchemaRegistry({}), client=fake, clock=clock, topics=REPLICATED, **kwargs)


def test_a_found_schema_joins_the_registry_with_its_topics() -> None:
    fake, clock = FakeRegistry(), Clock()
    fake.schemas[7] = (REIMBURSEMENT_V2.schema_json, [Pair("snds.reimbursements-value", 2)])
    fake.schemas[8] = (REIMBURSEMENT_V2.schema_json, [Pair("other-key", 1), Pair("x-value", 1)])
    res = resolver(fake, clock)
    found = res.lookup(7).schema
    assert found is not None and found.topics == {"snds.reimbursements"}
    assert (found.subject, found.version, found.fingerprint) == (
        "snds.reimbursements-value",
        2,
        REIMBURSEMENT_V2.fingerprint,
    )
    assert res.registry.get(7) is found and res.registry.generation == 1
    foreign = res.lookup(8).schema  # found, but of no replicated topic: not added
    assert foreign is not None and foreign.topics == frozenset()
    assert res.registry.find(8) is None
    calls = fake.calls
    assert res.lookup(7).schema is found and res.lookup(8).schema == foreign
    assert fake.calls == calls  # both cached


def test_lookups_are_cached_in_a_bounded_lru() -> None:
    fake, clock = FakeRegistry(), Clock()
    for i in range(1, 6):
        fake.schemas[i] = (REIMBURSEMENT_V2.schema_json, [Pair("elsewhere-value", i)])
    res = resolver(fake, clock, cache_size=3)
    for i in (1, 2, 3, 1, 4):  # 2 is the least recently used when 4 comes
        res.lookup(i)
    calls = fake.calls
    res.lookup(1)
    res.lookup(3)
    res.lookup(4)
    assert fake.calls == calls
    res.lookup(2)
    assert fake.calls == calls + 1


def test_not_found_is_trusted_for_a_while_only() -> None:
    fake, clock = FakeRegistry(), Clock()
    res = resolver(fake, clock)
    assert res.lookup(9).schema is None
    fake.schemas[9] = (REIMBURSEMENT_V2.schema_json, [Pair("snds.reimbursements-value", 3)])
    clock.now += NOT_FOUND_TTL_S / 2
    assert res.lookup(9).schema is None  # not asked again yet
    clock.now += NOT_FOUND_TTL_S
    assert res.lookup(9).schema is not None  # registered since: found
    assert res.outage is None


def test_an_outage_backs_off_and_the_next_answer_ends_it() -> None:
    fake, clock = FakeRegistry(), Clock()
    fake.schemas[5] = (REIMBURSEMENT_V2.schema_json, [Pair("snds.reimbursements-value", 1)])
    changes: list[tuple[str, int]] = []
    res = resolver(fake, clock, retry_max_s=4.0)
    res.on_change = lambda state, failures: changes.append((state, failures))
    fake.failure = ClientError(503, 50301, "Service unavailable")
    for failures in (1, 2, 3):
        with pytest.raises(RegistryUnavailable, match="HTTP 503"):
            res.lookup(5)
        assert res.failures == failures and res.retry_at > clock.now
        calls = fake.calls
        with pytest.raises(RegistryUnavailable):  # within the backoff: not asked
            res.lookup(5)
        assert fake.calls == calls
        clock.now = res.retry_at
    assert res.outage == "the schema registry does not answer: HTTP 503 (error code 50301)"
    fake.failure = None
    assert res.lookup(5).schema is not None
    assert state_of(res) == (None, 0)
    assert changes == [("down", 1), ("down", 2), ("down", 3), ("up", 0)]


def state_of(res: SchemaResolver) -> tuple[str | None, int]:
    return res.outage, res.failures


@given(failures=st.integers(1, 60), cap=st.floats(0.5, 60))
def test_the_backoff_grows_and_stays_under_its_cap(failures: int, cap: float) -> None:
    wait = backoff_s(failures, cap)
    assert 0 < wait <= cap
    assert backoff_s(failures, 1e9) >= min(0.5 * 2 ** (failures - 1), 30.0)


@pytest.mark.parametrize(
    ("found", "problem"),
    [
        (Found('{"type": "object"}', schema_type="JSON"), "is a JSON schema"),
        (Found("syntax = 'proto3';", schema_type="PROTOBUF"), "is a PROTOBUF schema"),
        (Found(REIMBURSEMENT_V2.schema_json, references=[{"name": "x"}]), "has references"),
        (Found('"string"'), "not an Avro record schema"),
        (Found("{not json"), "not JSON"),
    ],
)
def test_a_schema_the_judge_cannot_read_is_a_reason_not_an_outage(
    found: Found, problem: str
) -> None:
    fake, clock = FakeRegistry(), Clock()
    res = resolver(fake, clock)
    fake.schemas[4] = ("", [Pair("snds.reimbursements-value", 1)])
    fake.override = found
    lookup = res.lookup(4)
    assert lookup.schema is None and lookup.problem is not None
    assert lookup.problem[0] == "undecodable" and problem in lookup.problem[1]
    assert res.outage is None


def test_in_file_mode_an_unknown_id_is_not_found_without_a_request() -> None:
    res = SchemaResolver(SchemaRegistry.load(DEFAULT_SCHEMAS_DIR))
    assert res.lookup(3).schema is REIMBURSEMENT_V2 or res.lookup(3).schema == res.registry.get(3)
    assert res.lookup(77).schema is None


# ---------------------------------------------------------------- the judge, on first use


def _items(schema_topic: str, values: list[bytes]) -> list[batch.Item]:
    return [(schema_topic, v, i, 0, None, None) for i, v in enumerate(values)]


def test_the_judge_builds_the_checks_of_a_schema_added_after_its_first_batch() -> None:
    registry = SchemaRegistry({1: FILE.get(1)})
    source = SyntheticSource(3, FILE, v2_share=1.0)
    values = [
        encode_wire(REIMBURSEMENT_V2, source.next("snds.reimbursements")[1]) for _ in range(50)
    ]
    items = _items("snds.reimbursements", values)
    before = judge_items(registry, items, 1 << 20)
    assert {v[1] for v in before} == {"unknown_schema_id"}
    assert registry.add(REIMBURSEMENT_V2) and not registry.add(REIMBURSEMENT_V2)
    after = judge_items(registry, items, 1 << 20)
    assert after == [(3, "", "")] * 50
    assert 3 in batch._checkers(registry)
    native = batch._programs(registry)
    if extension() is not None:  # built by `pip install`; test_native.py requires it
        assert native is not None and 3 in native[1]


def test_a_worker_adds_the_schemas_shipped_with_a_batch() -> None:
    batch._init_worker((FILE.get(1).spec(),), 1 << 20)
    source = SyntheticSource(4, FILE, v2_share=1.0)
    value = encode_wire(REIMBURSEMENT_V2, source.next("snds.reimbursements")[1])
    items = _items("snds.reimbursements", [value])
    assert batch.judge_batch(items)[0][1] == "unknown_schema_id"
    shipped = (REIMBURSEMENT_V2.spec(),)
    assert batch.judge_batch(items, shipped) == [(3, "", "")]
    assert batch.judge_batch(items, shipped) == [(3, "", "")]  # once only
    again = from_spec(REIMBURSEMENT_V2.spec())
    assert again.spec() == REIMBURSEMENT_V2.spec()
    assert again.fingerprint == REIMBURSEMENT_V2.fingerprint


def test_an_id_is_immutable_in_the_registry() -> None:
    registry = SchemaRegistry({3: REIMBURSEMENT_V2})
    other = from_spec(
        (3, "snds.prescriptions-value", 1, ("snds.prescriptions",), FILE.get(2).schema_json)
    )
    with pytest.raises(SchemaRegistryError, match="immutable"):
        registry.add(other)


# ---------------------------------------------------------------- the registry file's reloads


def test_the_file_is_reloaded_with_its_new_ids_and_a_bad_file_refused(tmp_path: Path) -> None:
    directory = tmp_path / "schemas"
    shutil.copytree(DEFAULT_SCHEMAS_DIR, directory)
    path = directory / "registry.json"
    entries = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in entries.items() if k in ("1", "2")}))
    res = SchemaResolver(SchemaRegistry.load(directory), schemas_dir=directory)
    assert not res.file_changed()
    assert res.registry.ids() == (1, 2)

    path.write_text(json.dumps(entries))
    assert res.file_changed()
    assert res.reload_file() == 2
    assert res.registry.ids() == (1, 2, 3, 4) and not res.file_changed()

    for broken in (
        '{"1": {"subject": "x"',  # not JSON
        json.dumps({**entries, "5": {**entries["1"], "file": "missing.avsc"}}),
        json.dumps({**entries, "3": entries["4"]}),  # a known id changed
        json.dumps({"9": {**entries["1"], "subject": "no-suffix"}}),
    ):
        path.write_text(broken)
        assert res.reload_file() == 0
        assert res.registry.ids() == (1, 2, 3, 4)


def test_a_string_field_the_rules_do_not_know_is_scanned_for_a_nir_in_a_new_schema() -> None:
    """A version 3 first seen at run time adds a free-text field no rule names: a NIR in it
    is a direct identifier on every path (the C walk scans unknown strings too)."""
    raw = json.loads(REIMBURSEMENT_V2.schema_json)
    raw["fields"].append({"name": "free_note", "type": ["null", "string"], "default": None})
    v3 = from_spec((9, "snds.reimbursements-value", 3, ("snds.reimbursements",), json.dumps(raw)))
    registry = SchemaRegistry({1: FILE.get(1)})
    assert registry.add(v3)
    source = SyntheticSource(5, FILE, v2_share=1.0)
    nir = " ".join(nir_groups("1", 85, 5, "75", 108, 42))
    clean, leaking = [], []
    for _ in range(20):
        record = source.next("snds.reimbursements")[1]
        clean.append(encode_wire(v3, {**record, "free_note": "called back on Tuesday"}))
        leaking.append(encode_wire(v3, {**record, "free_note": f"patient {nir} called"}))
    verdicts = judge_items(registry, _items("snds.reimbursements", clean + leaking), 1 << 20)
    assert verdicts[:20] == [(9, "", "")] * 20
    assert {v[1] for v in verdicts[20:]} == {"direct_identifier"}


class Answers:
    """A registry answering 200 to both calls with the values confluent-kafka's client
    makes of the bodies given (``Schema.from_dict``, ``SchemaVersion.from_dict``)."""

    def __init__(self, schema: dict[str, Any], versions: list[Any]) -> None:
        self.schema, self.versions = schema, versions

    def get_schema(self, schema_id: int) -> Any:
        return Schema.from_dict(self.schema)

    def get_schema_versions(self, schema_id: int) -> Any:
        return [SchemaVersion.from_dict(item) for item in self.versions]


_GOOD_SCHEMA = {"schema": REIMBURSEMENT_V2.schema_json}
_GOOD_VERSIONS = [{"subject": "snds.reimbursements-value", "version": 2}]


@pytest.mark.parametrize(
    ("schema", "versions"),
    [
        ({}, _GOOD_VERSIONS),  # 200 without a schema
        ({"schema": None}, _GOOD_VERSIONS),
        ({"schemaType": "AVRO"}, _GOOD_VERSIONS),
        (_GOOD_SCHEMA, [{"subject": "snds.reimbursements-value"}]),  # a version without number
        (_GOOD_SCHEMA, [{"subject": "snds.reimbursements-value", "version": "2"}]),
        (_GOOD_SCHEMA, [{"subject": "snds.reimbursements-value", "version": None}]),
        (_GOOD_SCHEMA, [{"version": 2}]),  # a version without subject
        (_GOOD_SCHEMA, [{"subject": None, "version": 2}]),
        (_GOOD_SCHEMA, [{"subject": "", "version": 2}]),
        (_GOOD_SCHEMA, [_GOOD_VERSIONS[0], {"subject": 5, "version": 1}]),
    ],
)
def test_a_malformed_200_answer_holds_and_is_never_a_dead_letter(
    schema: dict[str, Any], versions: list[Any]
) -> None:
    """A 200 whose body lacks what the documented answer has is no definite answer: the
    lookup holds (RegistryUnavailable: the partition is held and retried), it neither
    raises anything else (that would stop the service) nor names a reason to dead-letter
    the record, and it is not cached: the next good answer is used."""
    res = SchemaResolver(SchemaRegistry({}), client=Answers(schema, versions), clock=Clock())
    with pytest.raises(RegistryUnavailable, match="MalformedAnswer"):
        res.lookup(4)
    assert res.failures == 1 and len(res.registry) == 0
    res.client = Answers(_GOOD_SCHEMA, _GOOD_VERSIONS)
    res.retry_at = 0.0
    found = res.lookup(4).schema
    assert found is not None and found.topics == {"snds.reimbursements"}
    assert res.outage is None
