"""Security against the real local stores:

- HTTPS to both stores with a custom CA: the local servers speak plain HTTP, so a
  TLS-terminating proxy (tests/support/faultproxy.py, certificate from a CA made for the test)
  sits in front of each; the service replicates through them with s3_ca_bundle /
  azure_ca_bundle, and refuses them without the CA;
- secrets read from mounted files (REPLICATOR_SECRETS_DIR), end to end with `replicator
  check` and `replicator config`, and never printed;
- server-side encryption settings reach the request (headers seen at the proxy);
- the service writes only under its own prefix (whole bucket and container listed).

Kafka SASL and TLS end to end are in tests/integration/test_kafka_security.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from replicator.config import Settings
from replicator.errors import StoreError
from replicator.stores.azure import AzureBlobStore
from replicator.stores.s3 import S3Store
from tests.support import checker
from tests.support.faultproxy import FaultProxy, make_ca
from tests.support.produce import produce_records
from tests.support.service import Service, settings_env, wait_committed

pytestmark = pytest.mark.integration


def _https_settings(
    settings: Settings, stack: Any, s3: FaultProxy, az: FaultProxy, ca: Path | None
) -> Settings:
    assert settings.azure_connection_string is not None
    conn = (
        settings.azure_connection_string.get_secret_value()
        .replace(f"http://127.0.0.1:{stack.port('azure')}/", f"https://127.0.0.1:{az.port}/")
        .replace("DefaultEndpointsProtocol=http;", "DefaultEndpointsProtocol=https;")
    )
    return settings.model_copy(
        update={
            "s3_endpoint": s3.url,
            "s3_ca_bundle": ca,
            "azure_connection_string": SecretStr(conn),
            "azure_ca_bundle": ca,
        }
    )


def test_https_to_both_stores_with_a_custom_ca_and_only_under_the_prefix(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    ca, cert, key = make_ca(tmp_path / "tls")
    base = settings_factory(chunk_max_records=200, s3_prefix="svc/a", azure_prefix="svc/a")
    with (
        FaultProxy(stack.port("s3"), tls=(cert, key)) as s3p,
        FaultProxy(stack.port("azure"), tls=(cert, key)) as azp,
    ):
        # Without the CA: refused (the system trust store does not know it).
        untrusted = _https_settings(base, stack, s3p, azp, None)
        for store_cls in (S3Store, AzureBlobStore):
            store = store_cls.from_settings(untrusted.model_copy(update={"store_timeout_s": 3}))
            try:
                with pytest.raises(StoreError):
                    store.health_check()
            finally:
                store.close()
        settings = _https_settings(base, stack, s3p, azp, ca)
        # Someone else's objects in the same bucket and container, outside our prefix.
        assert settings.s3_bucket is not None and settings.azure_container is not None
        stack.s3.put_object(Bucket=settings.s3_bucket, Key="other/x.avro", Body=b"theirs")
        stack.blob.get_container_client(settings.azure_container).upload_blob(
            "other/x.avro", b"theirs"
        )
        produced = produce_records(settings, count=800, bad_share=0.01, seed=61)
        service = Service(settings, tmp_path).start()
        try:
            wait_committed(
                settings.kafka_bootstrap,
                [settings.progress_group(s) for s in settings.stores],
                produced.ends,
                120,
                [service],
            )
        finally:
            assert service.stop() == 0
        assert len(s3p.requests) > 0 and len(azp.requests) > 0  # all went through HTTPS
    env = stack.env()
    assert_replicated_under(settings, env, produced, "svc/a/")
    s3_keys = [
        o["Key"]
        for page in stack.s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket)
        for o in page.get("Contents", [])
    ]
    blobs = [b.name for b in stack.blob.get_container_client(settings.azure_container).list_blobs()]
    for names in (s3_keys, blobs):
        outside = [n for n in names if not n.startswith("svc/a/") and n != "other/x.avro"]
        assert outside == [], outside[:5]
        assert "other/x.avro" in names  # untouched
    assert stack.s3.get_object(Bucket=settings.s3_bucket, Key="other/x.avro")["Body"].read() == (
        b"theirs"
    )


def assert_replicated_under(
    settings: Settings, env: dict[str, str], produced: Any, prefix: str
) -> None:

    original_s3, original_az = checker.s3_objects, checker.azure_objects
    s3 = original_s3(env, settings.s3_bucket or "", prefix)
    az = original_az(env, settings.azure_container or "", prefix)
    assert s3 and checker.md5s(s3) == checker.md5s(az)
    content = checker.decode_objects(s3)
    kafka: dict[Any, Any] = {}
    for topic in settings.topics:
        kafka.update(checker.read_topic(settings.kafka_bootstrap, topic, 3))
    verdict = checker.compare(kafka, content, produced.bad)
    assert not (verdict.lost or verdict.doubled or verdict.altered or verdict.unexpected)


def test_server_side_encryption_settings_reach_the_requests(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """What reaches the wire is what we can show: the local servers may ignore or refuse
    these headers (they hold no keys), so the outcome of the put is reported, not asserted."""
    with FaultProxy(stack.port("s3")) as s3p, FaultProxy(stack.port("azure")) as azp:
        base = settings_factory()
        assert base.azure_connection_string is not None
        conn = base.azure_connection_string.get_secret_value().replace(
            f"127.0.0.1:{stack.port('azure')}/", f"127.0.0.1:{azp.port}/"
        )
        outcomes: dict[str, str] = {}
        for n, (sse, kms_key) in enumerate((("AES256", None), ("aws:kms", "key-123"))):
            settings = base.model_copy(
                update={"s3_endpoint": s3p.url, "s3_sse": sse, "s3_sse_kms_key_id": kms_key}
            )
            store = S3Store.from_settings(settings)
            try:
                outcomes[sse] = str(store.create_if_absent(f"sse/n{n}", b"x", _md5(b"x"), {}))
            except StoreError as exc:
                outcomes[sse] = f"refused: {exc.kind.value}"
            finally:
                store.close()
            puts = [r for r in s3p.requests if r.method == "PUT" and f"sse/n{n}" in r.path]
            assert puts, s3p.requests
            assert puts[0].headers["x-amz-server-side-encryption"] == sse
            if kms_key:
                assert puts[0].headers["x-amz-server-side-encryption-aws-kms-key-id"] == kms_key
        store_az = AzureBlobStore.from_settings(
            base.model_copy(
                update={
                    "azure_connection_string": SecretStr(conn),
                    "azure_encryption_scope": "replicator-scope",
                }
            )
        )
        try:
            outcomes["azure"] = str(store_az.create_if_absent("sse/az", b"x", _md5(b"x"), {}))
        except StoreError as exc:
            outcomes["azure"] = f"refused: {exc.kind.value}"
        finally:
            store_az.close()
        puts = [r for r in azp.requests if r.method == "PUT" and "sse/az" in r.path]
        assert puts and puts[0].headers["x-ms-encryption-scope"] == "replicator-scope"
    print(f"server-side encryption outcomes on the local servers: {outcomes}")


def _md5(data: bytes) -> bytes:

    return hashlib.md5(data).digest()


def test_secrets_from_mounted_files_work_and_are_never_printed(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    env.update(settings_env(settings))
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    secret_values = []
    for name in ("s3_secret_key", "s3_access_key", "azure_connection_string"):
        var = f"REPLICATOR_{name.upper()}"
        value = env.pop(var)
        secret_values.append(value)
        # Kubernetes mounts one file per key, named after the variable.
        (secrets_dir / var).write_text(value)
    env["REPLICATOR_SECRETS_DIR"] = str(secrets_dir)
    outputs = []
    for command in (["check"], ["config"], ["config", "--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "replicator", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        outputs.append(done.stdout + done.stderr)
        assert done.returncode == 0, done.stdout + done.stderr
    # A wrong secret in a file: the error names the store, never the value.
    (secrets_dir / "REPLICATOR_S3_SECRET_KEY").write_text("wrong-secret-value-123")
    done = subprocess.run(
        [sys.executable, "-m", "replicator", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    outputs.append(done.stdout + done.stderr)
    secret_values.append("wrong-secret-value-123")
    account_key = stack.azure_connection_string.split("AccountKey=")[1].split(";")[0]
    secret_values.append(account_key)
    for text in outputs:
        for value in secret_values:
            assert value not in text
        assert stack.s3_secret_key not in text
