"""The domain of each setting, on plain values (replicator/config_checks.py), and the settings
model refusing every value outside it with one line naming the variable.

The same refusals through the real command line: tests/integration/cli/test_bad_settings.py.
"""

from __future__ import annotations

import base64
import math
import os
import string
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from replicator import config_checks as checks
from replicator.config import MAX_DURATION_S, Settings, load_settings, unknown_settings
from replicator.devtools.docs_gen import secret_fields
from replicator.errors import ConfigError

SECRET = "n0t-to-be-SHOWN-anywhere"
TOPIC_CHARS = string.ascii_letters + string.digits + "._-"


def valid(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "kafka_bootstrap": "kafka:9092",
        "s3_endpoint": "https://s3.fr-par.scw.cloud",
        "s3_bucket": "bucket",
        "s3_access_key": "access-" + SECRET,
        "s3_secret_key": SECRET,
        "azure_connection_string": "AccountName=acct;AccountKey=a2V5;",
        "azure_container": "container",
    }
    values.update(overrides)
    return values


def refused(**overrides: Any) -> str:
    """The one-line message of load_settings for these values (which must be refused)."""
    with pytest.raises(ConfigError) as err:
        load_settings(**valid(**overrides))
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.fixture(autouse=True)
def no_replicator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("REPLICATOR_"):
            monkeypatch.delenv(name)


def test_the_base_values_are_valid() -> None:
    load_settings(**valid())


# ---- topics -------------------------------------------------------------------------------


@given(st.text(TOPIC_CHARS, min_size=1, max_size=249).filter(lambda t: t not in (".", "..")))
def test_every_name_kafka_accepts_is_accepted(name: str) -> None:
    assert checks.check_topic(name) == name


@given(
    st.text(TOPIC_CHARS, max_size=20),
    st.characters(blacklist_characters=TOPIC_CHARS, blacklist_categories=["Cs"]),
    st.text(TOPIC_CHARS, max_size=20),
)
def test_a_name_with_any_other_character_is_refused(head: str, bad: str, tail: str) -> None:
    with pytest.raises(ValueError):
        checks.check_topic(head + bad + tail)


@pytest.mark.parametrize("name", ["", ".", "..", "t" * 250])
def test_kafka_s_other_forbidden_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        checks.check_topic(name)


def test_topic_lists() -> None:
    assert checks.check_topics(["a", "b"]) == ["a", "b"]
    for bad in ([], ["a", "a"], ["a", "b c"]):
        with pytest.raises(ValueError):
            checks.check_topics(bad)


# ---- bootstrap, URLs, hosts ------------------------------------------------------------------

hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)


@given(st.lists(st.tuples(hosts, st.integers(1, 65535)), min_size=1, max_size=4))
def test_every_host_port_list_is_accepted(entries: list[tuple[str, int]]) -> None:
    value = ", ".join(f"{host}:{port}" for host, port in entries)
    assert checks.check_bootstrap(value) == value.replace(", ", ",")


@given(hosts, st.one_of(st.integers(max_value=0), st.integers(min_value=65536)))
def test_a_port_out_of_range_is_refused(host: str, port: int) -> None:
    with pytest.raises(ValueError, match="port"):
        checks.check_bootstrap(f"{host}:{port}")


@pytest.mark.parametrize(
    "value",
    ["", " ", "kafka", "kafka:", ":9092", "kafka:x", "a:1,,b:2", "a:1,", "::1:9092",
     "[::g]:9092", "http://kafka:9092", "kaf ka:9092", "kafka:9092/x", "-kafka:9092"],
)  # fmt: skip
def test_malformed_bootstraps_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        checks.check_bootstrap(value)


@pytest.mark.parametrize(
    "value", ["http://127.0.0.1:8333", "https://s3.fr-par.scw.cloud", "https://h/path/"]
)
def test_urls(value: str) -> None:
    assert checks.check_url(value) == value


@pytest.mark.parametrize(
    "value",
    ["s3.fr-par.scw.cloud", "ftp://h", "https://", "https://h:0", "https://h:99999",
     "https://h:x", "https://h/?q=1", "https://h/#f", "https://u:p@h"],
)  # fmt: skip
def test_bad_urls_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        checks.check_url(value)


def test_hosts() -> None:
    for good in ("0.0.0.0", "::", "127.0.0.1", "metrics.local"):
        assert checks.check_host(good) == good
    for bad in ("", "not a host", "a/b"):
        with pytest.raises(ValueError):
            checks.check_host(bad)


# ---- prefixes, buckets, containers -----------------------------------------------------------

SAFE = string.ascii_letters + string.digits + "!_.*'()-"
segment = st.text(SAFE, min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
segment_lists = st.lists(segment, max_size=5)


@given(segment_lists, st.booleans())
def test_every_prefix_of_safe_segments_is_accepted(parts: list[str], slash: bool) -> None:
    value = "/".join(parts) + ("/" if slash and parts else "")
    assert checks.check_prefix(value) == value


@given(segment_lists, st.lists(segment, min_size=1, max_size=5), st.sampled_from(["..", ".", ""]))
def test_a_dot_dot_dot_or_empty_segment_is_refused(
    head: list[str], tail: list[str], bad: str
) -> None:
    with pytest.raises(ValueError):
        checks.check_prefix("/".join([*head, bad, *tail]))


@given(
    segment_lists,
    st.characters(blacklist_categories=["Cs"]).filter(lambda c: c not in SAFE + "/"),
    segment_lists,
)
def test_a_prefix_character_needing_escape_is_refused(
    head: list[str], char: str, tail: list[str]
) -> None:
    with pytest.raises(ValueError):
        checks.check_prefix("/".join([*head, "a" + char, *tail]))


@pytest.mark.parametrize("value", ["/replicator", "/", "x" * 513])
def test_other_bad_prefixes(value: str) -> None:
    with pytest.raises(ValueError):
        checks.check_prefix(value)


@pytest.mark.parametrize("name", ["bucket", "my.bucket-1", "abc", "a" * 63])
def test_bucket_names(name: str) -> None:
    assert checks.check_bucket(name) == name


@pytest.mark.parametrize("name", ["b", "ab", "a" * 64, "My_Bucket", "-bucket", "bucket-", "a..b"])
def test_bad_bucket_names(name: str) -> None:
    with pytest.raises(ValueError):
        checks.check_bucket(name)


@pytest.mark.parametrize("name", ["container", "c-1", "abc", "$root", "$web", "a" * 63])
def test_container_names(name: str) -> None:
    assert checks.check_container(name) == name


@pytest.mark.parametrize("name", ["c", "a--b", "-ab", "ab-", "Container", "a_b", "a" * 64])
def test_bad_container_names(name: str) -> None:
    with pytest.raises(ValueError):
        checks.check_container(name)


# ---- secrets: refused without ever showing the value ----------------------------------------


@given(st.text(max_size=80))
def test_a_connection_string_is_never_shown_in_its_refusal(text: str) -> None:
    for value in (text + SECRET, SECRET + text, f"{text}={SECRET};AccountName={SECRET}"):
        try:
            checks.check_azure_connection_string(value)
        except ValueError as exc:
            assert SECRET not in str(exc)


@pytest.mark.parametrize(
    "value",
    ["AccountName=a;AccountKey=a2V5", "AccountName=a;AccountKey=a2V5;BlobEndpoint=http://h:1/a;",
     "BlobEndpoint=https://a.blob.core.windows.net/;SharedAccessSignature=sv=1&sig=x",
     "AccountName=a;SharedAccessSignature=sv=1", "UseDevelopmentStorage=true"],
)  # fmt: skip
def test_connection_strings(value: str) -> None:
    assert checks.check_azure_connection_string(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "x", "AccountName=a", "AccountKey=a2V5", "AccountName=a;AccountKey=not base64!",
     "AccountName=a;AccountKey=", "SharedAccessSignature=sv=1",
     "BlobEndpoint=h;SharedAccessSignature=sv=1", "=x;AccountName=a;AccountKey=a2V5"],
)  # fmt: skip
def test_bad_connection_strings(value: str) -> None:
    with pytest.raises(ValueError):
        checks.check_azure_connection_string(value)


@given(st.binary(max_size=64))
def test_an_sse_c_key_is_32_bytes_of_base64_and_never_shown(raw: bytes) -> None:
    text = base64.b64encode(raw).decode()
    if len(raw) == 32:
        assert checks.check_sse_customer_key(text) == raw
    else:
        with pytest.raises(ValueError) as err:
            checks.check_sse_customer_key(text)
        assert text not in str(err.value) or not text


@pytest.mark.parametrize("field", secret_fields())
@pytest.mark.parametrize("value", ["", "  ", SECRET + "\n" + SECRET])
def test_every_secret_empty_or_on_two_lines_is_refused_without_its_value(
    field: str, value: str
) -> None:
    message = refused(**{field: value})
    assert f"REPLICATOR_{field.upper()}" in message
    assert SECRET not in message


# ---- the secret files ------------------------------------------------------------------------


def test_secret_files_that_cannot_be_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases: dict[str, str] = {}
    (tmp_path / "not-utf8").write_bytes(b"\xff" + SECRET.encode())
    cases["not-utf8"] = "not UTF-8"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    cases["dangling"] = "broken link"
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    cases["loop"] = "broken link"
    (tmp_path / "dir").mkdir()
    cases["dir"] = "directory"
    os.mkfifo(tmp_path / "fifo")
    cases["fifo"] = "not a regular file"
    (tmp_path / "empty").write_text(" \n")
    cases["empty"] = "empty"
    (tmp_path / "big").write_text(SECRET * 10_000)
    cases["big"] = "larger than"
    for name, reason in cases.items():
        with pytest.raises(ValueError, match=reason) as err:
            checks.read_secret_file(tmp_path / name)
        assert SECRET not in str(err.value)
        assert name in str(err.value)

    # unreadable: chmod is no obstacle to root, so the open itself fails here
    (tmp_path / "locked").write_text(SECRET)

    def denied(*_args: Any, **_kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(ValueError, match=r"cannot be read \(Permission denied\)"):
        checks.read_secret_file(tmp_path / "locked")


def test_a_secret_file_is_stripped_and_a_variable_wins_over_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "REPLICATOR_S3_SECRET_KEY").write_text(f"  {SECRET}\n")
    (tmp_path / "REPLICATOR_S3_ACCESS_KEY").write_bytes(b"\xff")
    monkeypatch.setenv("REPLICATOR_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("REPLICATOR_S3_ACCESS_KEY", "from-the-variable")
    base = valid()
    del base["s3_secret_key"], base["s3_access_key"]
    settings = load_settings(**base)
    assert settings.s3_secret_key == SecretStr(SECRET)
    assert settings.s3_access_key == SecretStr("from-the-variable")
    monkeypatch.delenv("REPLICATOR_S3_ACCESS_KEY")
    with pytest.raises(ConfigError, match=r"REPLICATOR_S3_ACCESS_KEY: .* not UTF-8"):
        load_settings(**base)


def test_a_secrets_folder_that_is_not_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("x")
    for folder in (str(tmp_path / "file"), str(tmp_path / "missing"), ""):
        monkeypatch.setenv("REPLICATOR_SECRETS_DIR", folder)
        with pytest.raises(ConfigError, match="REPLICATOR_SECRETS_DIR"):
            load_settings(**valid())


# ---- numbers: every duration finite, positive, at most a day --------------------------------


def float_fields() -> list[str]:
    return [name for name, info in Settings.model_fields.items() if info.annotation is float]


def int_fields() -> list[str]:
    return [name for name, info in Settings.model_fields.items() if info.annotation is int]


def test_there_are_durations_to_check() -> None:
    assert {"shutdown_timeout_s", "commit_interval_s", "store_timeout_s"} <= set(float_fields())


@pytest.mark.parametrize("field", float_fields())
@pytest.mark.parametrize(
    "value", ["inf", "-inf", "nan", "Infinity", math.inf, math.nan, -1, MAX_DURATION_S + 1, "x"]
)
def test_every_duration_outside_its_domain_is_refused(field: str, value: object) -> None:
    message = refused(**{field: value})
    assert message.startswith(f"invalid configuration: REPLICATOR_{field.upper()}: ")


@pytest.mark.parametrize("field", int_fields())
def test_every_integer_below_its_bound_or_not_a_number_is_refused(field: str) -> None:
    info = Settings.model_fields[field]
    low = next(getattr(m, "ge", None) for m in info.metadata if hasattr(m, "ge"))
    assert low is not None
    for value in (low - 1, "many", "1.5"):
        assert f"REPLICATOR_{field.upper()}" in refused(**{field: value})


@given(
    stores=st.sampled_from([["s3"], ["azure"], ["s3", "azure"]]),
    chunk=st.integers(1024, 64 * 1024 * 1024),
    record=st.integers(64, 64 * 1024 * 1024),
    buffer=st.integers(1024 * 1024, 256 * 1024 * 1024),
)
def test_the_buffer_holds_the_largest_chunk_for_every_store(
    stores: list[str], chunk: int, record: int, buffer: int
) -> None:
    values = valid(
        stores=stores, chunk_max_bytes=chunk, max_record_bytes=record, max_buffer_bytes=buffer
    )
    if buffer // len(stores) >= max(chunk, record):
        assert load_settings(**values).max_buffer_bytes == buffer
    else:
        with pytest.raises(ConfigError, match=r"REPLICATOR_MAX_BUFFER_BYTES=.* cannot hold"):
            load_settings(**values)


# ---- JSON, choices, files, what settings must agree on ---------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [("{", "not valid JSON"), ("[]", "JSON object"), ('"a"', "JSON object"),
     ('{"a": 1}', "not a string"), ('{"a": "b c"}', "not a topic name"), ("", "not valid JSON")],
)  # fmt: skip
def test_json_settings(value: str, reason: str) -> None:
    assert reason in refused(schema_topics=value)
    assert load_settings(**valid(schema_topics='{"a": "b"}')).schema_topics == {"a": "b"}


def test_every_choice_outside_its_literal_is_refused() -> None:
    literal_fields = [
        name
        for name, info in Settings.model_fields.items()
        if typing.get_origin(info.annotation) is typing.Literal
        or any(typing.get_origin(a) is typing.Literal for a in typing.get_args(info.annotation))
    ]
    assert len(literal_fields) >= 6
    for field in literal_fields:
        message = refused(**{field: "nonsense"})
        assert f"REPLICATOR_{field.upper()}: " in message and "Input should be" in message


@pytest.mark.parametrize("field", ["kafka_ssl_ca_location", "s3_ca_bundle", "azure_ca_bundle"])
def test_a_ca_file_must_exist(field: str, tmp_path: Path) -> None:
    assert "does not exist" in refused(**{field: tmp_path / "none.pem"})
    assert "is not a file" in refused(**{field: tmp_path})
    (tmp_path / "ca.pem").write_text("x")
    load_settings(**valid(**{field: tmp_path / "ca.pem"}))


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"dead_letter_topic": "snds.prescriptions"}, ["REPLICATOR_DEAD_LETTER_TOPIC"]),
        ({"kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "u",
          "kafka_sasl_password": SECRET}, ["REPLICATOR_KAFKA_SECURITY_PROTOCOL"]),
        ({"kafka_security_protocol": "SASL_PLAINTEXT"}, ["REPLICATOR_KAFKA_SASL_MECHANISM"]),
        ({"s3_sse_kms_key_id": "k"}, ["REPLICATOR_S3_SSE"]),
        ({"s3_bucket": None, "azure_container": None},
         ["REPLICATOR_S3_BUCKET", "REPLICATOR_AZURE_CONTAINER"]),
    ],
)  # fmt: skip
def test_settings_that_disagree_are_all_named_on_one_line(
    overrides: dict[str, Any], names: list[str]
) -> None:
    message = refused(**overrides)
    for name in names:
        assert name in message
    assert SECRET not in message


# ---- names that are no setting ---------------------------------------------------------------


def test_unknown_names_get_the_closest_setting() -> None:
    fields = list(Settings.model_fields)
    assert checks.unknown_names(["REPLICATOR_TOPIC"], fields) == [
        ("REPLICATOR_TOPIC", "REPLICATOR_TOPICS")
    ]
    assert checks.unknown_names(["REPLICATOR_QWXZ"], fields) == [("REPLICATOR_QWXZ", None)]
    quiet = [
        "REPLICATOR_TOPICS",
        "replicator_topics",
        "OTHER_THING",
        *checks.NOT_SETTINGS,
        "REPLICATOR_SERVICE_HOST",
        "REPLICATOR_SERVICE_PORT",
        "REPLICATOR_SERVICE_PORT_METRICS",
        "REPLICATOR_PORT",
        "REPLICATOR_PORT_9108_TCP",
        "REPLICATOR_PORT_9108_TCP_ADDR",
    ]
    assert checks.unknown_names(quiet, fields) == []


def test_unknown_files_in_the_secrets_folder_are_named(tmp_path: Path) -> None:
    (tmp_path / "REPLICATOR_S3_SECRET_KY").write_text("x")
    (tmp_path / "README.md").write_text("x")
    (tmp_path / "..data").mkdir()  # what a Kubernetes Secret volume holds besides the keys
    warnings = unknown_settings({"REPLICATOR_SECRETS_DIR": str(tmp_path), "REPLICATOR_X": "1"})
    assert len(warnings) == 2
    assert any(
        "REPLICATOR_S3_SECRET_KY (file in REPLICATOR_SECRETS_DIR)" in w
        and "REPLICATOR_S3_SECRET_KEY?" in w
        for w in warnings
    )


@given(
    st.sampled_from(["https://", "http://", "ftp://", ""]),
    st.sampled_from(["", "u:{s}@", ":{s}@", "{s}@"]),
    st.sampled_from(["h", "127.0.0.1", "h:0", "h:99999", "h:x", ""]),
    st.sampled_from(["", "/", "/p"]),
    st.sampled_from(["", "?token={s}", "?{s}", "?", "?e=a@{s}"]),
    st.sampled_from(["", "#{s}", "#"]),
    st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=4, max_size=12),
)
def test_a_refused_url_never_shows_its_credentials_query_or_fragment(
    scheme: str, user: str, host: str, path: str, query: str, fragment: str, secret: str
) -> None:
    """Every URL setting's refusal (an S3 endpoint, a registry URL...) names the URL without
    what may be a secret in it: credentials, a query (an API key or SAS token), a fragment."""
    secret = f"zq{secret}"
    value = scheme + user.format(s=secret) + host + path + query.format(s=secret)
    value += fragment.format(s=secret)
    for check in (checks.check_url, checks.check_registry_url):
        try:
            check(value)
        except ValueError as exc:
            assert secret not in str(exc), value
        else:
            assert secret not in value
