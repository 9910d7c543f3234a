"""A small fault-injecting HTTP/1.1 proxy on a free loopback port, in front of a store.

    proxy = FaultProxy(upstream_port).start()      # http://127.0.0.1:{proxy.port}
    proxy.set(Mode.DELAY, delay_ms=300)            # every request waits 300 ms first
    proxy.set(Mode.ERROR, share=0.3, status=503)   # 30 % of requests answered 503 by the proxy
    proxy.set(Mode.DROP, share=0.2)                # 20 % of requests: connection closed
    proxy.set(Mode.PASS)
    proxy.close()

It understands HTTP/1.1 framing (Content-Length, chunked bodies, HEAD and 1xx/204/304
answers, `Expect: 100-continue`) so that a decision is made per request on keep-alive
connections, which is what the S3 and Azure SDKs use. A DROP closes the client's connection
either before the request is forwarded or, for half of the dropped requests, after the
upstream answered (the store did the work, the client never hears of it: the retry then
meets its own object, which is the interesting case for create-if-absent).

With `tls=(certfile, keyfile)` the proxy terminates TLS (HTTPS to the client, plain HTTP to
the upstream): HTTPS with a custom CA against servers that only speak HTTP. Every request's
method, path and headers are kept in `requests` (to show which headers reached the store).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"
_MAX_HEAD = 64 * 1024


class Mode(str, Enum):
    PASS = "pass"
    DELAY = "delay"
    ERROR = "error"
    DROP = "drop"


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lowercased


class _Closed(Exception):
    pass


def _read_head(sock: socket.socket, buf: bytearray) -> bytes:
    """Bytes up to and including the blank line ending a request or response head."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[: end + 4])
            del buf[: end + 4]
            return head
        if len(buf) > _MAX_HEAD:
            raise _Closed("head too long")
        data = sock.recv(65536)
        if not data:
            raise _Closed("peer closed")
        buf.extend(data)


def _read_exact(sock: socket.socket, buf: bytearray, size: int) -> bytes:
    while len(buf) < size:
        data = sock.recv(max(65536, size - len(buf)))
        if not data:
            raise _Closed("peer closed in body")
        buf.extend(data)
    out = bytes(buf[:size])
    del buf[:size]
    return out


def _read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while True:
        end = buf.find(b"\r\n")
        if end >= 0:
            line = bytes(buf[: end + 2])
            del buf[: end + 2]
            return line
        data = sock.recv(65536)
        if not data:
            raise _Closed("peer closed in chunk")
        buf.extend(data)


def _parse_headers(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _read_body(sock: socket.socket, buf: bytearray, headers: list[tuple[str, str]]) -> bytes:
    """The framed body (chunked bodies are kept chunked, byte for byte)."""
    if (_header(headers, "transfer-encoding") or "").lower() == "chunked":
        out = bytearray()
        while True:
            line = _read_line(sock, buf)
            out.extend(line)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, up to the blank line
                    trailer = _read_line(sock, buf)
                    out.extend(trailer)
                    if trailer == b"\r\n":
                        return bytes(out)
            out.extend(_read_exact(sock, buf, size + 2))
    length = _header(headers, "content-length")
    return _read_exact(sock, buf, int(length)) if length else b""


class FaultProxy:
    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = HOST,
        tls: tuple[Path, Path] | None = None,
        seed: int = 0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(str(tls[0]), str(tls[1]))
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._mode = Mode.PASS
        self._share = 1.0
        self._delay_s = 0.0
        self._status = 503
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self.requests: list[SeenRequest] = []
        self.injected = 0  # requests that met a fault (delay, error or drop)

    # ------------------------------------------------------------------ control
    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    def set(self, mode: Mode, share: float = 1.0, delay_ms: float = 0.0, status: int = 503) -> None:
        """Switch at runtime; applies to every request that starts from now on."""
        with self._lock:
            self._mode, self._share, self._delay_s, self._status = (
                mode,
                share,
                delay_ms / 1000,
                status,
            )

    def start(self) -> FaultProxy:
        thread = threading.Thread(target=self._accept, name="faultproxy", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() on Linux
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _close(conn)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ serving
    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            thread.start()
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)

    def _decide(self) -> tuple[Mode, float, int]:
        with self._lock:
            mode, share, delay, status = self._mode, self._share, self._delay_s, self._status
            hit = mode is not Mode.PASS and self._rng.random() < share
            if hit:
                self.injected += 1
        return (mode if hit else Mode.PASS), delay, status

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            if self._tls is not None:
                client.settimeout(10)
                client = self._tls.wrap_socket(client, server_side=True)
                client.settimeout(None)
            with self._lock:
                self._conns.add(client)
            cbuf, ubuf = bytearray(), bytearray()
            while not self._closing.is_set():
                head = _read_head(client, cbuf)
                request_line, headers = _parse_headers(head)
                method, _, rest = request_line.partition(" ")
                path = rest.rsplit(" ", 1)[0]
                if (_header(headers, "expect") or "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    headers = [(k, v) for k, v in headers if k.lower() != "expect"]
                body = _read_body(client, cbuf, headers)
                with self._lock:
                    self.requests.append(
                        SeenRequest(method, path, {k.lower(): v for k, v in headers})
                    )
                mode, delay, status = self._decide()
                if mode is Mode.DELAY:
                    time.sleep(delay)
                elif mode is Mode.ERROR:
                    text = b"injected fault"
                    client.sendall(
                        f"HTTP/1.1 {status} Injected\r\nContent-Type: text/plain\r\n"
                        f"Content-Length: {len(text)}\r\n\r\n".encode()
                        + text
                    )
                    continue
                elif mode is Mode.DROP and self._rng.random() < 0.5:
                    return  # dropped before the store saw it
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=60)
                    ubuf = bytearray()
                out_head = (
                    request_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
                ).encode("latin-1")
                upstream.sendall(out_head + body)
                while True:  # skip the upstream's own interim answers
                    rhead = _read_head(upstream, ubuf)
                    status_line, rheaders = _parse_headers(rhead)
                    code = int(status_line.split(" ")[1])
                    if code >= 200 or code == 101:
                        break
                if method == "HEAD" or code in (204, 304):
                    rbody = b""
                elif (
                    _header(rheaders, "content-length") is None
                    and (_header(rheaders, "transfer-encoding") or "").lower() != "chunked"
                ):
                    rbody = _read_to_close(upstream, ubuf)  # body ends with the connection
                    _close(upstream)
                    upstream = None
                else:
                    rbody = _read_body(upstream, ubuf, rheaders)
                if mode is Mode.DROP:
                    return  # the store did it; the client never hears of it
                client.sendall(rhead + rbody)
                if (_header(rheaders, "connection") or "").lower() == "close":
                    return
        except (_Closed, OSError, ValueError, IndexError):
            return
        finally:
            with self._lock:
                self._conns.discard(client)
            _close(client)
            if upstream is not None:
                _close(upstream)


def _read_to_close(sock: socket.socket, buf: bytearray) -> bytes:
    while True:
        data = sock.recv(65536)
        if not data:
            out = bytes(buf)
            buf.clear()
            return out
        buf.extend(data)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# ---------------------------------------------------------------------- a test CA
def make_ca(directory: Path, host: str = HOST) -> tuple[Path, Path, Path]:
    """A fresh CA and a server certificate for `host` signed by it:
    (ca.pem, server.pem, server.key). Uses the `cryptography` package."""

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "replicator test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
    )
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path
