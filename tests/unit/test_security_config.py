"""Kafka SASL (PLAIN, SCRAM) and TLS with a custom CA, secrets from mounted files, and masking.

Here at the client-configuration level (what librdkafka is given); end to end, through a
TLS tunnel and a SASL proxy in front of the local broker, in
tests/integration/test_kafka_security.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from replicator.config import Settings, load_settings
from replicator.errors import ConfigError

SECRET = "s3cr3t-Pa55-word-value"


def _base(**extra: object) -> dict[str, object]:
    return {
        "kafka_bootstrap": "broker:9093",
        "stores": ["s3"],
        "s3_endpoint": "https://s3.fr-par.scw.cloud",
        "s3_bucket": "bucket",
        "s3_access_key": "AKEXAMPLE-access",
        "s3_secret_key": SECRET + "-s3",
        **extra,
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_with_a_custom_ca_reaches_librdkafka(mechanism: str, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = Settings(
        **_base(  # type: ignore[arg-type]
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism=mechanism,
            kafka_sasl_username="replicator",
            kafka_sasl_password=SECRET,
            kafka_ssl_ca_location=ca,
        )
    )
    conf = settings.kafka_common()
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == mechanism
    assert conf["sasl.username"] == "replicator"
    assert conf["sasl.password"] == SECRET
    assert conf["ssl.ca.location"] == str(ca)


def test_sasl_without_credentials_is_refused_without_echoing_anything() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**_base(kafka_sasl_mechanism="PLAIN", kafka_sasl_password=SECRET))
    assert "REPLICATOR_KAFKA_SASL_USERNAME" in str(err.value)
    assert SECRET not in str(err.value)


def test_secrets_from_mounted_files_and_masked_everywhere_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("REPLICATOR_S3_SECRET_KEY", "REPLICATOR_KAFKA_SASL_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    # Kubernetes mounts one file per key; the file name is the variable's name.
    (secrets / "REPLICATOR_S3_SECRET_KEY").write_text(SECRET + "-file")
    (secrets / "REPLICATOR_KAFKA_SASL_PASSWORD").write_text(SECRET + "-sasl")
    monkeypatch.setenv("REPLICATOR_SECRETS_DIR", str(secrets))
    base = _base(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="u",
    )
    del base["s3_secret_key"]
    settings = load_settings(**base)
    assert settings.s3_secret_key is not None
    assert settings.s3_secret_key.get_secret_value() == SECRET + "-file"
    assert settings.kafka_common()["sasl.password"] == SECRET + "-sasl"
    shown = [
        str(settings),
        repr(settings),
        json.dumps(settings.printable(), default=str),
    ]
    for text in shown:
        assert SECRET not in text


def test_invalid_secret_value_is_not_echoed_in_the_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**_base(s3_sse="rot13", s3_secret_key=SECRET))
    assert SECRET not in str(err.value)
    assert "REPLICATOR_S3_SSE" in str(err.value)


def test_kms_key_without_kms_is_refused() -> None:
    with pytest.raises(ConfigError):
        load_settings(**_base(s3_sse_kms_key_id="k"))
