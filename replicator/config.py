"""Typed settings, loaded once at start-up from the environment (REPLICATOR_*) and from
mounted secret files (REPLICATOR_SECRETS_DIR, one file per setting name).

Secrets are `SecretStr`: their str() and repr() print '**********', so printing the settings,
logging them or putting them in an error never reveals them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from replicator.errors import ConfigError
from replicator.logs import KAFKA_LOGGER

StoreName = Literal["s3", "azure"]
RESERVED_FOLDERS = frozenset({"_cutover", "_audit"})  # store folders that are not topics

DEFAULT_SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def sse_customer_key_bytes(key: SecretStr) -> bytes:
    """The 32 raw bytes of an SSE-C key given as base64; ValueError (without the key) if the
    text is not base64 or does not decode to 32 bytes."""

    try:
        raw = base64.b64decode(key.get_secret_value().strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("REPLICATOR_S3_SSE_CUSTOMER_KEY is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(
            f"REPLICATOR_S3_SSE_CUSTOMER_KEY must decode to 32 bytes (AES-256), not {len(raw)}"
        )
    return raw


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REPLICATOR_",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = Field(description="Kafka bootstrap servers, host:port[,host:port]")
    topics: Annotated[list[str], NoDecode] = Field(
        default=["snds.reimbursements", "snds.prescriptions"],
        description="Topics to replicate (comma-separated)",
    )
    schema_topics: dict[str, str] = Field(
        default_factory=dict,
        description="For a replicated topic whose name differs from the topic its schemas are "
        "registered for in the registry file: JSON object {topic: registry topic}",
    )
    dead_letter_topic: str = Field(default="snds.dead-letter", description="Dead-letter topic")
    group_id: str = Field(
        default="replicator",
        description="Consumer group sharing the partitions; each store's progress is "
        "the group '<group_id>.<store>'",
    )
    session_timeout_ms: int = Field(
        default=10_000,
        ge=1_000,
        description="Consumer session timeout; a new member gets its partitions after about "
        "half of it on some brokers",
    )
    fetch_buffer_kbytes: int = Field(
        default=16_384,
        ge=1024,
        description="Pre-fetched kilobytes the consumer may hold (librdkafka "
        "queued.max.messages.kbytes)",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="librdkafka `security.protocol`; production: SASL_SSL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism; unset: no SASL"
    )
    kafka_sasl_username: str | None = Field(
        default=None, description="SASL user name (needs REPLICATOR_KAFKA_SASL_PASSWORD)"
    )
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password")
    kafka_ssl_ca_location: Path | None = Field(default=None, description="CA bundle for Kafka TLS")

    # --- Stores ------------------------------------------------------------------------
    stores: Annotated[list[StoreName], NoDecode] = Field(
        default=["s3", "azure"], description="Stores written (comma-separated: s3, azure)"
    )
    s3_endpoint: str | None = Field(
        default=None, description="S3 endpoint URL (Scaleway: https://s3.fr-par.scw.cloud)"
    )
    s3_region: str = Field(
        default="fr-par", description="S3 region (Scaleway: fr-par, nl-ams or pl-waw)"
    )
    s3_bucket: str | None = Field(
        default=None, description="Bucket the objects are written to (must exist)"
    )
    s3_prefix: str = Field(
        default="replicator", description="Key prefix the service owns in the bucket"
    )
    s3_access_key: SecretStr | None = Field(default=None, description="S3 access key id")
    s3_secret_key: SecretStr | None = Field(default=None, description="S3 secret key")
    s3_ca_bundle: Path | None = Field(default=None, description="CA bundle for HTTPS to S3")
    s3_sse: Literal["AES256", "aws:kms"] | None = Field(
        default=None,
        description="Server-side encryption asked for on every put (x-amz-server-side-encryption)",
    )
    s3_sse_kms_key_id: str | None = Field(
        default=None,
        description="KMS key id for s3_sse=aws:kms (x-amz-server-side-encryption-aws-kms-key-id)",
    )
    s3_sse_customer_key: SecretStr | None = Field(
        default=None,
        description="SSE-C: base64 of a 32-byte AES-256 key the S3 service encrypts every "
        "object with and does not keep; sent (with its MD5) on every put, head and get; "
        "without it the objects cannot be read back. Not with REPLICATOR_S3_SSE",
    )
    azure_connection_string: SecretStr | None = Field(
        default=None,
        description="Azure Storage connection string: with an account key (`AccountName=...;AccountKey=...`) or a SAS token (`BlobEndpoint=...;SharedAccessSignature=...`)",
    )
    azure_container: str | None = Field(
        default=None, description="Blob container the objects are written to (must exist)"
    )
    azure_prefix: str = Field(default="replicator", description="Blob name prefix the service owns")
    azure_ca_bundle: Path | None = Field(default=None, description="CA bundle for HTTPS to Azure")
    azure_encryption_scope: str | None = Field(
        default=None, description="Encryption scope of every blob written (x-ms-encryption-scope)"
    )
    store_timeout_s: float = Field(default=10.0, gt=0, description="Per-request store timeout")
    write_retry_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a failing put is retried before the store "
        "is marked down (it then catches up from Kafka when it answers again)",
    )
    health_interval_s: float = Field(
        default=5.0, gt=0, description="How often a down store is probed"
    )
    catchup_copy: bool = Field(
        default=True,
        description="A store catching up copies, from a store that already holds them, the "
        "objects of ranges that store has written (the same bytes, at the stores' bandwidth), "
        "and reads Kafka again only for the rest",
    )

    # --- Chunks ------------------------------------------------------------------------
    chunk_max_records: int = Field(
        description="A chunk is cut when it holds this many offsets",
        default=50_000,
        ge=1,
    )
    chunk_max_bytes: int = Field(
        description="A chunk's raw Avro record bodies add up to at most this many bytes (a single larger record gets a chunk of its own)",
        default=4 * 1024 * 1024,
        ge=1024,
    )
    chunk_window_s: int = Field(
        default=3600,
        ge=1,
        description="Records whose timestamps fall in different windows "
        "of this length never share a chunk",
    )
    flush_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="An open chunk older than this (wall clock) is cut, "
        "so a quiet partition still reaches the stores",
    )
    codec: Literal["null", "deflate"] = Field(default="deflate", description="Avro container codec")
    deflate_level: int = Field(
        description="Deflate compression level (codec deflate); fixes the objects' bytes, "
        "see docs/runbook.md before changing it under live data",
        default=1,
        ge=0,
        le=9,
    )

    # --- Service -----------------------------------------------------------------------
    schemas_dir: Path = Field(
        default=DEFAULT_SCHEMAS_DIR, description="Folder of the Avro schemas and registry.json"
    )
    max_record_bytes: int = Field(
        default=1024 * 1024,
        ge=64,
        description="A record value longer than this goes to the dead-letter topic "
        "(reason oversized)",
    )
    max_buffer_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description="Encoded bytes waiting for stores, all stores together; past it a "
        "lagging store is dropped from the live stream and catches up from Kafka",
    )
    audit_max_memory_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=16 * 1024 * 1024,
        description="`replicator audit`: memory for records and objects held at once, all "
        "partitions together (shared by the partitions audited in parallel: source records "
        "over one object's key range, the objects being compared, the consumer's queue)",
    )
    decode_workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Worker processes that decode and check records beside the main loop "
        "(0: in the main loop, where the compiled fast path judges a record in less time "
        "than handing it to another process takes; see docs/performance.md)",
    )
    write_concurrency: int = Field(default=4, ge=1, le=64, description="Concurrent puts per store")
    commit_interval_s: float = Field(
        description="How often each store's durable progress is committed to its consumer group",
        default=1.0,
        gt=0,
    )
    shutdown_timeout_s: float = Field(
        description="On SIGTERM (or a partition revoked), how long in-flight puts may take to finish before the final commit; Kubernetes' termination grace must be longer",
        default=30.0,
        gt=0,
    )
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - a pod serves its probes and metrics on its own address
        description="Address of the HTTP server (/metrics, /healthz, /readyz)",
    )
    metrics_port: int = Field(
        default=9108, ge=0, le=65535, description="Port of /metrics, /healthz and /readyz"
    )
    lag_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often each store's lag is read from Kafka (committed offsets, "
        "high watermarks, timestamps of the oldest records not yet in the store)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level"
    )
    log_format: Literal["json", "human", "auto"] = Field(
        default="auto", description="Log format; auto: human on a terminal, JSON otherwise"
    )

    @field_validator("topics", "stores", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("topics", mode="after")
    @classmethod
    def _not_reserved(cls, value: list[str]) -> list[str]:
        # The stores' reserved folders (the cutover record, the audit's manifests) sit
        # beside the topics' folders: a topic of the same name would mix with them.
        reserved = [t for t in value if t in RESERVED_FOLDERS]
        if reserved:
            raise ValueError(f"{', '.join(reserved)}: reserved name(s), not a topic to replicate")
        return value

    @model_validator(mode="after")
    def _check_stores(self) -> Settings:
        if not self.stores:
            raise ValueError("at least one store must be enabled")
        if len(set(self.stores)) != len(self.stores):
            raise ValueError("a store is listed twice")
        if "s3" in self.stores:
            missing = [
                name
                for name in ("s3_endpoint", "s3_bucket", "s3_access_key", "s3_secret_key")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    "store s3 needs " + ", ".join("REPLICATOR_" + m.upper() for m in missing)
                )
        if "azure" in self.stores:
            missing = [
                name
                for name in ("azure_connection_string", "azure_container")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    "store azure needs " + ", ".join("REPLICATOR_" + m.upper() for m in missing)
                )
        if self.s3_sse_kms_key_id and self.s3_sse != "aws:kms":
            raise ValueError("REPLICATOR_S3_SSE_KMS_KEY_ID needs REPLICATOR_S3_SSE=aws:kms")
        if self.s3_sse_customer_key is not None:
            if self.s3_sse:
                raise ValueError(
                    "REPLICATOR_S3_SSE_CUSTOMER_KEY (SSE-C) cannot be combined with "
                    "REPLICATOR_S3_SSE: choose one server-side encryption"
                )
            sse_customer_key_bytes(self.s3_sse_customer_key)
        if self.dead_letter_topic in self.topics:
            raise ValueError("the dead-letter topic cannot also be a replicated topic")
        if self.kafka_sasl_mechanism and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "SASL needs REPLICATOR_KAFKA_SASL_USERNAME and REPLICATOR_KAFKA_SASL_PASSWORD"
            )
        return self

    def schema_topic(self, topic: str) -> str:
        """The topic name the registry knows this topic's schemas by."""
        return self.schema_topics.get(topic, topic)

    def progress_group(self, store: str) -> str:
        return f"{self.group_id}.{store}"

    def kafka_common(self) -> dict[str, Any]:
        """librdkafka settings shared by every client (consumer, producer, admin)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
            # librdkafka's own lines go through logging (JSON like every other line) rather
            # than straight to stderr; see replicator.logs.KAFKA_LOGGER.
            "logger": logging.getLogger(KAFKA_LOGGER),
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username
            assert self.kafka_sasl_password is not None
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_ca_location:
            conf["ssl.ca.location"] = str(self.kafka_ssl_ca_location)
        return conf

    def printable(self) -> dict[str, Any]:
        """The settings as plain values for display; secrets masked."""
        out: dict[str, Any] = {}
        for name, value in self:
            if isinstance(value, SecretStr):
                out[name] = "**********"
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out


def load_settings(**overrides: Any) -> Settings:
    """Load the settings or raise ConfigError with one readable message (no secret in it)."""
    secrets_dir = os.environ.get("REPLICATOR_SECRETS_DIR")
    if secrets_dir and not Path(secrets_dir).is_dir():
        raise ConfigError(f"REPLICATOR_SECRETS_DIR={secrets_dir} is not a directory")
    try:
        return Settings(_secrets_dir=secrets_dir, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(part) for part in err["loc"])
            name = f"REPLICATOR_{loc.upper()}" if loc else "settings"
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
