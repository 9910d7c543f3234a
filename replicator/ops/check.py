"""`replicator check`: can this configuration reach and use the broker and every store?"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from replicator.config import Settings
from replicator.errors import ConfigError, ReplicatorError, StoreError
from replicator.judge.registry import RegistryUnavailable, probe
from replicator.stores.factory import build_stores

PROBE_KEY = "_check/probe"
PROBE_BODY = b"replicator check: this object may be deleted\n"


@dataclass(frozen=True)
class CheckResult:
    target: str
    ok: bool
    detail: str


def check_broker(settings: Settings, timeout: float = 10.0) -> list[CheckResult]:
    admin = AdminClient(settings.kafka_common())
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        return [CheckResult("kafka", False, f"{settings.kafka_bootstrap}: {exc.args[0]}")]
    out = [
        CheckResult("kafka", True, f"{settings.kafka_bootstrap}: {len(metadata.brokers)} broker(s)")
    ]
    for topic in [*settings.topics, settings.dead_letter_topic]:
        found = metadata.topics.get(topic)
        if found is None:
            out.append(CheckResult(f"topic {topic}", False, "not found"))
        else:
            out.append(CheckResult(f"topic {topic}", True, f"{len(found.partitions)} partition(s)"))
    return out


def check_stores(settings: Settings) -> list[CheckResult]:
    out = []
    try:
        stores = build_stores(settings)
    except ReplicatorError as exc:
        return [CheckResult("stores", False, str(exc))]
    md5 = hashlib.md5(PROBE_BODY).digest()
    for store in stores:
        try:
            store.health_check()
            store.create_if_absent(PROBE_KEY, PROBE_BODY, md5, {})
            if store.read(PROBE_KEY) != PROBE_BODY:
                raise ReplicatorError("probe object read back with other bytes")
            store.delete(PROBE_KEY)
        except (StoreError, ReplicatorError) as exc:
            out.append(CheckResult(store.name, False, str(exc)))
        else:
            out.append(CheckResult(store.name, True, "reachable; create, read and delete allowed"))
        finally:
            store.close()
    return out


def check_schemas(settings: Settings) -> list[CheckResult]:
    """The writer schemas' source: the registry file loads, or the registry server answers
    (with the service's credentials and CA)."""
    try:
        return [CheckResult("schemas", True, probe(settings))]
    except (ConfigError, RegistryUnavailable) as exc:
        return [CheckResult("schemas", False, str(exc))]


def run_checks(settings: Settings) -> list[CheckResult]:
    return check_broker(settings) + check_stores(settings) + check_schemas(settings)
