"""Generate what documents the settings model, so that it cannot drift from it.

    python -m replicator.devtools.docs_gen            # rewrite both files below
    python -m replicator.devtools.docs_gen --check    # exit 1 if either is stale

- docs/configuration.md, the configuration reference: everything in it comes from
  `Settings.model_fields` (name, type, default, bounds, description) and from the section
  comments of `replicator/config.py` (`# --- Kafka ---`). Secret fields (`SecretStr`) never
  show a default: they have none, and the page says where the value comes from instead (an
  environment variable or a file in REPLICATOR_SECRETS_DIR).
- the `config` block of helm/replicator/values.schema.json: one property per setting that
  is not a secret, with its type, choices and bounds, and no other property (so a secret
  value can never be put in the chart's ConfigMap, and a misspelt setting is refused).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from replicator import client_properties
from replicator.config import DEFAULT_SCHEMAS_DIR, Settings

ENV_PREFIX = "REPLICATOR_"
REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_PATH = REPO_ROOT / "docs" / "configuration.md"
CHART_SCHEMA_PATH = REPO_ROOT / "helm" / "replicator" / "values.schema.json"

# Descriptions for fields that have none in the model. A field that gains its own
# description in replicator/config.py must be removed from here (a test checks it).
FALLBACK_DESCRIPTIONS: dict[str, str] = {}

_SECTION = re.compile(r"^\s*#\s*-+\s*(?P<title>[^-].*?)\s*-+\s*$")
_FIELD = re.compile(r"^\s{4}(?P<name>[a-z_][a-z0-9_]*)\s*:")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def is_secret(info: FieldInfo) -> bool:
    return _mentions(info.annotation, SecretStr)


def secret_fields() -> list[str]:
    return [name for name, info in Settings.model_fields.items() if is_secret(info)]


def _mentions(annotation: Any, target: type) -> bool:
    if annotation is target:
        return True
    return any(_mentions(arg, target) for arg in get_args(annotation))


def sections() -> dict[str, str]:
    """Field name -> section title, from the `# --- Title ---` comments of the model."""
    out: dict[str, str] = {}
    title = "General"
    for line in inspect.getsource(Settings).splitlines():
        section = _SECTION.match(line)
        if section:
            title = section.group("title")
            continue
        field = _FIELD.match(line)
        if field and field.group("name") in Settings.model_fields:
            out.setdefault(field.group("name"), title)
    return out


def type_text(annotation: Any) -> str:
    """A short, reader-friendly type: `int`, `list of str (comma-separated)`, `one of: a, b`."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        text = " or ".join(type_text(arg) for arg in inner)
        return f"{text} (optional)" if len(inner) < len(args) else text
    if origin is Literal:
        return "one of: " + ", ".join(f"`{arg}`" for arg in args)
    if origin is list:
        return f"list of {type_text(args[0])} (comma-separated)"
    if origin is dict:
        return "JSON object"
    if annotation is SecretStr:
        return "secret"
    if annotation is Path:
        return "path"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def default_text(name: str, info: FieldInfo) -> str:
    if is_secret(info):
        return "none (secret)"
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if name == "schemas_dir" and value == DEFAULT_SCHEMAS_DIR:
        return "`schemas/` beside the package (the image sets `/app/schemas`)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`" + ",".join(str(item) for item in value) + "`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{value:g}`"
    return f"`{value}`"


def bounds_text(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        if isinstance(item, Ge):
            parts.append(f">= {item.ge}")
        elif isinstance(item, Gt):
            parts.append(f"> {item.gt}")
        elif isinstance(item, Le):
            parts.append(f"<= {item.le}")
        elif isinstance(item, Lt):
            parts.append(f"< {item.lt}")
    return ", ".join(parts)


def description_text(name: str, info: FieldInfo) -> str:
    text = info.description or FALLBACK_DESCRIPTIONS.get(name, "")
    bounds = bounds_text(info)
    if bounds:
        text = f"{text} ({bounds})" if text else bounds
    if is_secret(info):
        text += (
            f". Secret: from `{env_name(name)}` or the file `{env_name(name)}` in "
            "REPLICATOR_SECRETS_DIR; never printed or logged"
        )
    return _cell(text)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


HEADER = """\
# Configuration reference

<!-- Generated from replicator/config.py by `python -m replicator.devtools.docs_gen`: do not edit.
     tests/unit/devtools/test_docs_gen.py fails when this page and the model disagree. -->

Every setting is read once at start-up from an environment variable named
`REPLICATOR_` + the setting's name in upper case. Secrets (marked *secret* below) can
also be read from files: set `REPLICATOR_SECRETS_DIR` to a folder holding one file per
secret, named like its environment variable (e.g. `REPLICATOR_S3_SECRET_KEY`; the name is
not case-sensitive, and a trailing newline is ignored). An environment variable wins over
a file. Lists are comma-separated; a JSON object is written as JSON.

`replicator config` prints the effective configuration with every secret masked.

Every setting is checked at start-up, before any connection: the commands that read the
settings (`config`, `check`, `run`, `verify`, `replay`, `cutover`, `rclone-check`) refuse a
bad one with exit code 2 and one line on stderr naming each bad variable and what is wrong
(never a secret's value), e.g.
`error: invalid configuration: REPLICATOR_GROUP_ID: is empty`. Besides the types and bounds
below: the bootstrap is `host:port[,host:port]` (ports 1 to 65535, IPv6 in brackets); topic
names follow Kafka's rule (1 to 249 of letters, digits, `.`, `_`, `-`, not `.` or `..`),
no topic twice, the dead-letter topic not among them; the group id is not blank; prefixes
are `/`-separated segments of letters, digits and `!-_.*'()`, without a leading `/` or an
empty, `.` or `..` segment; bucket and container names follow S3's and Azure's rules; the
S3 endpoint is an `http(s)://` URL; CA files and the schemas folder exist; durations are
finite; `max_buffer_bytes` holds, for each store, one chunk of `chunk_max_bytes` and one
record of `max_record_bytes`; a SASL mechanism goes with a `SASL_*` protocol and both need
the user name and password (OAUTHBEARER takes neither); a secret is not empty and holds one line, the Azure connection
string has an account key or a SAS, the SSE-C key is base64 of 32 bytes. A file of
`REPLICATOR_SECRETS_DIR` that is a broken link, a folder, unreadable, not UTF-8, empty or
over 64 KiB is refused the same way. A `REPLICATOR_*` variable (or a secret file) that
names no setting is not an error: it gets a `warning: ...` line naming the closest setting.
"""


CLIENT_PROPERTIES = """\

## Any Kafka client property

Any librdkafka property (the `CONFIGURATION.md` of librdkafka) reaches every Kafka client
the product makes: the service's consumer, its dead-letter producer, its admin clients, the
lag monitor's and the catch-up's consumers, and the clients of `check`, `verify`, `repair`,
`replay`, `audit`, `cutover`, `status` and `produce`. docs/production.md has working sets
for Azure Event Hubs, Confluent Cloud, mTLS and OAUTHBEARER. Two sources, both optional:

- **Environment variables** `REPLICATOR_KAFKA_PROPERTY_<NAME>`. The name after the prefix
  is lower-cased, then `_` becomes `.`, `__` becomes `_` and `___` becomes `-` (the
  convention of Confluent's container images): `REPLICATOR_KAFKA_PROPERTY_CLIENT_ID` is
  `client.id`, `REPLICATOR_KAFKA_PROPERTY_SASL_OAUTHBEARER_CLIENT_SECRET` is
  `sasl.oauthbearer.client.secret`.
- **A properties file** named by `REPLICATOR_KAFKA_PROPERTIES_FILE` (mount it from a
  Secret). The subset of Java's `.properties` syntax read: one `key=value` per line, the key
  and the value stripped of surrounding spaces, the value everything after the first `=`
  (it may hold `=`); blank lines and lines starting with `#` or `!` are comments. Refused
  rather than misread, naming the line and the key (never a value): a line without `=`, a
  `key: value` or `key value` line (Java's other separators, a `:` or a space before the
  first `=`), a line ending with a backslash (continued lines), a key given twice, a key
  that is not a property name (lower-case letters and digits separated by `.`, `_` or
  `-`), an empty value. No escape is interpreted. UTF-8 (a leading byte order mark is
  ignored), at most 1 MiB.

A property given in both takes the **environment variable's** value (as a variable wins over
a file of `REPLICATOR_SECRETS_DIR`). An empty variable is refused (unset it to keep
librdkafka's default).

At start-up (and in `replicator config` and `check`) every property is checked before any
connection: a name librdkafka does not know, a bad value, a missing companion property (e.g.
`sasl.oauthbearer.method=oidc` without `sasl.oauthbearer.token.endpoint.url`) or a key file
that cannot be loaded is refused by building a throwaway client that connects to nothing:
exit 2 and one line naming the variable (or the file's line) and librdkafka's reason.
A property meant for consumers only (or producers only) is given to every client; librdkafka
ignores it in the clients of the other kind (its warning saying so is not logged).

`client.id`, when given, is the id of every client (broker quotas are per client id);
otherwise each client names itself (`replicator-<version>`, `replicator-audit`, ...).

**Printing.** `replicator config` lists the properties under `kafka_properties`, and shows
a value only for a property known to hold no secret: the names below, and names ending in
`.ms`, `.bytes`, `.kbytes`, `.messages`, `.max`, `.min`, `.num` or `.count` that say
nothing of a secret. Every other value prints as `**********`. The values of properties
whose names suggest a secret (`pass`, `secret`, `token`, `key`, `jaas`, `pem`,
`credential`, `private`, `keytab`, `oauthbearer.config`) are also masked in every log line
and error. Values shown: {safe}.

**Refused properties.** The service sets these itself, so each is refused (exit 2, one line
naming the variable or file line, the property and why), as is any name ending in `_cb` or
starting with `on_` (Python callbacks, not librdkafka properties):

| Property | Why |
|---|---|
{owned}
"""


def client_properties_text() -> str:
    owned = "\n".join(
        f"| `{name}` | {_cell(why)} |" for name, why in client_properties.OWNED.items()
    )
    safe = ", ".join(f"`{name}`" for name in sorted(client_properties.SAFE_NAMES))
    return CLIENT_PROPERTIES.format(owned=owned, safe=safe)


def render() -> str:
    fields = Settings.model_fields
    by_section: dict[str, list[str]] = {}
    section_of = sections()
    for name in fields:
        by_section.setdefault(section_of.get(name, "Other"), []).append(name)
    out = [HEADER]
    for title, names in by_section.items():
        out.append(f"\n## {title}\n")
        out.append("| Setting | Environment variable | Type | Default | Description |")
        out.append("|---|---|---|---|---|")
        for name in names:
            info = fields[name]
            out.append(
                f"| `{name}` | `{env_name(name)}` | {_cell(type_text(info.annotation))} "
                f"| {_cell(default_text(name, info))} | {description_text(name, info)} |"
            )
    out.append(client_properties_text())
    return "\n".join(out)


# ---- the chart's schema -------------------------------------------------------------------

# In Kubernetes the port must be a real one (0 picks a free port: fine in tests, not in a pod).
_CHART_OVERRIDES: dict[str, dict[str, Any]] = {"metrics_port": {"minimum": 1}}


def json_schema(annotation: Any) -> dict[str, Any]:
    """The JSON schema of a value in Helm values: lists may also be comma-separated strings."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"cannot describe {annotation} in JSON schema")
        schema = json_schema(inner[0])
        if len(inner) < len(args):
            if "enum" in schema:
                schema["enum"] = [*schema["enum"], None]
            kind = schema["type"]
            schema["type"] = [*kind, "null"] if isinstance(kind, list) else [kind, "null"]
        return schema
    if origin is Literal:
        return {"type": "string", "enum": list(args)}
    if origin is list:
        return {"type": ["array", "string"], "items": json_schema(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": json_schema(args[1])}
    if annotation in (str, Path):
        return {"type": "string"}
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        return {"type": "integer"}
    if annotation is float:
        return {"type": "number"}
    raise TypeError(f"cannot describe {annotation} in JSON schema")


def chart_config_properties() -> dict[str, Any]:
    """values.schema.json's `config.properties`: every setting that is not a secret."""
    out: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        if is_secret(info):
            continue
        schema: dict[str, Any] = {}
        description = info.description or FALLBACK_DESCRIPTIONS.get(name)
        if description:
            schema["description"] = " ".join(description.split())
        schema.update(json_schema(info.annotation))
        for item in info.metadata:
            if isinstance(item, Ge):
                schema["minimum"] = item.ge
            elif isinstance(item, Gt):
                schema["exclusiveMinimum"] = item.gt
            elif isinstance(item, Le):
                schema["maximum"] = item.le
            elif isinstance(item, Lt):
                schema["exclusiveMaximum"] = item.lt
        schema.update(_CHART_OVERRIDES.get(name, {}))
        out[name] = schema
    return out


def render_chart_schema(current: str) -> str:
    """The chart's values.schema.json with its `config.properties` regenerated."""
    schema = json.loads(current)
    schema["properties"]["config"]["properties"] = chart_config_properties()
    return json.dumps(schema, indent=2) + "\n"


# ---- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=REFERENCE_PATH)
    parser.add_argument("--chart-schema", type=Path, default=CHART_SCHEMA_PATH)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    output: Path = args.output
    chart_schema: Path = args.chart_schema
    current_schema = chart_schema.read_text(encoding="utf-8")
    wanted = {output: render(), chart_schema: render_chart_schema(current_schema)}
    if args.check:
        stale = [
            path
            for path, text in wanted.items()
            if not path.exists() or path.read_text(encoding="utf-8") != text
        ]
        for path in stale:
            print(f"{path} is stale: run python -m replicator.devtools.docs_gen", file=sys.stderr)
        return 1 if stale else 0
    for path, text in wanted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
