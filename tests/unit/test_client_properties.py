"""Client properties passed through to librdkafka: the variable-name mapping, the properties
file's syntax, the refusal of what the service owns, and masking when printed."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from hypothesis import given
from hypothesis import strategies as st

from replicator import client_properties as props
from replicator.config import load_client_properties, load_settings
from replicator.errors import ConfigError
from replicator.kafka.deadletter import DeadLetterWriter
from replicator.logs import KAFKA_LOGGER
from replicator.pipeline.service import live_consumer_config

BASE = {
    "REPLICATOR_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    "REPLICATOR_STORES": "s3",
    "REPLICATOR_S3_ENDPOINT": "http://127.0.0.1:1",
    "REPLICATOR_S3_BUCKET": "bucket",
    "REPLICATOR_S3_ACCESS_KEY": "access-key-value",
    "REPLICATOR_S3_SECRET_KEY": "secret-key-value",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Only BASE among the REPLICATOR_* variables."""
    for name in list(os.environ):
        if name.startswith("REPLICATOR_"):
            monkeypatch.delenv(name)
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


# ---- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "name"),
    [
        ("CLIENT_ID", "client.id"),
        ("client_id", "client.id"),
        ("SASL_OAUTHBEARER_CLIENT_SECRET", "sasl.oauthbearer.client.secret"),
        ("SSL_KEY_PASSWORD", "ssl.key.password"),
        ("TOPIC_METADATA_REFRESH_INTERVAL_MS", "topic.metadata.refresh.interval.ms"),
        ("SSL__KEY", "ssl_key"),  # `__` is `_`
        ("A___B", "a-b"),  # `___` is `-`
        ("A__B_C___D", "a_b.c-d"),
        ("DEBUG", "debug"),
    ],
)
def test_variable_names_map_to_property_names(variable: str, name: str) -> None:
    assert props.property_name(variable) == name
    assert props.variable_name(name) == props.ENV_PREFIX + variable.upper()


_WORD = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
PROPERTY_NAMES = st.builds(
    lambda first, rest: first + "".join(sep + word for sep, word in rest),
    _WORD,
    st.lists(st.tuples(st.sampled_from("._-"), _WORD), max_size=5),
)


@given(PROPERTY_NAMES)
def test_every_property_name_has_a_variable(name: str) -> None:
    variable = props.variable_name(name)
    assert variable.isupper() or not any(c.isalpha() for c in variable)
    assert props.property_name(variable.removeprefix(props.ENV_PREFIX)) == name


# ---- the properties file -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("client.id=abc\n", [(1, "client.id", "abc")]),
        ("# a comment\n\n! another\n   # indented\nlinger=1", [(5, "linger", "1")]),
        ("  client.id  =  spaced out  \n", [(1, "client.id", "spaced out")]),
        (
            'sasl.jaas.config=a=b c="d==";\n',
            [(1, "sasl.jaas.config", 'a=b c="d==";')],
        ),
        ("a=1\r\nb=2\r\n", [(1, "a", "1"), (2, "b", "2")]),
        ("\ufeffclient.id=x\r\n", [(1, "client.id", "x")]),  # saved "UTF-8 with BOM"
        ("\ufeff# comment\nclient.id=x\n", [(2, "client.id", "x")]),
        ("empty=\n", [(1, "empty", "")]),  # parsed; refused later (no value)
        ("url=https://h/x?a=1#frag\n", [(1, "url", "https://h/x?a=1#frag")]),
        ("", []),
        ("\n\n#only comments\n", []),
    ],
)
def test_properties_file_syntax(text: str, parsed: list[tuple[int, str, str]]) -> None:
    assert props.parse_properties(text) == parsed


_VALUES = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")), max_size=30
).map(str.strip)
_SPACES = st.sampled_from(["", " ", "  ", "\t"])


@given(
    st.dictionaries(PROPERTY_NAMES, _VALUES, max_size=8),
    st.data(),
)
def test_a_written_properties_file_reads_back(values: dict[str, str], data: st.DataObject) -> None:
    """Any names and one-line values, written with comments, blank lines and spaces around
    the key, the `=` and the value, read back exactly (a value may hold `=`, `#`, `!`)."""
    lines: list[str] = []
    expected: list[tuple[int, str, str]] = []
    for name, drawn in values.items():
        value = drawn + "x" if drawn.endswith("\\") else drawn
        for _ in range(data.draw(st.integers(0, 2))):
            lines.append(data.draw(st.sampled_from(["", "   ", "# note", "! note", "  #x=y"])))
        before, around, after = (data.draw(_SPACES) for _ in range(3))
        lines.append(f"{before}{name}{around}={after}{value}{data.draw(_SPACES)}")
        expected.append((len(lines), name, value))
    newline = data.draw(st.sampled_from(["\n", "\r\n"]))
    assert props.parse_properties(newline.join(lines)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("client.id zq9xw\n", "line 1: not a key=value line"),
        ("a=1\nclient.id: zq9xw\n", "line 2: not a key=value line"),
        ("=zq9xw\n", "line 1: not a key=value line"),
        ("a=1\n\nb=zq9xw \\\n  second\n", "line 3: ends with a backslash"),
        # Java's other separators with a value holding `=` (a base64 secret's padding):
        # the text before the `=` is not a key, and never printed
        ("sasl.password: zq9xw==\n", "line 1: not a key=value line"),
        ("sasl.password:zq9xw=\n", "line 1: not a key=value line"),
        ("sasl.password zq9xw==\n", "line 1: not a key=value line"),
        ("a=1\nsasl.password\tzq9xw=x\n", "line 2: not a key=value line"),
    ],
)
def test_bad_properties_file_lines(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        props.parse_properties(text)
    assert "zq9xw" not in str(caught.value)


@given(
    st.sampled_from([":", ": ", " ", "\t", " : "]),
    st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=20),
    st.text(st.sampled_from("=+/"), min_size=1, max_size=3),
)
def test_a_secret_after_another_separator_is_never_in_the_error(
    separator: str, secret: str, tail: str
) -> None:
    """A `key: value` or `key value` line (Java's other separators) whose value holds `=`
    is refused by its line number; the refusal holds no part of the value."""
    value = f"zq{secret}{tail}"
    with pytest.raises(ValueError, match="line 2: not a key=value line") as caught:
        props.collect({}, f"client.id=x\nsasl.password{separator}{value}\n")
    assert "zq" not in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "text", "problem"),
    [
        ({}, "a.b=1\na.b=2\n", "REPLICATOR_KAFKA_PROPERTIES_FILE line 2 (a.b): given twice"),
        ({}, "Client.Id=x\n", "is not a librdkafka property name"),
        ({}, "client.id=\n", "(client.id): has no value"),
        ({"REPLICATOR_KAFKA_PROPERTY_CLIENT_ID": ""}, None, "CLIENT_ID (client.id): is empty"),
        (
            {
                "REPLICATOR_KAFKA_PROPERTY_CLIENT_ID": "a",
                "REPLICATOR_KAFKA_PROPERTY_client_id": "b",
            },
            None,
            "names the same property as",
        ),
        ({"REPLICATOR_KAFKA_PROPERTY_": "a"}, None, "is not a librdkafka property name"),
        ({"REPLICATOR_KAFKA_PROPERTY_CLIENT_ID_": "a"}, None, "is not a librdkafka property"),
    ],
)
def test_collect_refuses_bad_entries(
    environ: dict[str, str], text: str | None, problem: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        props.collect(environ, text)


def test_the_environment_wins_over_the_file() -> None:
    got = props.collect(
        {"REPLICATOR_KAFKA_PROPERTY_CLIENT_ID": "from-env", "OTHER": "x"},
        "client.id=from-file\nlinger.ms.not.owned=3\n",
    )
    assert got.values == {"client.id": "from-env", "linger.ms.not.owned": "3"}
    assert got.origins["client.id"] == "REPLICATOR_KAFKA_PROPERTY_CLIENT_ID (client.id)"
    assert got.origins["linger.ms.not.owned"] == (
        "REPLICATOR_KAFKA_PROPERTIES_FILE line 2 (linger.ms.not.owned)"
    )


# ---- owned properties ----------------------------------------------------------------------

OWNED = [*sorted(props.OWNED), "error_cb", "stats_cb", "oauth_cb", "on_delivery"]


@pytest.mark.parametrize("name", OWNED)
def test_each_owned_property_is_refused_from_either_source(name: str) -> None:
    variable = props.variable_name(name)
    with pytest.raises(ValueError) as caught:
        props.collect({variable: "some-value"}, None)
    message = str(caught.value)
    assert message.startswith(f"{variable} ({name}): owned by the service: ")
    assert "some-value" not in message
    with pytest.raises(ValueError) as caught:
        props.collect({}, f"# first\n{name} = some-value\n")
    assert str(caught.value).startswith(
        f"REPLICATOR_KAFKA_PROPERTIES_FILE line 2 ({name}): owned by the service: "
    )


@pytest.mark.parametrize("name", ["group.id", "enable.auto.commit", "bootstrap.servers"])
def test_a_refused_property_is_one_line_at_load(env: pytest.MonkeyPatch, name: str) -> None:
    env.setenv(props.variable_name(name), "x")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert f"{props.variable_name(name)} ({name}): owned by the service" in message


def test_every_setting_the_clients_set_is_owned(env: pytest.MonkeyPatch) -> None:
    """What a client of the service sets over the common configuration can never be given
    by the operator (it would be silently replaced), except client.id (see client_id)."""
    s = load_settings()
    live = set(live_consumer_config(s)) - set(s.kafka_common())
    assert live - {"client.id"} <= set(props.OWNED)
    writer = DeadLetterWriter(s.kafka_common(), "dlq")
    assert set(writer._conf) - set(s.kafka_common()) <= set(props.OWNED)


# ---- librdkafka's own check ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        (
            "REPLICATOR_KAFKA_PROPERTY_NO_SUCH_PROPERTY",
            "1",
            'No such configuration property: "no.such.property"',
        ),
        ("REPLICATOR_KAFKA_PROPERTY_SOCKET_TIMEOUT_MS", "soon", "Invalid value"),
        ("REPLICATOR_KAFKA_PROPERTY_COMPRESSION_TYPE", "zip", "Invalid value"),
        ("REPLICATOR_KAFKA_PROPERTY_SASL_OAUTHBEARER_METHOD", "nope", "Invalid value"),
    ],
)
def test_librdkafka_refusals_name_the_variable(
    env: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    env.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid configuration: " + variable + " (")
    assert says in message and "\n" not in message


def test_a_bad_value_of_a_masked_property_is_not_echoed(env: pytest.MonkeyPatch) -> None:
    # `partitioner` is not among the properties printed: librdkafka quotes the bad value.
    env.setenv("REPLICATOR_KAFKA_PROPERTY_PARTITIONER", "hunter2-not-a-partitioner")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
    assert "REPLICATOR_KAFKA_PROPERTY_PARTITIONER (partitioner)" in str(caught.value)


def test_oidc_needs_its_token_endpoint(env: pytest.MonkeyPatch) -> None:
    env.setenv("REPLICATOR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    env.setenv("REPLICATOR_KAFKA_SASL_MECHANISM", "OAUTHBEARER")
    env.setenv("REPLICATOR_KAFKA_PROPERTY_SASL_OAUTHBEARER_METHOD", "oidc")
    env.setenv("REPLICATOR_KAFKA_PROPERTY_SASL_OAUTHBEARER_CLIENT_ID", "the-client")
    env.setenv("REPLICATOR_KAFKA_PROPERTY_SASL_OAUTHBEARER_CLIENT_SECRET", "oidc-secret-value")
    with pytest.raises(ConfigError, match=r"sasl\.oauthbearer\.token\.endpoint\.url` is mandatory"):
        load_settings()
    env.setenv(
        "REPLICATOR_KAFKA_PROPERTY_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
        "https://login.example.test/oauth2/token",
    )
    settings = load_settings()
    conf = settings.kafka_common()
    assert conf["sasl.mechanism"] == "OAUTHBEARER"
    assert conf["sasl.oauthbearer.client.secret"] == "oidc-secret-value"
    assert "sasl.username" not in conf and "sasl.password" not in conf


def test_oauthbearer_takes_no_user_and_password(env: pytest.MonkeyPatch) -> None:
    env.setenv("REPLICATOR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    env.setenv("REPLICATOR_KAFKA_SASL_MECHANISM", "OAUTHBEARER")
    env.setenv("REPLICATOR_KAFKA_SASL_USERNAME", "someone")
    with pytest.raises(ConfigError, match="OAUTHBEARER takes no REPLICATOR_KAFKA_SASL_USERNAME"):
        load_settings()


# ---- what every client gets ----------------------------------------------------------------


def test_properties_reach_the_common_configuration(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    file = tmp_path / "client.properties"
    file.write_text("# tuning\nsocket.keepalive.enable=true\nclient.id=from-file\n")
    env.setenv("REPLICATOR_KAFKA_PROPERTIES_FILE", str(file))
    env.setenv("REPLICATOR_KAFKA_PROPERTY_CLIENT_ID", "platform-replicator")
    settings = load_settings()
    conf = settings.kafka_common()
    assert conf["socket.keepalive.enable"] == "true"
    assert conf["client.id"] == "platform-replicator"
    assert settings.client_id("replicator-audit") == "platform-replicator"
    env.delenv("REPLICATOR_KAFKA_PROPERTY_CLIENT_ID")
    env.delenv("REPLICATOR_KAFKA_PROPERTIES_FILE")
    assert load_settings().client_id("replicator-audit") == "replicator-audit"


def test_the_produce_tool_takes_them_too(env: pytest.MonkeyPatch) -> None:
    env.setenv("REPLICATOR_KAFKA_PROPERTY_CLIENT_ID", "loader")
    assert load_client_properties("127.0.0.1:9") == {
        "bootstrap.servers": "127.0.0.1:9",
        "client.id": "loader",
    }
    env.setenv("REPLICATOR_KAFKA_PROPERTY_ISOLATION_LEVEL", "read_uncommitted")
    with pytest.raises(ConfigError, match=r"ISOLATION_LEVEL \(isolation.level\): owned"):
        load_client_properties("127.0.0.1:9")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xff\xfe=1\n", "is not UTF-8 text"),
        (b"x" * (1024 * 1024 + 1), "is larger than"),
        (b"sasl.oauthbearer.client.secret\n", "line 1: not a key=value line"),
    ],
)
def test_a_bad_properties_file_is_refused(
    env: pytest.MonkeyPatch, tmp_path: Path, content: bytes, problem: str
) -> None:
    file = tmp_path / "client.properties"
    file.write_bytes(content)
    env.setenv("REPLICATOR_KAFKA_PROPERTIES_FILE", str(file))
    with pytest.raises(ConfigError, match=problem) as caught:
        load_settings()
    assert "REPLICATOR_KAFKA_PROPERTIES_FILE" in str(caught.value)
    env.setenv("REPLICATOR_KAFKA_PROPERTIES_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"REPLICATOR_KAFKA_PROPERTIES_FILE: .* does not exist"):
        load_settings()


# ---- masking -------------------------------------------------------------------------------

SECRET_NAMES = [
    "sasl.oauthbearer.client.secret",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "ssl_key",
    "sasl.jaas.config",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.kerberos.keytab",
    "ssl.engine.callback_data",  # not known to be safe: masked too
]


@given(
    st.sampled_from(SECRET_NAMES),
    st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=4, max_size=40
    ).filter(lambda v: v.strip() == v and v not in "**********"),
)
def test_secret_values_never_print(name: str, value: str) -> None:
    got = props.collect({props.variable_name(name): value}, None)
    assert got.printable() == {name: props.MASK}
    assert value not in got.scrub(f"librdkafka said {value!r} is wrong")


@given(PROPERTY_NAMES)
def test_only_known_safe_values_print(name: str) -> None:
    """Deny by default: a value prints only for a listed name, or a size or duration."""
    printed = props.shown(name, "v4lue")
    if name in props.SAFE_NAMES:
        assert printed == "v4lue"
    elif not name.endswith(
        (".ms", ".bytes", ".kbytes", ".messages", ".max", ".min", ".num", ".count")
    ):
        assert printed == props.MASK
    if props.is_secret_name(name):
        assert name in props.SAFE_NAMES or printed == props.MASK


def test_config_output_masks_and_lists_the_properties(env: pytest.MonkeyPatch) -> None:
    env.setenv("REPLICATOR_KAFKA_PROPERTY_SSL_KEY_PASSWORD", "k3y-passw0rd-value")
    env.setenv("REPLICATOR_KAFKA_PROPERTY_SASL_OAUTHBEARER_CONFIG", "principal=admin-value")
    env.setenv("REPLICATOR_KAFKA_PROPERTY_CLIENT_ID", "shown-id")
    env.setenv("REPLICATOR_KAFKA_PROPERTY_SOCKET_TIMEOUT_MS", "30000")
    settings = load_settings()
    text = json.dumps(settings.printable())
    assert "k3y-passw0rd-value" not in text and "admin-value" not in text
    assert settings.printable()["kafka_properties"] == {
        "client.id": "shown-id",
        "sasl.oauthbearer.config": props.MASK,
        "socket.timeout.ms": "30000",
        "ssl.key.password": props.MASK,
    }
    assert sorted(settings.client_properties.secret_values()) == [
        "k3y-passw0rd-value",
        "principal=admin-value",
    ]


def test_a_property_of_the_other_kind_of_client_is_not_warned_about() -> None:
    """Every client gets every property: librdkafka's warning that a producer ignores a
    consumer property (and the reverse) is dropped; its other warnings are kept."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(KAFKA_LOGGER)
    handler = Keep()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        producer = Producer({"fetch.min.bytes": "5", "client.id": "kinds", "logger": logger})
        producer.poll(0.5)
        consumer = Consumer(
            {"linger.ms": "5", "group.id": "g", "client.id": "kinds", "logger": logger}
        )
        consumer.poll(0.5)
        consumer.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    details = [str(getattr(r, "replicator_fields", {}).get("detail", "")) for r in records]
    assert not [d for d in details if "will be ignored by this" in d], details
    assert any("bootstrap.servers" in d for d in details), details  # other warnings stay
