"""Typed settings, loaded once at start-up from the environment (REPLICATOR_*) and from
mounted secret files (REPLICATOR_SECRETS_DIR, one file per setting name).

Secrets are `SecretStr`: their str() and repr() print '**********', so printing the settings,
logging them or putting them in an error never reveals them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from replicator import client_properties as props
from replicator import config_checks as checks
from replicator.errors import ConfigError
from replicator.logs import KAFKA_LOGGER

StoreName = Literal["s3", "azure"]
RESERVED_FOLDERS = frozenset({"_cutover", "_audit"})  # store folders that are not topics

DEFAULT_SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _env(field: str) -> str:
    return "REPLICATOR_" + field.upper()


def sse_customer_key_bytes(key: SecretStr) -> bytes:
    """The 32 raw bytes of an SSE-C key given as base64; ValueError (without the key) if the
    text is not base64 or does not decode to 32 bytes."""
    try:
        return checks.check_sse_customer_key(key.get_secret_value())
    except ValueError as exc:
        raise ValueError(f"REPLICATOR_S3_SSE_CUSTOMER_KEY {exc}") from None


# Durations are finite (NaN and infinity are refused for every float) and at most a day: a
# larger wait is a typo, and some (threading, sockets) overflow past about 292 years.
MAX_DURATION_S = 86_400


class BadSecretFile:
    """What the secrets folder holds for a setting whose file cannot be used: validation
    turns it into an error naming the setting (the file's content is never read into it)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class SecretFilesSource(PydanticBaseSettingsSource):
    """Settings from the files of REPLICATOR_SECRETS_DIR, one file per setting, named like its
    environment variable (case-insensitive), stripped. A file that cannot be used (broken
    link, folder, unreadable, not UTF-8, empty) becomes a BadSecretFile, refused by
    validation only if no environment variable gives the setting (a variable wins). A file
    may be a link to anywhere (Kubernetes mounts each key as a link into `..data/`): the
    folder is the operator's, not an input to guard against."""

    def __init__(self, settings_cls: type[BaseSettings], secrets_dir: Path | None) -> None:
        super().__init__(settings_cls)
        self.secrets_dir = secrets_dir

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the folder once

    def __call__(self) -> dict[str, Any]:
        if self.secrets_dir is None:
            return {}
        by_name = {"replicator_" + name: name for name in self.settings_cls.model_fields}
        out: dict[str, Any] = {}
        for path in sorted(self.secrets_dir.iterdir()):
            field = by_name.get(path.name.lower())
            if field is None or field in out:
                continue
            try:
                out[field] = checks.read_secret_file(path)
            except ValueError as exc:
                out[field] = BadSecretFile(str(exc))
        return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REPLICATOR_",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
        allow_inf_nan=False,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        folder = None
        if isinstance(file_secret_settings, SecretsSettingsSource) and isinstance(
            file_secret_settings.secrets_dir, (str, Path)
        ):
            folder = Path(file_secret_settings.secrets_dir)
        return init_settings, env_settings, dotenv_settings, SecretFilesSource(settings_cls, folder)

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = Field(description="Kafka bootstrap servers, host:port[,host:port]")
    topics: Annotated[list[str], NoDecode] = Field(
        default=["snds.reimbursements", "snds.prescriptions"],
        description="Topics to replicate (comma-separated)",
    )
    schema_topics: Annotated[dict[str, str], NoDecode] = Field(
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
        le=3_600_000,
        description="Consumer session timeout; a new member gets its partitions after about "
        "half of it on some brokers",
    )
    fetch_buffer_kbytes: int = Field(
        default=16_384,
        ge=1024,
        le=2_097_151,
        description="Pre-fetched kilobytes the consumer may hold (librdkafka "
        "queued.max.messages.kbytes)",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="librdkafka `security.protocol`; production: SASL_SSL"
    )
    kafka_sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None
    ) = Field(
        default=None,
        description="SASL mechanism; unset: no SASL. OAUTHBEARER takes its token settings "
        "as client properties (sasl.oauthbearer.*, see docs/production.md)",
    )
    kafka_sasl_username: str | None = Field(
        default=None, description="SASL user name (needs REPLICATOR_KAFKA_SASL_PASSWORD)"
    )
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password")
    kafka_ssl_ca_location: Path | None = Field(default=None, description="CA bundle for Kafka TLS")
    kafka_properties_file: Path | None = Field(
        default=None,
        description="A properties file (`key=value` lines, `#` comments) of librdkafka "
        "properties passed to every Kafka client; REPLICATOR_KAFKA_PROPERTY_<NAME> variables "
        "give more and win over it (docs/configuration.md, 'Any Kafka client property')",
    )
    _client_properties: props.ClientProperties = PrivateAttr(default_factory=props.ClientProperties)

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
    store_timeout_s: float = Field(
        default=10.0, gt=0, le=MAX_DURATION_S, description="Per-request store timeout"
    )
    write_retry_s: float = Field(
        default=30.0,
        ge=0,
        le=MAX_DURATION_S,
        description="How long a failing put is retried before the store "
        "is marked down (it then catches up from Kafka when it answers again)",
    )
    health_interval_s: float = Field(
        default=5.0, gt=0, le=MAX_DURATION_S, description="How often a down store is probed"
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
        le=MAX_DURATION_S,
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
        default=DEFAULT_SCHEMAS_DIR,
        description="Folder of the Avro schemas and registry.json: the writer schemas when "
        "no REPLICATOR_SCHEMA_REGISTRY_URL is set (the offline mode); SIGHUP or a new "
        "modification time of registry.json reloads it",
    )
    schemas_reload_interval_s: float = Field(
        default=5.0,
        ge=0,
        le=MAX_DURATION_S,
        description="How often the modification time of registry.json is checked (a mounted "
        "ConfigMap changes it); 0: only SIGHUP reloads it",
    )
    # --- Schema registry server ----------------------------------------------------------
    schema_registry_url: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Confluent-compatible schema registry URL(s), comma-separated (tried in "
        "turn); empty: the schemas come from REPLICATOR_SCHEMAS_DIR",
    )
    schema_registry_basic_auth: SecretStr | None = Field(
        default=None, description="Schema registry basic auth, 'user:password' (a secret)"
    )
    schema_registry_bearer_token: SecretStr | None = Field(
        default=None, description="Schema registry bearer token (a secret)"
    )
    schema_registry_logical_cluster: str = Field(
        default="",
        description="With a bearer token: the registry's logical cluster id (Confluent "
        "Cloud's lsrc-...), sent as target-sr-cluster",
    )
    schema_registry_ca_location: Path | None = Field(
        default=None, description="CA bundle for the schema registry's TLS"
    )
    schema_registry_certificate_location: Path | None = Field(
        default=None, description="Client certificate (PEM) for the schema registry's mTLS"
    )
    schema_registry_key_location: Path | None = Field(
        default=None, description="Client private key (PEM) for the schema registry's mTLS"
    )
    schema_registry_timeout_s: float = Field(
        default=10.0, gt=0, le=MAX_DURATION_S, description="Schema registry request timeout"
    )
    schema_registry_cache_size: int = Field(
        default=10_000,
        ge=1,
        description="Schema ids whose lookup is kept (ids are immutable; least recently "
        "used dropped first)",
    )
    schema_registry_retry_max_s: float = Field(
        default=30.0,
        gt=0,
        le=MAX_DURATION_S,
        description="Longest wait between two lookups while the schema registry does not "
        "answer (the record's partition is held meanwhile, nothing dead-lettered)",
    )
    schema_subject_strategy: Literal["topic", "record", "topic-record"] = Field(
        default="topic",
        description="Subject name strategy of the producers: topic ('<topic>-value'), "
        "record (the record's full name) or topic-record ('<topic>-<full name>'); a schema "
        "not registered under its topic's subject is dead-lettered (wrong_topic_schema)",
    )
    schema_record_names: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="With the record strategy (a subject names no topic): JSON object "
        "{topic: 'full.Name1,full.Name2'}, the record names allowed on each topic",
    )
    max_record_bytes: int = Field(
        default=1024 * 1024,
        ge=64,
        description="A record value longer than this goes to the dead-letter topic "
        "(reason oversized); a dead letter over the dead-letter topic's max.message.bytes "
        "(read at start) goes without its value, with its size and SHA-256",
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
        le=MAX_DURATION_S,
    )
    shutdown_timeout_s: float = Field(
        description="The bound of a shutdown, counted from SIGTERM whatever a store does: puts "
        "under way may finish until then, what the stores hold is committed, the rest is "
        "abandoned uncommitted, and the process exits a few seconds later at most (the final "
        "commits, the group leave). A revoked partition drains as long. Kubernetes' termination "
        "grace must be longer (the chart adds 15 s)",
        default=30.0,
        gt=0,
        le=MAX_DURATION_S,
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
        le=MAX_DURATION_S,
        description="How often each store's lag is read from Kafka (committed offsets, "
        "high watermarks, timestamps of the oldest records not yet in the store)",
    )
    kafka_statistics_interval_ms: int = Field(
        default=15_000,
        ge=0,
        description="How often the live consumer's own statistics (librdkafka "
        "statistics.interval.ms: consumer lag and fetch queue per partition, broker round "
        "trip) are exported as metrics; 0 turns them off",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level"
    )
    log_format: Literal["json", "human", "auto"] = Field(
        default="auto", description="Log format; auto: human on a terminal, JSON otherwise"
    )

    # ---- validation: each field's domain, then what the fields must agree on ------------

    @field_validator("*", mode="before")
    @classmethod
    def _usable_file(cls, value: Any) -> Any:
        if isinstance(value, BadSecretFile):
            raise ValueError(value.reason)
        return value

    @field_validator("topics", "stores", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("schema_registry_url", mode="before")
    @classmethod
    def _url_csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_urls(cls, value: list[str]) -> list[str]:
        return [checks.check_registry_url(url) for url in value]

    @field_validator("schema_record_names")
    @classmethod
    def _record_names(cls, value: dict[str, str]) -> dict[str, str]:
        return checks.check_record_names(value)

    @field_validator("schema_topics", "schema_record_names", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        return checks.parse_json_object(value)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        return checks.check_bootstrap(value)

    @field_validator("topics")
    @classmethod
    def _topics(cls, value: list[str]) -> list[str]:
        value = checks.check_topics(value)
        # The stores' reserved folders (the cutover record, the audit's manifests) sit
        # beside the topics' folders: a topic of the same name would mix with them.
        reserved = [t for t in value if t in RESERVED_FOLDERS]
        if reserved:
            raise ValueError(f"{', '.join(reserved)}: reserved name(s), not a topic to replicate")
        return value

    @field_validator("dead_letter_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return checks.check_topic(value)

    @field_validator("schema_topics")
    @classmethod
    def _schema_topics(cls, value: dict[str, str]) -> dict[str, str]:
        return checks.check_schema_topics(value)

    @field_validator("group_id", "kafka_sasl_username")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else checks.check_name(value)

    @field_validator("s3_region", "s3_sse_kms_key_id", "azure_encryption_scope")
    @classmethod
    def _word(cls, value: str | None) -> str | None:
        return None if value is None else checks.check_word(value)

    @field_validator("stores")
    @classmethod
    def _stores(cls, value: list[StoreName]) -> list[StoreName]:
        if not value:
            raise ValueError("no store: give s3, azure or s3,azure")
        if len(set(value)) != len(value):
            raise ValueError("a store is listed twice")
        return value

    @field_validator("s3_endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else checks.check_url(value)

    @field_validator("s3_bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        return None if value is None else checks.check_bucket(value)

    @field_validator("azure_container")
    @classmethod
    def _container(cls, value: str | None) -> str | None:
        return None if value is None else checks.check_container(value)

    @field_validator("s3_prefix", "azure_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return checks.check_prefix(value)

    @field_validator("metrics_host")
    @classmethod
    def _host(cls, value: str) -> str:
        return checks.check_host(value)

    @field_validator("kafka_sasl_password", "s3_access_key", "s3_secret_key")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            checks.check_secret(value.get_secret_value())
        return value

    @field_validator("s3_sse_customer_key")
    @classmethod
    def _sse_c(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            checks.check_sse_customer_key(value.get_secret_value())
        return value

    @field_validator("azure_connection_string")
    @classmethod
    def _azure(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            checks.check_azure_connection_string(value.get_secret_value())
        return value

    @field_validator("schema_registry_basic_auth")
    @classmethod
    def _user_info(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            checks.check_user_info(value.get_secret_value())
        return value

    @field_validator("schema_registry_bearer_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            checks.check_secret(value.get_secret_value())
        return value

    @field_validator(
        "kafka_ssl_ca_location",
        "kafka_properties_file",
        "s3_ca_bundle",
        "azure_ca_bundle",
        "schema_registry_ca_location",
        "schema_registry_certificate_location",
        "schema_registry_key_location",
    )
    @classmethod
    def _file(cls, value: Path | None) -> Path | None:
        return None if value is None else checks.check_existing_file(value)

    @field_validator("schemas_dir")
    @classmethod
    def _dir(cls, value: Path) -> Path:
        return checks.check_existing_dir(value)

    @model_validator(mode="after")
    def _client_props(self) -> Settings:
        """The librdkafka properties of the environment and of the properties file."""
        text = None
        if self.kafka_properties_file is not None:
            text = checks.read_properties_file(self.kafka_properties_file)
        self._client_properties = props.collect(os.environ, text)
        return self

    @model_validator(mode="after")
    def _agree(self) -> Settings:
        problems = self.disagreements()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def disagreements(self) -> list[str]:
        """What the settings, each valid alone, do not agree on; one message per problem,
        naming the variables."""
        out: list[str] = []
        needs = {
            "s3": ("s3_endpoint", "s3_bucket", "s3_access_key", "s3_secret_key"),
            "azure": ("azure_connection_string", "azure_container"),
        }
        for store in self.stores:
            missing = [name for name in needs[store] if getattr(self, name) is None]
            if missing:
                out.append(f"store {store} needs " + ", ".join(_env(m) for m in missing))
        if self.s3_sse_kms_key_id and self.s3_sse != "aws:kms":
            out.append("REPLICATOR_S3_SSE_KMS_KEY_ID needs REPLICATOR_S3_SSE=aws:kms")
        if self.s3_sse_customer_key is not None and self.s3_sse:
            out.append(
                "REPLICATOR_S3_SSE_CUSTOMER_KEY (SSE-C) cannot be combined with "
                "REPLICATOR_S3_SSE: choose one server-side encryption"
            )
        if self.schema_registry_basic_auth and self.schema_registry_bearer_token:
            out.append(
                "REPLICATOR_SCHEMA_REGISTRY_BASIC_AUTH and REPLICATOR_SCHEMA_REGISTRY_BEARER_TOKEN "
                "cannot be combined: choose one"
            )
        if (self.schema_registry_key_location is None) != (
            self.schema_registry_certificate_location is None
        ):
            out.append(
                "REPLICATOR_SCHEMA_REGISTRY_CERTIFICATE_LOCATION and "
                "REPLICATOR_SCHEMA_REGISTRY_KEY_LOCATION go together"
            )
        if self.schema_subject_strategy == "record":
            missing = [
                t for t in self.topics if self.schema_topic(t) not in self.schema_record_names
            ]
            if missing:
                out.append(
                    "REPLICATOR_SCHEMA_SUBJECT_STRATEGY=record needs REPLICATOR_SCHEMA_RECORD_NAMES "
                    "to name the records allowed on " + ", ".join(missing)
                )
        elif self.schema_record_names:
            out.append(
                "REPLICATOR_SCHEMA_RECORD_NAMES is for REPLICATOR_SCHEMA_SUBJECT_STRATEGY=record "
                f"only, not {self.schema_subject_strategy}"
            )
        if self.dead_letter_topic in self.topics:
            out.append(
                f"REPLICATOR_DEAD_LETTER_TOPIC {self.dead_letter_topic!r} is also in "
                "REPLICATOR_TOPICS: the dead-letter topic cannot be replicated"
            )
        sasl_protocol = self.kafka_security_protocol.startswith("SASL_")
        has_user = bool(self.kafka_sasl_username or self.kafka_sasl_password)
        if self.kafka_sasl_mechanism == "OAUTHBEARER" and has_user:
            out.append(
                "REPLICATOR_KAFKA_SASL_MECHANISM=OAUTHBEARER takes no "
                "REPLICATOR_KAFKA_SASL_USERNAME or REPLICATOR_KAFKA_SASL_PASSWORD: its "
                "credentials are sasl.oauthbearer.* client properties"
            )
        elif self.kafka_sasl_mechanism not in (None, "OAUTHBEARER") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            out.append(
                "SASL needs REPLICATOR_KAFKA_SASL_USERNAME and REPLICATOR_KAFKA_SASL_PASSWORD"
            )
        if self.kafka_sasl_mechanism and not sasl_protocol:
            out.append(
                "REPLICATOR_KAFKA_SASL_MECHANISM needs REPLICATOR_KAFKA_SECURITY_PROTOCOL "
                f"SASL_SSL or SASL_PLAINTEXT, not {self.kafka_security_protocol}"
            )
        if sasl_protocol and not self.kafka_sasl_mechanism:
            out.append(
                f"REPLICATOR_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "REPLICATOR_KAFKA_SASL_MECHANISM"
            )
        # Each store's lane may hold max_buffer_bytes / stores; a lane must hold at least the
        # largest chunk (chunk_max_bytes, or one record of max_record_bytes alone) or it can
        # never take the next one.
        share = self.max_buffer_bytes // max(len(self.stores), 1)
        largest = max(self.chunk_max_bytes, self.max_record_bytes)
        if share < largest:
            which = (
                "REPLICATOR_CHUNK_MAX_BYTES"
                if largest == self.chunk_max_bytes
                else "REPLICATOR_MAX_RECORD_BYTES"
            )
            out.append(
                f"REPLICATOR_MAX_BUFFER_BYTES={self.max_buffer_bytes} cannot hold one chunk per "
                f"store: {len(self.stores)} store(s) x {which}={largest} needs at least "
                f"{largest * len(self.stores)}"
            )
        return out

    def schema_topic(self, topic: str) -> str:
        """The topic name the registry knows this topic's schemas by."""
        return self.schema_topics.get(topic, topic)

    def record_names(self) -> dict[str, tuple[str, ...]]:
        """The record full names allowed per (registry) topic under the record strategy."""
        return {
            topic: tuple(n.strip() for n in names.split(",") if n.strip())
            for topic, names in self.schema_record_names.items()
        }

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
        if self.kafka_sasl_mechanism and self.kafka_sasl_mechanism != "OAUTHBEARER":
            assert self.kafka_sasl_password is not None
            conf["sasl.username"] = self.kafka_sasl_username
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_ca_location:
            conf["ssl.ca.location"] = str(self.kafka_ssl_ca_location)
        # The operator's own properties; none of them is one set above or by a client
        # (client_properties.OWNED refuses those), so every client gets each as given.
        conf.update(self._client_properties.values)
        return conf

    @property
    def client_properties(self) -> props.ClientProperties:
        """The librdkafka properties given by the operator (REPLICATOR_KAFKA_PROPERTY_*,
        REPLICATOR_KAFKA_PROPERTIES_FILE)."""
        return self._client_properties

    def client_id(self, default: str) -> str:
        """A client's `client.id`: the operator's `client.id` property if given (one id for
        every client, as broker quotas expect), else the client's own default."""
        return self._client_properties.client_id() or default

    def kafka_problem(self) -> str | None:
        """What librdkafka says of the client configuration (a property it does not know, a
        bad value), without connecting; None when it takes it."""
        if not self._client_properties.values and self.kafka_sasl_mechanism != "OAUTHBEARER":
            return None
        return props.librdkafka_problem(self.kafka_common(), self._client_properties)

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
        out["kafka_properties"] = self._client_properties.printable()
        return out


def _problem(err: Any) -> str:
    """One line for one pydantic error: the variable's name, then what is wrong."""
    loc = err["loc"]
    if not loc:  # a model-level check: its message names the variables itself
        return " ".join(str(err["msg"]).removeprefix("Value error, ").split())
    name = _env(str(loc[0]))
    items = [part for part in loc[1:] if isinstance(part, int)]
    where = f" item {items[0] + 1}:" if items else ""
    if err["type"] == "missing":
        return f"{name} is required"
    msg = " ".join(str(err["msg"]).removeprefix("Value error, ").split())
    return f"{name}:{where} {msg}"


def load_settings(**overrides: Any) -> Settings:
    """Load the settings or raise ConfigError with one readable line naming each bad variable
    and what is wrong with it (no secret in it)."""
    secrets_dir = os.environ.get("REPLICATOR_SECRETS_DIR")
    if secrets_dir is not None:
        folder = Path(secrets_dir)
        if not secrets_dir.strip():
            raise ConfigError("REPLICATOR_SECRETS_DIR is empty: unset it or name a directory")
        if not folder.is_dir():
            raise ConfigError(f"REPLICATOR_SECRETS_DIR={secrets_dir!r} is not a directory")
        try:
            os.listdir(folder)
        except OSError as exc:
            raise ConfigError(
                f"REPLICATOR_SECRETS_DIR={secrets_dir!r} cannot be read ({exc.strerror})"
            ) from None
    try:
        settings = Settings(_secrets_dir=secrets_dir, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = list(dict.fromkeys(_problem(err) for err in exc.errors()))
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    problem = settings.kafka_problem()
    if problem is not None:
        raise ConfigError("invalid configuration: " + problem)
    return settings


def load_client_properties(bootstrap: str) -> dict[str, Any]:
    """For a tool that takes no other setting (`replicator produce`): the librdkafka
    configuration of `bootstrap` with the operator's client properties
    (REPLICATOR_KAFKA_PROPERTY_*, REPLICATOR_KAFKA_PROPERTIES_FILE), checked as the
    service checks them; ConfigError naming the variable otherwise."""
    try:
        file = os.environ.get(props.FILE_VARIABLE)
        text = None
        if file:
            try:
                checks.check_existing_file(Path(file))
            except ValueError as exc:
                raise ValueError(f"{props.FILE_VARIABLE}: {exc}") from None
            text = checks.read_properties_file(Path(file))
        given = props.collect(os.environ, text)
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, **given.values}
    problem = props.librdkafka_problem(conf, given) if given.values else None
    if problem is not None:
        raise ConfigError("invalid configuration: " + problem)
    return conf


def unknown_settings(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each REPLICATOR_* variable, or file of the secrets folder, that names no
    setting (a typo is otherwise silently ignored), with the closest setting's name."""
    environ = os.environ if environ is None else environ
    found = {
        name: "variable"
        for name in environ
        if not name.upper().startswith(props.ENV_PREFIX)  # librdkafka judges these
    }
    folder = environ.get("REPLICATOR_SECRETS_DIR")
    if folder and Path(folder).is_dir():
        with contextlib.suppress(OSError):  # load_settings says why
            found.update({entry: "file in REPLICATOR_SECRETS_DIR" for entry in os.listdir(folder)})
    out = []
    for name, close in checks.unknown_names(found, Settings.model_fields):
        hint = f"; did you mean {close}?" if close else ""
        out.append(f"{name} ({found[name]}) is not a setting and is ignored{hint}")
    return out
