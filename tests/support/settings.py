"""A valid configuration for unit tests: nothing listens at its addresses."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from replicator.config import Settings


def offline_settings(**overrides: Any) -> Settings:
    """Both stores and one topic at addresses where nothing listens; `overrides` on top."""
    values: dict[str, Any] = {
        "kafka_bootstrap": "127.0.0.1:9",
        "topics": ["t"],
        "s3_endpoint": "http://127.0.0.1:9",
        "s3_bucket": "bucket",
        "s3_access_key": SecretStr("a"),
        "s3_secret_key": SecretStr("b"),
        "azure_connection_string": SecretStr("AccountName=a;AccountKey=Yw=="),
        "azure_container": "container",
    }
    values.update(overrides)
    return Settings(**values)
