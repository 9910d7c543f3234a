"""Pure parts of the operator tools: the rclone configuration, time options, the cutover
record reader."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import typer
from pydantic import SecretStr

from replicator.cli.ops import parse_time
from replicator.config import Settings
from replicator.errors import ConfigError, StoreError, StoreErrorKind
from replicator.ops.rclone import container_sas_url, rclone_config, remote_paths, scrub
from replicator.stores.base import ObjectInfo, PutOutcome
from replicator.stores.retirement import RECORD_KEY, retired_stores

KEY = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5"  # base64, not a real key


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap": "127.0.0.1:1",
        "s3_endpoint": "http://127.0.0.1:2",
        "s3_bucket": "bucket",
        "s3_prefix": "replicator",
        "s3_access_key": SecretStr("AK"),
        "s3_secret_key": SecretStr("SECRET-S3"),
        "azure_connection_string": SecretStr(
            f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={KEY};"
            "BlobEndpoint=http://127.0.0.1:3/acct;"
        ),
        "azure_container": "cont",
    }
    values.update(overrides)
    return Settings(**values)


def test_rclone_configuration_has_both_remotes_and_names_its_secrets() -> None:
    text, secrets = rclone_config(settings())
    assert "[s3store]\ntype = s3\nprovider = Other\n" in text
    assert "force_path_style = true" in text and "endpoint = http://127.0.0.1:2" in text
    assert "sas_url = http://127.0.0.1:3/acct/cont?" in text
    assert "sp=rl" in text  # read and list only
    assert "SECRET-S3" in secrets and any("sig=" in s for s in secrets)
    assert KEY not in text
    assert remote_paths(settings()) == ("s3store:bucket/replicator", "azstore:cont/replicator")
    assert scrub(f"x SECRET-S3 y {secrets[-1]} z", secrets) == "x *** y *** z"


def test_a_sas_connection_string_is_used_as_it_is() -> None:
    conn = "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=1&sig=abc"
    url = container_sas_url(settings(azure_connection_string=SecretStr(conn)))
    assert url == "https://acct.blob.core.windows.net/cont?sv=1&sig=abc"
    with pytest.raises(ConfigError):
        # refused at load too; model_copy skips that, to show rclone's own check
        container_sas_url(
            settings().model_copy(update={"azure_connection_string": SecretStr("AccountName=acct")})
        )


def test_times_are_iso_8601_and_utc_by_default() -> None:
    assert parse_time("1970-01-01T00:00:01.5Z", "--since") == 1500
    assert parse_time("1970-01-01T01:00:00+01:00", "--since") == 0
    assert parse_time("1970-01-01T00:00:02", "--since") == 2000
    with pytest.raises(typer.Exit) as exc:
        parse_time("yesterday", "--since")
    assert exc.value.exit_code == 2


class FakeStore:
    def __init__(self, name: str, content: bytes | None, kind: StoreErrorKind | None = None):
        self._name, self.content, self.kind = name, content, kind

    @property
    def name(self) -> str:
        return self._name

    def health_check(self) -> None: ...

    def create_if_absent(
        self, key: str, data: bytes, md5: bytes, metadata: Mapping[str, str]
    ) -> PutOutcome:
        raise NotImplementedError

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        return iter([])

    def read(self, key: str) -> bytes:
        assert key == RECORD_KEY
        if self.kind is not None:
            raise StoreError(self._name, self.kind, "no")
        assert self.content is not None
        return self.content

    def delete(self, key: str) -> None: ...

    def close(self) -> None: ...


def test_retired_stores_reads_the_record_from_whichever_store_answers() -> None:
    record = json.dumps({"retired": "azure"}).encode()
    absent = StoreErrorKind.NOT_FOUND
    down = StoreErrorKind.UNAVAILABLE
    assert (
        retired_stores([FakeStore("s3", None, absent), FakeStore("azure", None, absent)]) == set()
    )
    assert retired_stores([FakeStore("s3", None, down), FakeStore("azure", record)]) == {"azure"}
    assert retired_stores([FakeStore("s3", record), FakeStore("azure", None, absent)]) == {"azure"}
    assert retired_stores([FakeStore("s3", b"not json")]) == set()
