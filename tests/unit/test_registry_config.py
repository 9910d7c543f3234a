"""The schema registry's settings: refused with one line naming the variable, never the
secret; masked when printed; handed to SchemaRegistryClient as its own keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from replicator.config import Settings, load_settings
from replicator.errors import ConfigError
from replicator.judge.registry import client_conf, make_client
from tests.unit.test_config_checks import SECRET, valid


def settings(**overrides: Any) -> Settings:
    return Settings(**valid(**overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"schema_registry_url": "ftp://registry:8081"}, "SCHEMA_REGISTRY_URL"),
        ({"schema_registry_url": f"https://user:{SECRET}@registry:8081"}, "credentials in the URL"),
        ({"schema_registry_url": "https://r1:8081,https://r2:99999"}, "port"),
        ({"schema_registry_basic_auth": SECRET}, "must be 'user:password'"),
        ({"schema_registry_basic_auth": f":{SECRET}"}, "must be 'user:password'"),
        ({"schema_registry_bearer_token": f"{SECRET}\nmore"}, "several lines"),
        (
            {"schema_registry_basic_auth": f"u:{SECRET}", "schema_registry_bearer_token": SECRET},
            "cannot be combined",
        ),
        ({"schema_subject_strategy": "subject"}, "SCHEMA_SUBJECT_STRATEGY"),
        ({"schema_subject_strategy": "record"}, "needs REPLICATOR_SCHEMA_RECORD_NAMES"),
        (
            {
                "schema_subject_strategy": "record",
                "schema_record_names": '{"snds.reimbursements": "fr.hdh.snds.Reimbursement"}',
            },
            "allowed on snds.prescriptions",
        ),
        (
            {"schema_record_names": '{"snds.reimbursements": "fr.hdh.snds.Reimbursement"}'},
            "for REPLICATOR_SCHEMA_SUBJECT_STRATEGY=record only",
        ),
        (
            {
                "schema_subject_strategy": "record",
                "schema_record_names": '{"snds.reimbursements": "fr..Bad", '
                '"snds.prescriptions": "x.Y"}',
            },
            "not an Avro full name",
        ),
        ({"schema_registry_cache_size": 0}, "SCHEMA_REGISTRY_CACHE_SIZE"),
        ({"schema_registry_timeout_s": float("inf")}, "SCHEMA_REGISTRY_TIMEOUT_S"),
    ],
)
def test_a_bad_registry_setting_is_refused_without_its_secret(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**valid(**overrides))
    text = str(caught.value)
    assert message in text, text
    assert SECRET not in text


def test_a_certificate_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    with pytest.raises(ValueError, match="go together"):
        settings(schema_registry_certificate_location=cert)


def test_the_record_strategy_names_the_records_of_each_topic() -> None:
    s = settings(
        schema_subject_strategy="record",
        schema_record_names='{"snds.reimbursements": "fr.hdh.snds.Reimbursement, a.B",'
        ' "snds.prescriptions": "fr.hdh.snds.Prescription"}',
    )
    assert s.record_names() == {
        "snds.reimbursements": ("fr.hdh.snds.Reimbursement", "a.B"),
        "snds.prescriptions": ("fr.hdh.snds.Prescription",),
    }


def test_the_client_gets_its_keys_and_printing_masks_the_secrets(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    s = settings(
        schema_registry_url="https://r1:8081, https://r2:8081",
        schema_registry_basic_auth=f"user:{SECRET}",
        schema_registry_ca_location=ca,
        schema_registry_timeout_s=3,
    )
    assert s.schema_registry_url == ["https://r1:8081", "https://r2:8081"]
    assert client_conf(s) == {
        "url": "https://r1:8081,https://r2:8081",
        "timeout": 3.0,
        "max.retries": 0,  # the service retries itself, without holding its loop
        "cache.capacity": 10_000,
        "basic.auth.user.info": f"user:{SECRET}",
        "ssl.ca.location": str(ca),
    }
    printed = s.printable()
    assert printed["schema_registry_basic_auth"] == "**********"
    assert SECRET not in repr(printed) and SECRET not in repr(s)
    bearer = settings(
        schema_registry_url="https://r1:8081",
        schema_registry_bearer_token=SECRET,
        schema_registry_logical_cluster="lsrc-1",
    )
    conf = client_conf(bearer)
    assert conf["bearer.auth.credentials.source"] == "STATIC_TOKEN"
    assert (conf["bearer.auth.token"], conf["bearer.auth.logical.cluster"]) == (SECRET, "lsrc-1")
    assert bearer.printable()["schema_registry_bearer_token"] == "**********"
    assert make_client(bearer) is not None
    assert make_client(settings()) is None  # file mode
