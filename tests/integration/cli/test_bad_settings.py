"""Every bad setting is refused at load, by every command that reads the settings.

Each case starts from a valid configuration (both stores, secrets from files and from
variables) pointing at servers that do not exist, spoils one thing, and runs the real CLI
(`python -m replicator config | check | run`): exit 2, exactly one line on stderr naming the
variable, nothing on stdout, no traceback, and no secret's value anywhere, even the value of
the bad secret itself. Since nothing listens at the addresses, a command that got past
validation would fail differently (exit 1) or wait for the broker (`run`: the timeout).

No server is needed: validation comes before any network access.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from replicator.config import Settings

pytestmark = pytest.mark.integration

SECRET = "Sup3r-s3cret-VALUE"  # in every secret of the base configuration
ACCOUNT_KEY = base64.b64encode(SECRET.encode()).decode()
COMMANDS = ("config", "check", "run")
# `run` with a valid configuration waits for a broker that is not there: well past this.
TIMEOUT_S = 60


def base_env(secrets: Path) -> dict[str, str]:
    """A valid configuration; a broker and stores that do not exist."""
    (secrets / "REPLICATOR_S3_SECRET_KEY").write_text(SECRET + "-s3\n")
    (secrets / "REPLICATOR_AZURE_CONNECTION_STRING").write_text(
        "DefaultEndpointsProtocol=http;AccountName=acct;"
        f"AccountKey={ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:1/acct;\n"
    )
    return {
        "REPLICATOR_SECRETS_DIR": str(secrets),
        "REPLICATOR_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "REPLICATOR_TOPICS": "snds.reimbursements,snds.prescriptions",
        "REPLICATOR_S3_ENDPOINT": "http://127.0.0.1:1",
        "REPLICATOR_S3_BUCKET": "bucket",
        "REPLICATOR_S3_ACCESS_KEY": SECRET + "-access",
        "REPLICATOR_AZURE_CONTAINER": "container",
        "REPLICATOR_METRICS_HOST": "127.0.0.1",
        "REPLICATOR_METRICS_PORT": "0",
        "REPLICATOR_LOG_FORMAT": "json",
    }


@dataclass(frozen=True)
class Case:
    id: str
    variable: str  # the variable the one line must name
    env: dict[str, str | None] = field(default_factory=dict)  # None: unset it
    # secret files: text, bytes, or one of "dangling", "directory", "fifo", "loop", "remove"
    files: dict[str, str | bytes] = field(default_factory=dict)


BIG = 64 * 1024 + 1

CASES = [
    # --- secret files -------------------------------------------------------------------------
    Case("secret file not UTF-8", "REPLICATOR_S3_SECRET_KEY",
         files={"REPLICATOR_S3_SECRET_KEY": b"\xff\xfe" + SECRET.encode()}),
    Case("secret file a dangling link", "REPLICATOR_AZURE_CONNECTION_STRING",
         files={"REPLICATOR_AZURE_CONNECTION_STRING": "dangling"}),
    Case("secret file a link loop", "REPLICATOR_S3_SECRET_KEY",
         files={"REPLICATOR_S3_SECRET_KEY": "loop"}),
    Case("secret file a directory", "REPLICATOR_S3_SECRET_KEY",
         files={"REPLICATOR_S3_SECRET_KEY": "directory"}),
    Case("secret file a named pipe", "REPLICATOR_S3_SECRET_KEY",
         files={"REPLICATOR_S3_SECRET_KEY": "fifo"}),
    Case("secret file empty", "REPLICATOR_S3_SECRET_KEY",
         files={"REPLICATOR_S3_SECRET_KEY": "\n"}),
    Case("secret file too large", "REPLICATOR_S3_SECRET_KEY",
         files={"REPLICATOR_S3_SECRET_KEY": SECRET * (BIG // len(SECRET) + 1)}),
    Case("secret file name in lower case, not UTF-8", "REPLICATOR_S3_SECRET_KEY",
         files={"REPLICATOR_S3_SECRET_KEY": "remove", "replicator_s3_secret_key": b"\xc3("}),
    Case("secrets folder empty", "REPLICATOR_SECRETS_DIR", env={"REPLICATOR_SECRETS_DIR": ""}),
    Case("secrets folder missing", "REPLICATOR_SECRETS_DIR",
         env={"REPLICATOR_SECRETS_DIR": "/nonexistent-secrets"}),
    Case("secret variable empty", "REPLICATOR_S3_ACCESS_KEY",
         env={"REPLICATOR_S3_ACCESS_KEY": ""}),
    Case("secret on two lines", "REPLICATOR_S3_ACCESS_KEY",
         env={"REPLICATOR_S3_ACCESS_KEY": SECRET + "\n" + SECRET}),
    Case("azure connection string malformed", "REPLICATOR_AZURE_CONNECTION_STRING",
         env={"REPLICATOR_AZURE_CONNECTION_STRING": f"AccountName=acct;{SECRET}"}),
    Case("azure account key not base64", "REPLICATOR_AZURE_CONNECTION_STRING",
         env={"REPLICATOR_AZURE_CONNECTION_STRING": f"AccountName=a;AccountKey={SECRET}!"}),
    Case("azure connection string without a credential", "REPLICATOR_AZURE_CONNECTION_STRING",
         files={"REPLICATOR_AZURE_CONNECTION_STRING": f"AccountName={SECRET}"}),
    Case("SSE-C key not base64", "REPLICATOR_S3_SSE_CUSTOMER_KEY",
         env={"REPLICATOR_S3_SSE_CUSTOMER_KEY": SECRET + "!"}),
    Case("SSE-C key of 16 bytes", "REPLICATOR_S3_SSE_CUSTOMER_KEY",
         env={"REPLICATOR_S3_SSE_CUSTOMER_KEY": base64.b64encode(b"k" * 16).decode()}),
    # --- JSON ---------------------------------------------------------------------------------
    Case("JSON malformed", "REPLICATOR_SCHEMA_TOPICS",
         env={"REPLICATOR_SCHEMA_TOPICS": '{"snds.reimbursements": '}),
    Case("JSON a list", "REPLICATOR_SCHEMA_TOPICS", env={"REPLICATOR_SCHEMA_TOPICS": '["a"]'}),
    Case("JSON value not a string", "REPLICATOR_SCHEMA_TOPICS",
         env={"REPLICATOR_SCHEMA_TOPICS": '{"snds.reimbursements": 1}'}),
    Case("JSON names a bad topic", "REPLICATOR_SCHEMA_TOPICS",
         env={"REPLICATOR_SCHEMA_TOPICS": '{"snds.reimbursements": "a b"}'}),
    # --- Kafka --------------------------------------------------------------------------------
    Case("bootstrap unset", "REPLICATOR_KAFKA_BOOTSTRAP", env={"REPLICATOR_KAFKA_BOOTSTRAP": None}),
    Case("bootstrap empty", "REPLICATOR_KAFKA_BOOTSTRAP", env={"REPLICATOR_KAFKA_BOOTSTRAP": ""}),
    Case("bootstrap without port", "REPLICATOR_KAFKA_BOOTSTRAP",
         env={"REPLICATOR_KAFKA_BOOTSTRAP": "kafka"}),
    Case("bootstrap port out of range", "REPLICATOR_KAFKA_BOOTSTRAP",
         env={"REPLICATOR_KAFKA_BOOTSTRAP": "kafka:70000"}),
    Case("bootstrap empty entry", "REPLICATOR_KAFKA_BOOTSTRAP",
         env={"REPLICATOR_KAFKA_BOOTSTRAP": "a:9092,,b:9092"}),
    Case("bootstrap as a URL", "REPLICATOR_KAFKA_BOOTSTRAP",
         env={"REPLICATOR_KAFKA_BOOTSTRAP": "http://kafka:9092/"}),
    Case("topics empty", "REPLICATOR_TOPICS", env={"REPLICATOR_TOPICS": ""}),
    Case("topics only commas", "REPLICATOR_TOPICS", env={"REPLICATOR_TOPICS": " , ,"}),
    Case("topic with a space", "REPLICATOR_TOPICS", env={"REPLICATOR_TOPICS": "snds reimb"}),
    Case("topic '..'", "REPLICATOR_TOPICS", env={"REPLICATOR_TOPICS": "a,.."}),
    Case("topic of 250 characters", "REPLICATOR_TOPICS", env={"REPLICATOR_TOPICS": "t" * 250}),
    Case("topic twice", "REPLICATOR_TOPICS", env={"REPLICATOR_TOPICS": "a,b,a"}),
    Case("dead-letter topic replicated", "REPLICATOR_DEAD_LETTER_TOPIC",
         env={"REPLICATOR_DEAD_LETTER_TOPIC": "snds.prescriptions"}),
    Case("dead-letter topic name", "REPLICATOR_DEAD_LETTER_TOPIC",
         env={"REPLICATOR_DEAD_LETTER_TOPIC": "dead/letter"}),
    Case("group id empty", "REPLICATOR_GROUP_ID", env={"REPLICATOR_GROUP_ID": ""}),
    Case("group id blank", "REPLICATOR_GROUP_ID", env={"REPLICATOR_GROUP_ID": "   "}),
    Case("session timeout past librdkafka's", "REPLICATOR_SESSION_TIMEOUT_MS",
         env={"REPLICATOR_SESSION_TIMEOUT_MS": "3600001"}),
    Case("fetch buffer past librdkafka's", "REPLICATOR_FETCH_BUFFER_KBYTES",
         env={"REPLICATOR_FETCH_BUFFER_KBYTES": "2097152"}),
    Case("security protocol unknown", "REPLICATOR_KAFKA_SECURITY_PROTOCOL",
         env={"REPLICATOR_KAFKA_SECURITY_PROTOCOL": "TLS"}),
    Case("SASL mechanism over PLAINTEXT", "REPLICATOR_KAFKA_SASL_MECHANISM",
         env={"REPLICATOR_KAFKA_SASL_MECHANISM": "PLAIN",
              "REPLICATOR_KAFKA_SASL_USERNAME": "u",
              "REPLICATOR_KAFKA_SASL_PASSWORD": SECRET}),
    Case("SASL protocol without mechanism", "REPLICATOR_KAFKA_SASL_MECHANISM",
         env={"REPLICATOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}),
    Case("SASL without password", "REPLICATOR_KAFKA_SASL_PASSWORD",
         env={"REPLICATOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
              "REPLICATOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
              "REPLICATOR_KAFKA_SASL_USERNAME": "u"}),
    Case("Kafka CA file missing", "REPLICATOR_KAFKA_SSL_CA_LOCATION",
         env={"REPLICATOR_KAFKA_SECURITY_PROTOCOL": "SSL",
              "REPLICATOR_KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem"}),
    # --- durations ----------------------------------------------------------------------------
    Case("shutdown timeout infinite", "REPLICATOR_SHUTDOWN_TIMEOUT_S",
         env={"REPLICATOR_SHUTDOWN_TIMEOUT_S": "inf"}),
    Case("shutdown timeout NaN", "REPLICATOR_SHUTDOWN_TIMEOUT_S",
         env={"REPLICATOR_SHUTDOWN_TIMEOUT_S": "nan"}),
    Case("commit interval negative", "REPLICATOR_COMMIT_INTERVAL_S",
         env={"REPLICATOR_COMMIT_INTERVAL_S": "-1"}),
    Case("flush interval of 30 years", "REPLICATOR_FLUSH_INTERVAL_S",
         env={"REPLICATOR_FLUSH_INTERVAL_S": "1e9"}),
    Case("store timeout not a number", "REPLICATOR_STORE_TIMEOUT_S",
         env={"REPLICATOR_STORE_TIMEOUT_S": "soon"}),
    Case("write retry -infinity", "REPLICATOR_WRITE_RETRY_S",
         env={"REPLICATOR_WRITE_RETRY_S": "-inf"}),
    # --- stores -------------------------------------------------------------------------------
    Case("stores empty", "REPLICATOR_STORES", env={"REPLICATOR_STORES": ""}),
    Case("store unknown", "REPLICATOR_STORES", env={"REPLICATOR_STORES": "s3,gcs"}),
    Case("store twice", "REPLICATOR_STORES", env={"REPLICATOR_STORES": "s3,s3"}),
    Case("bucket missing", "REPLICATOR_S3_BUCKET", env={"REPLICATOR_S3_BUCKET": None}),
    Case("bucket name", "REPLICATOR_S3_BUCKET", env={"REPLICATOR_S3_BUCKET": "My_Bucket"}),
    Case("container name", "REPLICATOR_AZURE_CONTAINER",
         env={"REPLICATOR_AZURE_CONTAINER": "a--b"}),
    Case("S3 endpoint without scheme", "REPLICATOR_S3_ENDPOINT",
         env={"REPLICATOR_S3_ENDPOINT": "s3.fr-par.scw.cloud"}),
    Case("S3 endpoint port", "REPLICATOR_S3_ENDPOINT",
         env={"REPLICATOR_S3_ENDPOINT": "https://s3.fr-par.scw.cloud:99999"}),
    Case("S3 region with a space", "REPLICATOR_S3_REGION", env={"REPLICATOR_S3_REGION": "fr par"}),
    Case("prefix with '..'", "REPLICATOR_S3_PREFIX", env={"REPLICATOR_S3_PREFIX": "a/../b"}),
    Case("prefix with a leading slash", "REPLICATOR_AZURE_PREFIX",
         env={"REPLICATOR_AZURE_PREFIX": "/replicator"}),
    Case("prefix with an empty segment", "REPLICATOR_S3_PREFIX",
         env={"REPLICATOR_S3_PREFIX": "a//b"}),
    Case("prefix with a space", "REPLICATOR_AZURE_PREFIX",
         env={"REPLICATOR_AZURE_PREFIX": "my data"}),
    Case("KMS key without KMS", "REPLICATOR_S3_SSE_KMS_KEY_ID",
         env={"REPLICATOR_S3_SSE_KMS_KEY_ID": "key-1"}),
    Case("SSE-C with SSE", "REPLICATOR_S3_SSE_CUSTOMER_KEY",
         env={"REPLICATOR_S3_SSE": "AES256",
              "REPLICATOR_S3_SSE_CUSTOMER_KEY": base64.b64encode(b"k" * 32).decode()}),
    Case("S3 CA bundle a directory", "REPLICATOR_S3_CA_BUNDLE",
         env={"REPLICATOR_S3_CA_BUNDLE": "/"}),
    # --- sizes and the rest ---------------------------------------------------------------
    Case("buffer smaller than a chunk per store", "REPLICATOR_MAX_BUFFER_BYTES",
         env={"REPLICATOR_MAX_BUFFER_BYTES": str(6 * 1024 * 1024),
              "REPLICATOR_CHUNK_MAX_BYTES": str(4 * 1024 * 1024)}),
    Case("buffer smaller than a record per store", "REPLICATOR_MAX_BUFFER_BYTES",
         env={"REPLICATOR_MAX_BUFFER_BYTES": str(2 * 1024 * 1024),
              "REPLICATOR_CHUNK_MAX_BYTES": "1024",
              "REPLICATOR_MAX_RECORD_BYTES": str(2 * 1024 * 1024)}),
    Case("chunk bytes zero", "REPLICATOR_CHUNK_MAX_BYTES", env={"REPLICATOR_CHUNK_MAX_BYTES": "0"}),
    Case("chunk records not a number", "REPLICATOR_CHUNK_MAX_RECORDS",
         env={"REPLICATOR_CHUNK_MAX_RECORDS": "many"}),
    Case("deflate level 10", "REPLICATOR_DEFLATE_LEVEL", env={"REPLICATOR_DEFLATE_LEVEL": "10"}),
    Case("codec unknown", "REPLICATOR_CODEC", env={"REPLICATOR_CODEC": "zstd"}),
    Case("write concurrency zero", "REPLICATOR_WRITE_CONCURRENCY",
         env={"REPLICATOR_WRITE_CONCURRENCY": "0"}),
    Case("catch-up copy not a boolean", "REPLICATOR_CATCHUP_COPY",
         env={"REPLICATOR_CATCHUP_COPY": "maybe"}),
    Case("schemas folder missing", "REPLICATOR_SCHEMAS_DIR",
         env={"REPLICATOR_SCHEMAS_DIR": "/nonexistent-schemas"}),
    Case("metrics port out of range", "REPLICATOR_METRICS_PORT",
         env={"REPLICATOR_METRICS_PORT": "65536"}),
    Case("metrics host", "REPLICATOR_METRICS_HOST", env={"REPLICATOR_METRICS_HOST": "not a host"}),
    Case("log level", "REPLICATOR_LOG_LEVEL", env={"REPLICATOR_LOG_LEVEL": "VERBOSE"}),
    Case("log format", "REPLICATOR_LOG_FORMAT", env={"REPLICATOR_LOG_FORMAT": "xml"}),
]  # fmt: skip


def make_env(tmp_path: Path, case: Case) -> dict[str, str]:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("REPLICATOR_")}
    env.update(base_env(secrets))
    for name, value in case.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    for name, content in case.files.items():
        path = secrets / name
        path.unlink(missing_ok=True)
        if content == "remove":
            continue
        if content == "dangling":
            path.symlink_to(secrets / "no-such-file")
        elif content == "loop":
            path.symlink_to(path)
        elif content == "directory":
            path.mkdir()
        elif content == "fifo":
            os.mkfifo(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return env


def run_all(env: dict[str, str], *commands: str) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each command as its own process, all at once."""
    procs = {
        command: subprocess.Popen(
            [sys.executable, "-m", "replicator", command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for command in commands
    }
    out = {}
    for command, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        out[command] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return out


def secrets_in(env: dict[str, str], case: Case) -> list[str]:
    """Every secret value of this case: the base's and the spoiled ones."""
    values = [SECRET, ACCOUNT_KEY]
    values += [v for k, v in case.env.items() if v and ("KEY" in k or "PASSWORD" in k)]
    values += [v for v in case.files.values() if isinstance(v, str) and len(v) > 12]
    return values


def test_the_base_configuration_is_valid(tmp_path: Path) -> None:
    """So that each case below fails for its own change only."""
    env = make_env(tmp_path, Case("valid", ""))
    result = run_all(env, "config")["config"]
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert SECRET not in result.stdout and ACCOUNT_KEY not in result.stdout


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_setting_is_refused_with_one_line_by_every_command(
    case: Case, tmp_path: Path
) -> None:
    env = make_env(tmp_path, case)
    for command, result in run_all(env, *COMMANDS).items():
        what = f"{command}: {result.stderr!r}"
        assert result.returncode == 2, what
        lines = result.stderr.splitlines()
        assert len(lines) == 1, what
        assert lines[0].startswith("error: "), what
        assert case.variable in lines[0], what
        assert result.stdout == "", what
        assert "Traceback" not in result.stderr, what
        for secret in secrets_in(env, case):
            assert secret not in result.stderr + result.stdout, what


def test_there_are_at_least_30_cases_and_every_variable_is_a_setting() -> None:
    assert len(CASES) >= 30
    names = {"REPLICATOR_" + n.upper() for n in Settings.model_fields} | {"REPLICATOR_SECRETS_DIR"}
    for case in CASES:
        assert case.variable in names, case.id


def test_a_name_that_is_no_setting_gets_a_warning_naming_the_closest_setting(
    tmp_path: Path,
) -> None:
    env = make_env(tmp_path, Case("valid", ""))
    env["REPLICATOR_TOPIC"] = "x"  # a typo of REPLICATOR_TOPICS
    env["REPLICATOR_ZZZ"] = "x"  # close to nothing
    (tmp_path / "secrets" / "REPLICATOR_S3_SECRET_KY").write_text("x")
    # not typos: the project's own variables, and Kubernetes' service links
    env["REPLICATOR_FAULTS_RUNS"] = "2"
    env["REPLICATOR_SERVICE_HOST"] = "10.0.0.1"
    env["REPLICATOR_PORT_9108_TCP_ADDR"] = "10.0.0.1"
    result = run_all(env, "config")["config"]
    assert result.returncode == 0
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3, result.stderr
    assert all(line.startswith("warning: ") for line in warnings)
    (secret_file,) = [w for w in warnings if "REPLICATOR_S3_SECRET_KY " in w]
    assert "file in REPLICATOR_SECRETS_DIR" in secret_file
    assert "did you mean REPLICATOR_S3_SECRET_KEY?" in secret_file
    (topic,) = [w for w in warnings if "REPLICATOR_TOPIC " in w]
    assert "did you mean REPLICATOR_TOPICS?" in topic
    (zzz,) = [w for w in warnings if "REPLICATOR_ZZZ " in w]
    assert "did you mean" not in zzz

    # with a bad setting too: the warnings, then the one error line
    env["REPLICATOR_GROUP_ID"] = ""
    for command, result in run_all(env, *COMMANDS).items():
        lines = result.stderr.splitlines()
        assert result.returncode == 2, command
        assert [ln for ln in lines if not ln.startswith("warning: ")] == lines[3:], command
        assert len(lines) == 4 and "REPLICATOR_GROUP_ID" in lines[3], command
