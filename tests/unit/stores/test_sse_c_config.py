"""SSE-C settings: base64 of exactly 32 bytes, never combined with s3_sse, never printed."""

from __future__ import annotations

import base64

import pytest

from replicator.config import load_settings
from replicator.errors import ConfigError
from replicator.stores.s3 import S3Store

KEY = base64.b64encode(bytes(range(32))).decode()


def _base(**extra: object) -> dict[str, object]:
    return {
        "kafka_bootstrap": "broker:9093",
        "stores": ["s3"],
        "s3_endpoint": "https://s3.fr-par.scw.cloud",
        "s3_bucket": "bucket",
        "s3_access_key": "AKEXAMPLE",
        "s3_secret_key": "secret",
        **extra,
    }


def test_a_valid_key_reaches_the_store_and_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("REPLICATOR_")]:
        monkeypatch.delenv(name)
    settings = load_settings(**_base(s3_sse_customer_key=KEY))
    assert settings.printable()["s3_sse_customer_key"] == "**********"
    assert KEY not in repr(settings)
    store = S3Store.from_settings(settings)
    try:
        assert store._ssec_args["SSECustomerAlgorithm"] == "AES256"
        assert store._ssec_args["SSECustomerKey"] == bytes(range(32))
    finally:
        store.close()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (base64.b64encode(b"x" * 16).decode(), "32 bytes"),
        ("not base64 !!", "base64"),
        ("A" * 32, "32 bytes"),  # 32 characters of base64 decode to 24 bytes
    ],
)
def test_a_bad_key_is_refused_without_printing_it(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**_base(s3_sse_customer_key=value))
    assert message in str(err.value)
    assert value not in str(err.value)


@pytest.mark.parametrize("sse", ["AES256", "aws:kms"])
def test_sse_c_with_s3_sse_is_refused(sse: str) -> None:
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_settings(**_base(s3_sse_customer_key=KEY, s3_sse=sse))
