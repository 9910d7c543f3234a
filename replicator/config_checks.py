"""The domain of each setting, as plain functions: a value in, the cleaned value out, or a
ValueError whose message says what is wrong (never a secret's value).

`replicator.config` wires them into the settings model; they are separate so that each
rule can be tested on plain values. Every message is one line: the caller prefixes it with
the environment variable's name.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Kafka's own rule (kafka.common.internals.Topic): 1 to 249 of [a-zA-Z0-9._-], not "." or "..".
TOPIC_MAX_CHARS = 249
_TOPIC = re.compile(r"[a-zA-Z0-9._-]+")
# A host name or an IPv4 address: letters, digits, dots, hyphens and underscores (librdkafka
# resolves what the system resolver accepts; these are what DNS names are made of).
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
# S3's "safe characters" for object keys (letters, digits, ! - _ . * ' ( )) and `/`: no escaping
# needed in a URL, the same name in S3 and Azure.
_PREFIX_CHARS = re.compile(r"[A-Za-z0-9!_.*'()/-]*")
PREFIX_MAX_CHARS = 512  # object names are at most 1024 characters; the rest is for the keys
# S3 bucket names (and Scaleway's): 3 to 63 of lowercase letters, digits, dots and hyphens,
# starting and ending with a letter or a digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Azure container names: 3 to 63 of lowercase letters, digits and single hyphens, starting
# with a letter or a digit; `$root` and `$web` are the two special containers.
_CONTAINER = re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]")
_SPECIAL_CONTAINERS = ("$root", "$web")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SECRET_MAX_BYTES = 64 * 1024


def check_topic(name: str) -> str:
    """A topic name Kafka accepts."""
    if not name:
        raise ValueError("a topic name cannot be empty")
    if len(name) > TOPIC_MAX_CHARS:
        raise ValueError(f"topic name of {len(name)} characters: Kafka allows {TOPIC_MAX_CHARS}")
    if name in (".", "..") or not _TOPIC.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a topic name Kafka accepts "
            "(letters, digits, '.', '_' and '-' only, not '.' or '..')"
        )
    return name


def check_topics(names: list[str]) -> list[str]:
    """A non-empty list of distinct, valid topic names."""
    if not names:
        raise ValueError("no topic to replicate: give at least one (comma-separated)")
    for name in names:
        check_topic(name)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError("topic listed twice: " + ", ".join(twice))
    return names


def check_bootstrap(value: str) -> str:
    """`host:port[,host:port...]`, each port 1 to 65535; IPv6 hosts in brackets."""
    entries = [entry.strip() for entry in value.split(",")]
    if not value.strip():
        raise ValueError("is empty: give host:port[,host:port]")
    for entry in entries:
        if not entry:
            raise ValueError(f"{value!r} has an empty entry: give host:port[,host:port]")
        host, sep, port = entry.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{entry!r} is not host:port")
        if host.startswith("[") and host.endswith("]"):
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                raise ValueError(f"{entry!r}: {host} is not an IPv6 address") from None
        elif not _HOST.fullmatch(host):
            raise ValueError(f"{entry!r}: {host!r} is not a host name or address")
        check_port_text(entry, port)
    return ",".join(entries)


def check_port_text(where: str, port: str) -> int:
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{where!r}: the port must be a number from 1 to 65535")
    return int(port)


def check_name(value: str) -> str:
    """A name (consumer group, user): not empty, no surrounding spaces, no control character."""
    if not value.strip():
        raise ValueError("is empty")
    if value != value.strip() or _CONTROL.search(value):
        raise ValueError(f"{value!r} has leading or trailing spaces or control characters")
    return value


def check_prefix(value: str) -> str:
    """A key prefix: '' (the whole bucket) or segments of safe characters separated by '/',
    without a leading '/', an empty segment, or a '.' or '..' segment."""
    if len(value) > PREFIX_MAX_CHARS:
        raise ValueError(f"is {len(value)} characters long: at most {PREFIX_MAX_CHARS}")
    if not _PREFIX_CHARS.fullmatch(value):
        bad = sorted({c for c in value if not _PREFIX_CHARS.fullmatch(c)})
        raise ValueError(
            f"{value!r} holds characters the stores need escaped ({''.join(bad)!r}): "
            "use letters, digits, / and !-_.*'()"
        )
    if value.startswith("/"):
        raise ValueError(f"{value!r} starts with '/'")
    segments = value.rstrip("/").split("/") if value else []
    if any(seg in ("", ".", "..") for seg in segments):
        raise ValueError(f"{value!r} has an empty, '.' or '..' segment")
    return value


def check_bucket(value: str) -> str:
    if not _BUCKET.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not an S3 bucket name (3 to 63 lowercase letters, digits, '.' and "
            "'-', starting and ending with a letter or digit)"
        )
    return value


def check_container(value: str) -> str:
    if value not in _SPECIAL_CONTAINERS and not _CONTAINER.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an Azure container name (3 to 63 lowercase letters, digits "
            "and single '-', starting and ending with a letter or digit)"
        )
    return value


def shown_url(value: str) -> str:
    """A URL as an error message may show it: without its credentials, query and fragment
    (a token or key may travel in any of them), saying so when they were there."""
    cut = re.split(r"[?#]", value, maxsplit=1)[0]
    parts = urlsplit(cut)
    if parts.netloc:
        shown = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
        hidden = "@" in parts.netloc
    else:  # no `//`: anything before an `@` may be credentials
        shown, hidden = cut.rpartition("@")[2], "@" in cut
    if hidden or cut != value:
        return f"{shown!r} (its credentials, query and fragment not shown)"
    return repr(shown)


def check_url(value: str) -> str:
    """An http(s) URL with a host, an optional valid port and path, no query or fragment.
    The errors never show credentials, a query or a fragment (`shown_url`)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown_url(value)} is not an http:// or https:// URL with a host")
    if parts.query or parts.fragment or "@" in parts.netloc or "?" in value or "#" in value:
        raise ValueError(f"{shown_url(value)}: no query, fragment or credentials in the URL")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{shown_url(value)}: the port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError(f"{shown_url(value)}: the port must be a number from 1 to 65535")
    return value


def check_host(value: str) -> str:
    """A host name or an IP address to listen on."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOST.fullmatch(value):
            raise ValueError(f"{value!r} is not a host name or an IP address") from None
    return value


def check_word(value: str) -> str:
    """A non-empty name without spaces or control characters (region, key id, scope)."""
    if not value or any(c.isspace() for c in value) or _CONTROL.search(value):
        raise ValueError(f"{value!r} is empty or holds spaces or control characters")
    return value


def check_secret(value: str) -> str:
    """A secret: non-empty, one line. The message never shows it."""
    if not value.strip():
        raise ValueError("is empty")
    if "\n" in value.strip() or "\r" in value.strip():
        raise ValueError("spans several lines (its value is not shown)")
    return value


def check_sse_customer_key(value: str) -> bytes:
    """The 32 raw bytes of an SSE-C key given as base64; the message never shows the key."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64 (its value is not shown)") from None
    if len(raw) != 32:
        raise ValueError(f"must decode to 32 bytes (AES-256), not {len(raw)}")
    return raw


def check_azure_connection_string(value: str) -> str:
    """`Key=Value;...` with an account key (AccountName and AccountKey, base64), a SAS token
    (SharedAccessSignature with BlobEndpoint or AccountName), or UseDevelopmentStorage=true.
    The message names keys only, never a value."""
    check_secret(value)
    parts: dict[str, str] = {}
    for segment in value.strip().split(";"):
        if not segment.strip():
            continue
        key, sep, val = segment.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise ValueError("is not a list of Key=Value separated by ';' (its value is not shown)")
        parts[key.strip().lower()] = val.strip()
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        return value
    if "blobendpoint" in parts:
        try:
            check_url(parts["blobendpoint"])
        except ValueError:
            raise ValueError("BlobEndpoint is not an http:// or https:// URL") from None
    if "accountkey" in parts:
        if "accountname" not in parts:
            raise ValueError("has an AccountKey but no AccountName")
        try:
            base64.b64decode(parts["accountkey"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("AccountKey is not valid base64 (its value is not shown)") from None
        return value
    if "sharedaccesssignature" in parts:
        if "blobendpoint" not in parts and "accountname" not in parts:
            raise ValueError("has a SharedAccessSignature but no BlobEndpoint or AccountName")
        return value
    raise ValueError(
        "needs AccountName and AccountKey, or BlobEndpoint and SharedAccessSignature "
        "(its value is not shown)"
    )


def check_existing_file(value: Path) -> Path:
    if not value.is_file():
        what = "does not exist" if not value.exists() else "is not a file"
        raise ValueError(f"{str(value)!r} {what}")
    return value


def check_existing_dir(value: Path) -> Path:
    if not value.is_dir():
        what = "does not exist" if not value.exists() else "is not a directory"
        raise ValueError(f"{str(value)!r} {what}")
    return value


def parse_json_object(value: Any) -> Any:
    """A JSON object {str: str} given as text (from a variable or a file) or already a dict."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not valid JSON ({exc.msg} at character {exc.pos})") from None
        except ValueError:
            raise ValueError("is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object {{...}}, not {type(value).__name__}")
    bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ValueError(f"the value of {bad[0]!r} is not a string")
    return value


def check_schema_topics(value: Mapping[str, str]) -> dict[str, str]:
    for topic, registry_topic in value.items():
        check_topic(topic)
        check_topic(registry_topic)
    return dict(value)


_AVRO_FULL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def check_registry_url(value: str) -> str:
    """A schema registry URL: as `check_url`, and credentials are refused without showing
    the URL (they belong in REPLICATOR_SCHEMA_REGISTRY_BASIC_AUTH, a secret)."""
    parts = urlsplit(value)
    if "@" in parts.netloc:
        raise ValueError(
            "credentials in the URL (not shown): give them in REPLICATOR_SCHEMA_REGISTRY_BASIC_AUTH"
        )
    return check_url(value)


def check_record_names(value: Mapping[str, str]) -> dict[str, str]:
    """{topic: 'full.Name1,full.Name2'}: Kafka topic names, Avro full names."""
    for topic, names in value.items():
        check_topic(topic)
        listed = [n.strip() for n in names.split(",") if n.strip()]
        if not listed:
            raise ValueError(f"{topic!r}: no record name")
        bad = [n for n in listed if not _AVRO_FULL_NAME.fullmatch(n)]
        if bad:
            raise ValueError(f"{topic!r}: {bad[0]!r} is not an Avro full name")
    return dict(value)


def check_user_info(value: str) -> str:
    """'user:password' (the password is never named in the error)."""
    check_secret(value)
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("must be 'user:password'")
    return value


# ---- the secret files -----------------------------------------------------------------------


def read_secret_file(path: Path) -> str:
    """The text of one file of the secrets folder, stripped; ValueError saying what is wrong
    with the file (never its content): a broken link, a folder, unreadable, too large, not
    UTF-8, empty."""
    if path.is_symlink() and not path.exists():
        raise ValueError(f"the file {path.name} in REPLICATOR_SECRETS_DIR is a broken link")
    if path.is_dir():
        raise ValueError(f"{path.name} in REPLICATOR_SECRETS_DIR is a directory, not a file")
    if not path.is_file():
        raise ValueError(f"{path.name} in REPLICATOR_SECRETS_DIR is not a regular file")
    try:
        with path.open("rb") as handle:
            data = handle.read(SECRET_MAX_BYTES + 1)
    except OSError as exc:
        raise ValueError(
            f"the file {path.name} in REPLICATOR_SECRETS_DIR cannot be read ({exc.strerror})"
        ) from None
    if len(data) > SECRET_MAX_BYTES:
        raise ValueError(
            f"the file {path.name} in REPLICATOR_SECRETS_DIR is larger than {SECRET_MAX_BYTES} bytes"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"the file {path.name} in REPLICATOR_SECRETS_DIR is not UTF-8 text"
        ) from None
    if not text.strip():
        raise ValueError(f"the file {path.name} in REPLICATOR_SECRETS_DIR is empty")
    return text.strip()


# ---- names that are no setting ----------------------------------------------------------------

# REPLICATOR_* variables that are not settings but are read by the project itself: the
# secrets folder, the fault-matrix knobs of tests/integration/pipeline/test_faults.py, and the
# crash hook for tests of cutover and redrive (replicator/ops/cutover.py, ops/redrive.py).
NOT_SETTINGS = frozenset(
    {
        "REPLICATOR_SECRETS_DIR",
        "REPLICATOR_TEST_CRASH_AFTER",
        "REPLICATOR_FAULTS_RUNS",
        "REPLICATOR_FAULTS_LONG",
        "REPLICATOR_FAULTS_TABLE",
    }
)
# Kubernetes gives every pod, for each Service of its namespace, <NAME>_SERVICE_HOST,
# <NAME>_SERVICE_PORT[_<port name>] and <NAME>_PORT[_<port>_<proto>[_ADDR|_PORT|_PROTO]]:
# a Service named `replicator` makes these, and they are not typos.
_SERVICE_LINK = re.compile(
    r"REPLICATOR_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(ADDR|PORT|PROTO))?)?)"
)


def unknown_names(names: Iterable[str], settings: Iterable[str]) -> list[tuple[str, str | None]]:
    """Each REPLICATOR_* name (case-insensitive, as the loader reads them) that is no
    setting, with the closest setting's variable name (or None)."""
    suffixes = sorted(s.upper() for s in settings)
    known = ["REPLICATOR_" + s for s in suffixes]
    out: list[tuple[str, str | None]] = []
    for name in sorted(set(names)):
        upper = name.upper()
        if not upper.startswith("REPLICATOR_") or upper in known or upper in NOT_SETTINGS:
            continue
        if _SERVICE_LINK.fullmatch(upper):
            continue
        # compared without the common prefix, which would make every name look close
        close = difflib.get_close_matches(upper.removeprefix("REPLICATOR_"), suffixes, n=1)
        out.append((name, "REPLICATOR_" + close[0] if close else None))
    return out


PROPERTIES_MAX_BYTES = 1024 * 1024


def read_properties_file(path: Path) -> str:
    """The text of REPLICATOR_KAFKA_PROPERTIES_FILE; ValueError saying what is wrong with the
    file (never its content): unreadable, too large, not UTF-8."""
    name = "REPLICATOR_KAFKA_PROPERTIES_FILE"
    try:
        with path.open("rb") as handle:
            data = handle.read(PROPERTIES_MAX_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{name}: {path} cannot be read ({exc.strerror})") from None
    if len(data) > PROPERTIES_MAX_BYTES:
        raise ValueError(f"{name}: {path} is larger than {PROPERTIES_MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{name}: {path} is not UTF-8 text") from None
