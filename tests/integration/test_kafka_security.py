"""Kafka TLS with a custom CA end to end, and S3 SSE-C, against the real local servers.

Kafka TLS: Tansu 0.6.0 cannot serve TLS itself (its `--cert` and `--key` options are
refused together), so a TLS-terminating tunnel (tests/support/tlstunnel.py, certificate from
a CA made for the test) sits in front of a broker of this test, which advertises the
tunnel's address: librdkafka does the real handshake and checks the chain against
kafka_ssl_ca_location. `replicator check` passes with the CA and fails without it;
`replicator run` replicates through TLS into both stores of the session stack.

Kafka SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512): Tansu 0.6.0 cannot authenticate anyone
(with `--authentication`, `tansu user create` is refused, a PLAIN handshake closes the
connection and SCRAM answers "unknown-user"), so a SASL-terminating proxy
(tests/support/saslproxy.py) sits in front of a broker of this module, which advertises the
proxy's address: librdkafka runs its real SASL exchange (SCRAM proofs and server signature
checked both ways), a wrong password is refused with SASL_AUTHENTICATION_FAILED, and a client
without SASL is cut off. `replicator check` fails with the wrong password (exit 1, kafka
named, the password nowhere in its output) and passes with the right one; `replicator run`
replicates through SASL into both stores of the session stack, and neither its logs nor
/metrics show the password.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from pydantic import SecretStr

from replicator.config import Settings
from replicator.errors import StoreError
from replicator.stores.s3 import S3Store
from tests.support import checker
from tests.support.broker import free_port, own_tansu
from tests.support.faultproxy import FaultProxy, make_ca
from tests.support.produce import Produced, produce_records
from tests.support.saslproxy import MECHANISMS, SaslProxy
from tests.support.service import Service, settings_env
from tests.support.tlstunnel import TlsTunnel

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
_quiet = logging.getLogger("tests.kafka_security.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


@dataclass(frozen=True)
class TlsKafka:
    bootstrap: str  # the tunnel (TLS)
    ca: Path


@pytest.fixture
def tls_kafka(tmp_path: Path) -> Iterator[TlsKafka]:
    ca, cert, key = make_ca(tmp_path / "kafka-tls")
    plain_port = free_port()
    with (
        TlsTunnel(plain_port, cert, key) as tunnel,
        own_tansu(tmp_path / "tansu.log", plain_port, tunnel.port),
    ):
        yield TlsKafka(bootstrap=f"{HOST}:{tunnel.port}", ca=ca)


# Distinctive values, so that finding one in an output is never a coincidence.
SASL_USER = "replicator"
SASL_PASSWORD = "sasl-right-" + secrets.token_hex(8)
SASL_WRONG_PASSWORD = "sasl-wrong-" + secrets.token_hex(8)


@dataclass(frozen=True)
class SaslKafka:
    bootstrap: str  # the proxy (SASL)
    proxy: SaslProxy


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslKafka]:
    """One broker behind one SASL proxy (every mechanism enabled) for the module's tests."""
    root = tmp_path_factory.mktemp("kafka-sasl")
    plain_port = free_port()
    with (
        SaslProxy(plain_port, {SASL_USER: SASL_PASSWORD}) as proxy,
        own_tansu(root / "tansu.log", plain_port, proxy.port),
    ):
        yield SaslKafka(bootstrap=f"{HOST}:{proxy.port}", proxy=proxy)


def _conf(settings: Settings) -> dict[str, Any]:
    conf = settings.kafka_common()
    conf["logger"] = _quiet
    return conf


def _create_topics(settings: Settings, partitions: int) -> None:
    admin = AdminClient(_conf(settings))
    names = [*settings.topics, settings.dead_letter_topic]
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    for future in futures.values():
        future.result(timeout=30)
    deadline = time.monotonic() + 15
    while not all(n in admin.list_topics(timeout=5).topics for n in names):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _check_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    env.update(settings_env(settings))
    return env


def _check(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replicator", "check"],
        env=_check_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _start_check(settings: Settings) -> subprocess.Popen[str]:
    """`replicator check` in the background (a refused broker waits out its timeout)."""
    return subprocess.Popen(
        [sys.executable, "-m", "replicator", "check"],
        env=_check_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_committed(
    settings: Settings, ends: dict[tuple[str, int], int], service: Service, timeout: float
) -> None:
    readers = [
        Consumer({**_conf(settings), "group.id": settings.progress_group(s)})
        for s in settings.stores
    ]
    tps = [TopicPartition(t, p) for t, p in ends]
    deadline = time.monotonic() + timeout
    try:
        while True:
            behind = []
            for reader in readers:
                for tp in reader.committed(tps, timeout=10):
                    if tp.offset < ends[(tp.topic, tp.partition)]:
                        behind.append((tp.topic, tp.partition, tp.offset))
            if not behind:
                return
            assert service.alive(), service.log_text()[-3000:]
            assert time.monotonic() < deadline, (behind[:5], service.log_text()[-3000:])
            time.sleep(0.3)
    finally:
        for reader in readers:
            reader.close()


def test_kafka_tls_with_a_custom_ca_check_and_run_end_to_end(
    stack: Any, settings_factory: Callable[..., Settings], tls_kafka: TlsKafka, tmp_path: Path
) -> None:
    settings = settings_factory(
        kafka_bootstrap=tls_kafka.bootstrap,
        kafka_security_protocol="SSL",
        kafka_ssl_ca_location=tls_kafka.ca,
        chunk_max_records=100,
    )
    _create_topics(settings, partitions=2)

    # Without the CA (system trust store only): refused, kafka named, exit 1.
    untrusted = settings.model_copy(update={"kafka_ssl_ca_location": None})
    done = _check(untrusted)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL kafka" in done.stdout + done.stderr, done.stdout + done.stderr
    # Plain TCP against the TLS listener: refused as well.
    done = _check(settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT"}))
    assert done.returncode == 1 and "FAIL kafka" in done.stdout + done.stderr

    done = _check(settings)
    assert done.returncode == 0, done.stdout + done.stderr

    produced = produce_records(settings, count=300, bad_share=0.0, seed=7)
    service = Service(settings, tmp_path).start()
    try:
        _wait_committed(settings, produced.ends, service, 60)
    finally:
        assert service.stop() == 0
    _assert_in_both_stores(stack, settings, produced)


def _assert_in_both_stores(stack: Any, settings: Settings, produced: Produced) -> None:
    """Every produced record in both stores, once, under the same keys."""
    assert settings.s3_bucket is not None and settings.azure_container is not None
    s3_keys = [
        o["Key"]
        for o in stack.s3.list_objects_v2(Bucket=settings.s3_bucket).get("Contents", [])
        if o["Key"].endswith(".avro")
    ]
    blobs = [
        b.name
        for b in stack.blob.get_container_client(settings.azure_container).list_blobs()
        if b.name.endswith(".avro")
    ]
    assert s3_keys and sorted(s3_keys) == sorted(blobs)

    content = checker.decode_objects(
        checker.s3_objects(stack.env(), settings.s3_bucket, settings.s3_prefix + "/")
    )
    assert not content.doubled
    got = {(tp, offset) for tp, records in content.records.items() for offset in records}
    want = {(tp, offset) for tp, end in produced.ends.items() for offset in range(end)}
    assert got == want, (len(got), len(want))


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_kafka_sasl_check_and_run_end_to_end(
    mechanism: str,
    stack: Any,
    settings_factory: Callable[..., Settings],
    sasl_kafka: SaslKafka,
    tmp_path: Path,
) -> None:
    metrics_port = free_port()
    settings = settings_factory(
        kafka_bootstrap=sasl_kafka.bootstrap,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username=SASL_USER,
        kafka_sasl_password=SecretStr(SASL_PASSWORD),
        chunk_max_records=100,
        metrics_port=metrics_port,
    )
    proxy = sasl_kafka.proxy
    failed_before = proxy.failed[mechanism]
    # The wrong password: refused at every attempt, so check waits out its broker timeout;
    # it runs alongside the rest of the test.
    wrong = _start_check(
        settings.model_copy(update={"kafka_sasl_password": SecretStr(SASL_WRONG_PASSWORD)})
    )
    try:
        _create_topics(settings, partitions=2)
        done = _check(settings)
        assert done.returncode == 0, done.stdout + done.stderr
        assert SASL_PASSWORD not in done.stdout + done.stderr

        produced = produce_records(settings, count=300, bad_share=0.0, seed=11)
        service = Service(settings, tmp_path).start()
        try:
            _wait_committed(settings, produced.ends, service, 60)
            url = f"http://{HOST}:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                metrics = response.read().decode()
        finally:
            assert service.stop() == 0
        _assert_in_both_stores(stack, settings, produced)
        assert "replicator_" in metrics
        for text in (service.log_text(), metrics):
            assert SASL_PASSWORD not in text
            assert SASL_PASSWORD.rsplit("-", 1)[1] not in text  # nor its random part

        out, err = wrong.communicate(timeout=60)
    finally:
        if wrong.poll() is None:
            wrong.kill()
            wrong.communicate()
    assert wrong.returncode == 1, out + err
    assert "FAIL kafka" in out + err, out + err
    assert SASL_WRONG_PASSWORD not in out + err and SASL_PASSWORD not in out + err
    # The exchanges really happened at the proxy, with this mechanism, both ways.
    assert proxy.authenticated[mechanism] > 0
    assert proxy.failed[mechanism] > failed_before


def test_kafka_sasl_listener_cuts_off_a_client_without_sasl(sasl_kafka: SaslKafka) -> None:
    proxy = sasl_kafka.proxy
    before = sum(proxy.refused_before_auth.values())
    conf: dict[str, Any] = {"bootstrap.servers": sasl_kafka.bootstrap, "logger": _quiet}
    admin = AdminClient(conf)
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=2)
    assert sum(proxy.refused_before_auth.values()) > before
    # What the broker itself advertises for SASL, and what librdkafka asked: the proxy
    # answers with SaslHandshake v1 and SaslAuthenticate v0-v1 in their place.
    assert proxy.broker_versions, "no ApiVersions answer seen from the broker"
    assert proxy.api_versions_requests


def _ssec_settings(base: Settings, endpoint: str, key: bytes) -> Settings:
    return base.model_copy(
        update={
            "s3_endpoint": endpoint,
            "s3_sse_customer_key": SecretStr(base64.b64encode(key).decode()),
        }
    )


def test_s3_sse_c_round_trip_or_headers_on_the_wire(
    stack: Any, settings_factory: Callable[..., Settings]
) -> None:

    key = bytes(range(32))
    key_md5 = base64.b64encode(hashlib.md5(key).digest()).decode()
    data = b"sse-c payload " * 100
    with FaultProxy(stack.port("s3")) as s3p:
        settings = _ssec_settings(settings_factory(), s3p.url, key)
        store = S3Store.from_settings(settings)
        plain = S3Store.from_settings(settings.model_copy(update={"s3_sse_customer_key": None}))
        try:
            try:
                outcome: str = str(
                    store.create_if_absent("ssec/a", data, hashlib.md5(data).digest(), {})
                )
            except StoreError as exc:
                outcome = f"refused: {exc.kind.value}"
            puts = [r for r in s3p.requests if r.method == "PUT" and "ssec/a" in r.path]
            assert puts, s3p.requests
            headers = puts[0].headers
            assert headers["x-amz-server-side-encryption-customer-algorithm"] == "AES256"
            assert headers["x-amz-server-side-encryption-customer-key"] == (
                base64.b64encode(key).decode()
            )
            assert headers["x-amz-server-side-encryption-customer-key-md5"] == key_md5
            if outcome.startswith("refused"):
                pytest.skip(f"SeaweedFS refused the SSE-C put ({outcome}); headers shown")
            # Read back with the key: the same bytes, and the key went with the GET.
            assert store.read("ssec/a") == data
            gets = [r for r in s3p.requests if r.method == "GET" and "ssec/a" in r.path]
            assert gets[-1].headers["x-amz-server-side-encryption-customer-key-md5"] == key_md5
            # The same put again: already present (HEAD and GET with the key, bytes hashed).
            again = store.create_if_absent("ssec/a", data, hashlib.md5(data).digest(), {})
            assert "ALREADY" in str(again).upper(), again
            # Without the key: no read.
            with pytest.raises(StoreError):
                plain.read("ssec/a")
        finally:
            store.close()
            plain.close()
