"""Kafka client properties passed through to librdkafka: from the environment
(`REPLICATOR_KAFKA_PROPERTY_<NAME>`) and from a mounted properties file
(`REPLICATOR_KAFKA_PROPERTIES_FILE`). docs/configuration.md ("Any Kafka client property") is
the user's view of the rules below.

- Names: an environment variable's name after the prefix is lower-cased, then `_` is `.`,
  `__` is `_` and `___` is `-` (the convention of Confluent's container images):
  `REPLICATOR_KAFKA_PROPERTY_SASL_OAUTHBEARER_CLIENT_ID` is `sasl.oauthbearer.client.id`.
- The file: the `key=value` subset of Java's .properties syntax (see `parse_properties`).
- Both sources: a property given in both takes the environment's value (as a setting given
  by a variable wins over its file in REPLICATOR_SECRETS_DIR).
- A property the service sets itself is refused (`OWNED`): it either duplicates a setting, or
  the service's guarantees depend on its value. Anything else goes, as given, to every Kafka
  client the product makes; librdkafka refuses a name it does not know or a bad value.
- Printing: a value is shown only for a property known to hold no secret (`shown`); any
  other value prints as `**********`. Values of secret-named properties are also masked in
  every log line (`secret_values`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

ENV_PREFIX = "REPLICATOR_KAFKA_PROPERTY_"
FILE_VARIABLE = "REPLICATOR_KAFKA_PROPERTIES_FILE"
MASK = "**********"
MAX_FILE_BYTES = 1024 * 1024

_NAME = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_KEY_END = re.compile(r"[:\s]")


def _setting(variable: str) -> str:
    return f"set by the setting {variable}"


# The properties the service sets itself, with why each is refused. Aliases librdkafka
# accepts for the same property are listed too (a refused property cannot come back by its
# other name).
_OFFSETS = "the service commits an offset only once every store holds the records before it"
_GROUPS = (
    "the service names its consumer groups from REPLICATOR_GROUP_ID (the live group, one "
    "progress group per store, and the groups of its readers)"
)
_ASSIGNMENT = (
    "the service's rebalance handling (a revoked partition is drained and committed before "
    "it moves) is written for the classic protocol with its own assignment strategy"
)
_DLQ = (
    "the dead-letter producer is idempotent with acks=all: a dead letter is durable before "
    "the offset past it is committed"
)
_PER_CLIENT = "the service sets it per client (it bounds that client's memory or latency)"
_CALLBACK = "a Python callback of the client, not a librdkafka property"
OWNED: dict[str, str] = {
    "bootstrap.servers": _setting("REPLICATOR_KAFKA_BOOTSTRAP"),
    "metadata.broker.list": _setting("REPLICATOR_KAFKA_BOOTSTRAP"),
    "security.protocol": _setting("REPLICATOR_KAFKA_SECURITY_PROTOCOL"),
    "sasl.mechanism": _setting("REPLICATOR_KAFKA_SASL_MECHANISM"),
    "sasl.mechanisms": _setting("REPLICATOR_KAFKA_SASL_MECHANISM"),
    "sasl.username": _setting("REPLICATOR_KAFKA_SASL_USERNAME"),
    "sasl.password": _setting("REPLICATOR_KAFKA_SASL_PASSWORD"),
    "ssl.ca.location": _setting("REPLICATOR_KAFKA_SSL_CA_LOCATION"),
    "session.timeout.ms": _setting("REPLICATOR_SESSION_TIMEOUT_MS"),
    "heartbeat.interval.ms": "derived from REPLICATOR_SESSION_TIMEOUT_MS (3 s, at most a third of it)",
    "queued.max.messages.kbytes": _setting("REPLICATOR_FETCH_BUFFER_KBYTES"),
    "statistics.interval.ms": _setting("REPLICATOR_KAFKA_STATISTICS_INTERVAL_MS"),
    "group.id": _GROUPS,
    "group.instance.id": (
        "static membership: every client of every replica would share one instance id and "
        "fence each other"
    ),
    "group.protocol": _ASSIGNMENT,
    "group.remote.assignor": _ASSIGNMENT,
    "partition.assignment.strategy": _ASSIGNMENT,
    "enable.auto.commit": _OFFSETS,
    "auto.commit.enable": _OFFSETS,
    "enable.auto.offset.store": _OFFSETS,
    "auto.offset.reset": (
        "a partition without a committed offset is read from its earliest record, so that "
        "nothing is skipped"
    ),
    "enable.partition.eof": _PER_CLIENT,
    "isolation.level": (
        "the service reads committed records only (read_committed): an aborted transaction "
        "must never reach the stores"
    ),
    "enable.idempotence": _DLQ,
    "acks": _DLQ,
    "request.required.acks": _DLQ,
    "transactional.id": "the service's producers do not use transactions",
    "message.max.bytes": (
        "the dead-letter producer takes it from the dead-letter topic's max.message.bytes"
    ),
    "linger.ms": _PER_CLIENT,
    "queue.buffering.max.ms": _PER_CLIENT,
    "fetch.wait.max.ms": _PER_CLIENT,
    "fetch.queue.backoff.ms": _PER_CLIENT,
    "max.partition.fetch.bytes": _PER_CLIENT,
    "fetch.max.bytes": _PER_CLIENT,
    "logger": _CALLBACK,
}
_CALLBACK_NAME = re.compile(r".*_cb|on_.*")

# Printing: a value is shown only for these names (or a name ending like one of _SAFE_ENDINGS)
# whose name also says nothing of a secret; every other value is masked.
SAFE_NAMES = frozenset(
    {
        "client.id",
        "client.rack",
        "client.dns.lookup",
        "debug",
        "broker.address.family",
        "compression.type",
        "compression.codec",
        "compression.level",
        "api.version.request",
        "broker.version.fallback",
        "check.crcs",
        "ssl.endpoint.identification.algorithm",
        "enable.ssl.certificate.verification",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.crl.location",
        "ssl.cipher.suites",
        "ssl.curves.list",
        "sasl.oauthbearer.method",
        "sasl.oauthbearer.client.id",
        "sasl.oauthbearer.scope",
        "sasl.oauthbearer.token.endpoint.url",
        "sasl.oauthbearer.extensions",
        "sasl.kerberos.service.name",
        "sasl.kerberos.principal",
        "topic.metadata.refresh.sparse",
        "allow.auto.create.topics",
        "socket.keepalive.enable",
        "socket.nagle.disable",
        "log.connection.close",
    }
)
_SAFE_ENDINGS = (".ms", ".bytes", ".kbytes", ".messages", ".max", ".min", ".num", ".count")
_SECRET_NAME = re.compile(
    r"pass|secret|token|jaas|credential|private|oauthbearer\.config|keytab|pem|key(?!\.location)"
)


def is_secret_name(name: str) -> bool:
    """True when the name suggests a secret value (a password, a key, a token...)."""
    return bool(_SECRET_NAME.search(name)) and name not in {
        "ssl.key.location",
        "sasl.oauthbearer.token.endpoint.url",
    }


def shown(name: str, value: str) -> str:
    """The value as printed: itself only for a property known to hold no secret."""
    if name in SAFE_NAMES or (name.endswith(_SAFE_ENDINGS) and not is_secret_name(name)):
        return value
    return MASK


def property_name(variable_suffix: str) -> str:
    """The property named by an environment variable's name after the prefix: lower-cased,
    `_` -> `.`, `___` -> `-`, `__` -> `_`."""
    dotted = ".".join(variable_suffix.lower().split("_"))
    return "_".join("-".join(dotted.split("...")).split(".."))


def variable_name(name: str) -> str:
    """The environment variable that gives property `name` (the inverse of property_name)."""
    return ENV_PREFIX + name.upper().replace("_", "__").replace("-", "___").replace(".", "_")


def _check_name(name: str) -> str | None:
    if not _NAME.fullmatch(name):
        return (
            f"{name!r} is not a librdkafka property name (lower-case letters and digits "
            "separated by '.', '_' or '-')"
        )
    return None


def refusal(name: str) -> str | None:
    """Why the service refuses property `name`, or None."""
    if name in OWNED:
        return f"owned by the service: {OWNED[name]}"
    if _CALLBACK_NAME.fullmatch(name):
        return f"owned by the service: {_CALLBACK}"
    return None


def parse_properties(text: str) -> list[tuple[int, str, str]]:
    """(line number, key, value) for each property of a .properties text, in order.

    The subset of Java's .properties syntax taken: one `key=value` per line; lines that are
    blank or start with `#` or `!` (after spaces) are comments; the key and the value are
    stripped of surrounding spaces; the value is everything after the first `=` (it may hold
    `=`); a leading byte order mark is ignored. Not taken, and refused rather than misread: `key: value` and `key value` lines, a
    line continued with a final backslash. No escape is interpreted (`\\n` is a backslash
    and an n). ValueError names the line (never its content: it may hold a secret)."""
    out: list[tuple[int, str, str]] = []
    # a byte order mark (a file saved as "UTF-8 with BOM" by some editors) is no part of the
    # first key
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        # Java ends a key at the first `=`, `:` or space: a `key: value` or `key value` line
        # whose value holds `=` (a base64 secret's padding) would otherwise give a "key"
        # holding the value, and the messages name the key.
        if not sep or not key or _KEY_END.search(key):
            raise ValueError(f"line {number}: not a key=value line")
        if line.endswith("\\"):
            raise ValueError(f"line {number}: ends with a backslash (continued lines are not read)")
        out.append((number, key, value))
    return out


@dataclass(frozen=True)
class ClientProperties:
    """The properties given, each with where it came from (for the messages)."""

    values: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    def printable(self) -> dict[str, str]:
        return {name: shown(name, value) for name, value in sorted(self.values.items())}

    def secret_values(self) -> list[str]:
        """The values to mask in every log line: those of secret-named properties."""
        return [v for n, v in self.values.items() if is_secret_name(n)]

    def client_id(self) -> str | None:
        return self.values.get("client.id")

    def scrub(self, text: str) -> str:
        """`text` without any value that is not printed (librdkafka may quote a bad value)."""
        hidden = sorted(
            (v for n, v in self.values.items() if shown(n, v) == MASK and v),
            key=len,
            reverse=True,
        )
        for value in hidden:
            text = text.replace(value, MASK)
        return text


def collect(environ: Mapping[str, str], file_text: str | None) -> ClientProperties:
    """The properties of the environment and of the file's text (None: no file), checked;
    ValueError with one problem per `; `, each naming the variable or the file's line and
    the property, never a value."""
    problems: list[str] = []
    values: dict[str, str] = {}
    origins: dict[str, str] = {}
    if file_text is not None:
        try:
            lines = parse_properties(file_text)
        except ValueError as exc:
            raise ValueError(f"{FILE_VARIABLE}: {exc}") from None
        for number, key, value in lines:
            origin = f"{FILE_VARIABLE} line {number} ({key})"
            bad = _check_name(key) or refusal(key)
            if key in values:
                bad = f"given twice (first at {origins[key].split(' (')[0]})"
            if bad is None and not value:
                bad = "has no value: remove the line to keep librdkafka's default"
            if bad:
                problems.append(f"{origin}: {bad}")
                continue
            values[key], origins[key] = value, origin
    from_env: dict[str, str] = {}
    for variable in sorted(environ):
        if not variable.upper().startswith(ENV_PREFIX):
            continue
        name = property_name(variable[len(ENV_PREFIX) :])
        origin = f"{variable} ({name})"
        value = environ[variable]
        bad = _check_name(name) or refusal(name)
        if name in from_env:
            bad = f"names the same property as {from_env[name]}"
        if bad is None and not value:
            bad = "is empty: unset it to keep librdkafka's default"
        if bad:
            problems.append(f"{origin}: {bad}")
            continue
        from_env[name] = variable
        values[name], origins[name] = value, origin  # the environment wins over the file
    if problems:
        raise ValueError("; ".join(problems))
    return ClientProperties(values, origins)


def _quiet_logger() -> logging.Logger:
    quiet = logging.getLogger("replicator.kafka.validation")
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    return quiet


def _refused_by(conf: dict[str, Any]) -> str | None:
    """librdkafka's message if it refuses `conf` for a producer or a consumer, else None."""
    for kind, make in (
        ("producer", lambda: Producer(conf)),
        ("consumer", lambda: Consumer({**conf, "group.id": "replicator.validation"})),
    ):
        try:
            client = make()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            text = error.str() if isinstance(error, KafkaError) else str(exc)
            return f"librdkafka refuses it for a {kind}: {text}"
        if isinstance(client, Consumer):
            client.close()
        del client
    return None


def librdkafka_problem(conf: Mapping[str, Any], props: ClientProperties) -> str | None:
    """What librdkafka says of a client configuration (an unknown property, a bad value, a
    missing companion property, a key file it cannot load), or None when it takes it. The
    message names the variable or file line of the property at fault (the one without which
    the rest is taken, else the first refused alone); values that are not printed are
    masked. Builds throwaway producers and consumers without
    bootstrap servers: nothing connects."""
    base = {k: v for k, v in conf.items() if k not in {"bootstrap.servers", "logger"}}
    base["logger"] = _quiet_logger()
    problem = _refused_by(base)
    if problem is None:
        return None
    # The property to name: the one whose removal makes the rest acceptable, else the first
    # refused alone (a property may need another one, e.g. oidc its token endpoint).
    names = sorted(props.values, key=lambda n: props.origins[n])
    for name in names:
        if _refused_by({k: v for k, v in base.items() if k != name}) is None:
            return props.scrub(f"{props.origins[name]}: {problem}")
    own = {k: v for k, v in base.items() if k not in props.values}
    for name in names:
        alone = _refused_by({**own, name: props.values[name]})
        if alone is not None:
            return props.scrub(f"{props.origins[name]}: {alone}")
    return props.scrub(f"the Kafka client properties together: {problem}")
