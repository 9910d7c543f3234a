"""A SASL-terminating Kafka proxy on a free loopback port: it authenticates each client with
real SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), then copies every other frame byte for byte
to and from an upstream broker.

Tansu 0.6.0 cannot authenticate anyone: with `--authentication`, `tansu user create` is
refused, a PLAIN handshake closes the connection and SCRAM answers "unknown-user". Kafka SASL
is shown with this proxy in front of the broker, the broker advertising the proxy's address
(as tests/support/tlstunnel.py does for TLS): the client (librdkafka) runs its real SASL
exchange, and a wrong password is refused with SASL_AUTHENTICATION_FAILED.

    with SaslProxy(upstream_port, {"user": "password"}) as proxy:  # 127.0.0.1:{proxy.port}
        ...

What it speaks (Kafka protocol, the message definitions of Apache Kafka's
clients/src/main/resources/common/message/):

- Every frame is an int32 size and a payload. A request payload starts with api_key int16,
  api_version int16, correlation_id int32, client_id (int16-length nullable string), plus
  tagged fields in flexible header versions; a response payload starts with the
  correlation_id (plus tagged fields for flexible responses other than ApiVersions).
- Before authentication only ApiVersions (18), SaslHandshake (17) and SaslAuthenticate (36)
  are accepted; anything else closes the connection, so a client without SASL fails.
- ApiVersions is forwarded to the broker and its answer rewritten so that it advertises what
  this proxy implements: SaslHandshake v1 only (v0 would mean raw SASL tokens outside Kafka
  frames) and SaslAuthenticate v0-v1 (v2 is flexible and not implemented). librdkafka sends
  SaslHandshake at the highest common version and SaslAuthenticate at v0.
- SaslHandshake v1: request mechanism (string); response error_code int16 and the enabled
  mechanisms (array of strings). An unknown mechanism: UNSUPPORTED_SASL_MECHANISM (33), close.
- SaslAuthenticate v0/v1: request auth_bytes (int32-length bytes); response error_code int16,
  error_message (nullable string), auth_bytes, and from v1 session_lifetime_ms int64 (0: no
  re-authentication). Wrong credentials: SASL_AUTHENTICATION_FAILED (58) with a message that
  names no credential, then close.
- PLAIN (RFC 4616): `authzid NUL authcid NUL password`.
- SCRAM-SHA-256/512 (RFC 5802, RFC 7677, KIP-84): the proxy keeps salted credentials only
  (salt, iterations, StoredKey, ServerKey), never the password; it checks the client's nonce,
  channel binding (none) and ClientProof, and sends the ServerSignature for the client to
  check in turn.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass

from tests.support.loopback import HOST, LoopbackServer, close_socket, pump

API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
# The versions this proxy implements and advertises in place of the broker's.
ADVERTISED: dict[int, tuple[int, int]] = {SASL_HANDSHAKE: (1, 1), SASL_AUTHENTICATE: (0, 1)}

UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
SCRAM_ITERATIONS = 4096  # Kafka's minimum for SCRAM credentials
MAX_FRAME = 100 * 1024 * 1024


class AuthenticationFailed(Exception):
    """Wrong credentials or a malformed SASL message; the text goes back to the client."""


class _Closed(Exception):
    """The peer closed, or sent something this proxy does not accept: drop the connection."""


# --- Kafka primitives ------------------------------------------------------------------


class _Reader:
    """Cursor over a byte string, Kafka primitives."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.offset = offset

    def take(self, n: int) -> bytes:
        if n < 0 or self.offset + n > len(self.data):
            raise _Closed("truncated message")
        out = self.data[self.offset : self.offset + n]
        self.offset += n
        return out

    def int16(self) -> int:
        value: int = struct.unpack(">h", self.take(2))[0]
        return value

    def int32(self) -> int:
        value: int = struct.unpack(">i", self.take(4))[0]
        return value

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise _Closed("varint too long")

    def nullable_string(self) -> str | None:
        n = self.int16()
        return None if n < 0 else self.take(n).decode()

    def bytes32(self) -> bytes:
        n = self.int32()
        return b"" if n < 0 else self.take(n)

    def tagged_fields(self) -> bytes:
        """Skip a tagged-field section; returns its raw bytes."""
        start = self.offset
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.take(self.uvarint())
        return self.data[start : self.offset]

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.offset)


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _nullable_string(value: str | None) -> bytes:
    return struct.pack(">h", -1) if value is None else _string(value)


def _bytes32(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


@dataclass(frozen=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body_offset: int  # where the body starts, for non-flexible (v1) request headers


def parse_request_header(payload: bytes) -> RequestHeader:
    r = _Reader(payload)
    api_key, api_version, correlation_id = r.int16(), r.int16(), r.int32()
    client_id = r.nullable_string()
    return RequestHeader(api_key, api_version, correlation_id, client_id, r.offset)


def rewrite_api_versions(
    payload: bytes, version: int, advertised: dict[int, tuple[int, int]]
) -> tuple[bytes, dict[int, tuple[int, int]]]:
    """An ApiVersions response payload (correlation id first) with the `advertised` ranges
    put in place of the broker's; returns it and the broker's own ranges for those keys.

    v0: error_code, api_keys as an int32-counted array of (api_key, min, max); v1-v2 add
    throttle_time_ms; v3+ (flexible body, but the response header is never flexible):
    api_keys is a compact array whose entries end with tagged fields, then throttle_time_ms
    and the body's tagged fields. A failed answer (UNSUPPORTED_VERSION comes back in the v0
    shape) is returned as it is.
    """
    r = _Reader(payload)
    correlation = r.take(4)
    error_code = r.int16()
    if error_code != 0:
        return payload, {}
    flexible = version >= 3
    count = r.uvarint() - 1 if flexible else r.int32()
    entries: dict[int, tuple[int, int, bytes]] = {}
    for _ in range(count):
        key, low, high = r.int16(), r.int16(), r.int16()
        tags = r.tagged_fields() if flexible else b""
        entries[key] = (low, high, tags)
    tail = r.rest()  # throttle_time_ms (v1+) and the body's tagged fields (v3+)
    broker = {k: (entries[k][0], entries[k][1]) for k in advertised if k in entries}
    for key, (low, high) in advertised.items():
        entries[key] = (low, high, b"\x00" if flexible else b"")
    out = bytearray(correlation + struct.pack(">h", 0))
    out += _uvarint(len(entries) + 1) if flexible else struct.pack(">i", len(entries))
    for key in sorted(entries):
        low, high, tags = entries[key]
        out += struct.pack(">hhh", key, low, high) + tags
    out += tail
    return bytes(out), broker


# --- SASL mechanisms -------------------------------------------------------------------


@dataclass(frozen=True)
class ScramCredential:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def make(
        cls, hash_name: str, password: str, iterations: int = SCRAM_ITERATIONS
    ) -> ScramCredential:
        salt = os.urandom(16)
        salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", hash_name)
        return cls(
            salt=salt,
            iterations=iterations,
            stored_key=hashlib.new(hash_name, client_key).digest(),
            server_key=hmac.digest(salted, b"Server Key", hash_name),
        )


class _Plain:
    def __init__(self, users: dict[str, bytes]) -> None:
        self._users = users  # name -> sha256(password)
        self.done = False
        self.username: str | None = None

    def step(self, message: bytes) -> bytes:
        parts = message.split(b"\x00")
        if len(parts) != 3:
            raise AuthenticationFailed("Invalid SASL/PLAIN request: expected 3 tokens")
        authzid, user, password = (p.decode(errors="replace") for p in parts)
        known = self._users.get(user)
        given = hashlib.sha256(password.encode()).digest()
        if known is None or not hmac.compare_digest(known, given) or authzid not in ("", user):
            raise AuthenticationFailed("Authentication failed: Invalid username or password")
        self.done, self.username = True, user
        return b""


def _saslname(value: str) -> str:
    return value.replace("=2C", ",").replace("=3D", "=")


def _attributes(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise AuthenticationFailed("Invalid SCRAM message")
        out.setdefault(part[0], part[2:])
    return out


class _Scram:
    def __init__(self, mechanism: str, users: dict[str, ScramCredential]) -> None:
        self.mechanism = mechanism
        self._hash = SCRAM_HASHES[mechanism]
        self._users = users
        self._state = "first"
        self._credential: ScramCredential | None = None
        self._username = self._gs2_header = self._nonce = ""
        self._client_first_bare = self._server_first = ""
        self.done = False
        self.username: str | None = None

    def _failed(self) -> AuthenticationFailed:
        return AuthenticationFailed(
            "Authentication failed during authentication due to invalid credentials "
            f"with SASL mechanism {self.mechanism}"
        )

    def step(self, message: bytes) -> bytes:
        text = message.decode(errors="replace")
        if self._state == "first":
            return self._first(text)
        if self._state == "final":
            return self._final(text)
        raise AuthenticationFailed("Unexpected SCRAM message")

    def _first(self, text: str) -> bytes:
        # gs2-header: cbind-flag "," [authzid] ","; "p=" (channel binding) is not offered.
        flag, _, rest = text.partition(",")
        authzid, _, bare = rest.partition(",")
        if flag not in ("n", "y") or not bare:
            raise AuthenticationFailed("Invalid SCRAM client-first message")
        attrs = _attributes(bare)
        user, nonce = _saslname(attrs.get("n", "")), attrs.get("r", "")
        if not nonce or (authzid and _saslname(authzid.removeprefix("a=")) != user):
            raise AuthenticationFailed("Invalid SCRAM client-first message")
        credential = self._users.get(user)
        if credential is None:
            raise self._failed()
        self._credential, self._username = credential, user
        self._gs2_header = f"{flag},{authzid},"
        self._nonce = nonce + secrets.token_urlsafe(18)
        self._client_first_bare = bare
        self._server_first = (
            f"r={self._nonce},s={base64.b64encode(credential.salt).decode()},"
            f"i={credential.iterations}"
        )
        self._state = "final"
        return self._server_first.encode()

    def _final(self, text: str) -> bytes:
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise AuthenticationFailed("Invalid SCRAM client-final message")
        attrs = _attributes(without_proof)
        if attrs.get("c") != base64.b64encode(self._gs2_header.encode()).decode():
            raise AuthenticationFailed("Invalid SCRAM channel binding")
        if attrs.get("r") != self._nonce:
            raise AuthenticationFailed("Invalid SCRAM nonce")
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise AuthenticationFailed("Invalid SCRAM client proof") from None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        credential = self._credential
        assert credential is not None
        signature = hmac.digest(credential.stored_key, auth_message, self._hash)
        if len(proof) != len(signature):
            raise self._failed()
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(
            hashlib.new(self._hash, client_key).digest(), credential.stored_key
        ):
            raise self._failed()
        server_signature = hmac.digest(credential.server_key, auth_message, self._hash)
        self._state = "done"
        self.done, self.username = True, self._username
        return b"v=" + base64.b64encode(server_signature)


# --- The proxy -------------------------------------------------------------------------


class _Frames:
    """Whole Kafka frames from a socket, keeping what was read past the last frame."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def _fill(self, n: int) -> None:
        while len(self.buffer) < n:
            data = self.sock.recv(65536)
            if not data:
                raise _Closed("peer closed")
            self.buffer += data

    def read(self) -> bytes:
        self._fill(4)
        (size,) = struct.unpack(">i", self.buffer[:4])
        if size < 0 or size > MAX_FRAME:
            raise _Closed(f"bad frame size {size}")
        self._fill(4 + size)
        payload = bytes(self.buffer[4 : 4 + size])
        del self.buffer[: 4 + size]
        return payload


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">i", len(payload)) + payload)


class SaslProxy(LoopbackServer):
    name = "sasl-proxy"

    def __init__(
        self,
        upstream_port: int,
        users: dict[str, str],
        mechanisms: tuple[str, ...] = MECHANISMS,
        listener: socket.socket | None = None,
    ) -> None:
        self.upstream = (HOST, upstream_port)
        self.mechanisms = mechanisms
        # Credentials as a broker keeps them: a digest for PLAIN, salted keys for SCRAM.
        self._plain = {u: hashlib.sha256(p.encode()).digest() for u, p in users.items()}
        self._scram = {
            m: {u: ScramCredential.make(h, p) for u, p in users.items()}
            for m, h in SCRAM_HASHES.items()
            if m in mechanisms
        }
        super().__init__(listener)
        # What happened, for tests to assert on (guarded by _lock).
        self.authenticated: Counter[str] = Counter()  # mechanism -> successful logins
        self.failed: Counter[str] = Counter()  # mechanism -> refused credentials
        self.refused_before_auth: Counter[int] = Counter()  # api key -> connections closed
        self.broker_versions: dict[int, tuple[int, int]] = {}  # the broker's own 17 and 36
        self.api_versions_requests: Counter[int] = Counter()  # ApiVersions request versions

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            close_socket(client)
            return
        upstream.settimeout(None)
        self._track(upstream)
        frames = _Frames(client)
        try:
            self._authenticate(client, frames, upstream)
            # Whatever the client sent past its last SASL frame goes first.
            if frames.buffer:
                upstream.sendall(bytes(frames.buffer))
        except (_Closed, OSError):
            close_socket(client)
            close_socket(upstream)
            return
        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join(timeout=5)

    def _authenticate(
        self, client: socket.socket, frames: _Frames, upstream: socket.socket
    ) -> None:
        """The pre-authentication exchange; returns once the client is authenticated."""
        from_upstream = _Frames(upstream)
        mechanism: _Plain | _Scram | None = None
        mechanism_name = ""
        while True:
            payload = frames.read()
            header = parse_request_header(payload)
            if header.api_key == API_VERSIONS:
                with self._lock:
                    self.api_versions_requests[header.api_version] += 1
                _send(upstream, payload)
                answer, broker = rewrite_api_versions(
                    from_upstream.read(), header.api_version, ADVERTISED
                )
                if broker:
                    with self._lock:
                        self.broker_versions = broker
                _send(client, answer)
            elif header.api_key == SASL_HANDSHAKE and header.api_version == 1 and mechanism is None:
                mechanism_name = _Reader(payload, header.body_offset).nullable_string() or ""
                enabled = b"".join(_string(m) for m in self.mechanisms)
                enabled = struct.pack(">i", len(self.mechanisms)) + enabled
                if mechanism_name not in self.mechanisms:
                    code = struct.pack(">h", UNSUPPORTED_SASL_MECHANISM)
                    _send(client, struct.pack(">i", header.correlation_id) + code + enabled)
                    raise _Closed(f"unsupported mechanism {mechanism_name!r}")
                if mechanism_name == "PLAIN":
                    mechanism = _Plain(self._plain)
                else:
                    mechanism = _Scram(mechanism_name, self._scram[mechanism_name])
                _send(client, struct.pack(">ih", header.correlation_id, 0) + enabled)
            elif (
                header.api_key == SASL_AUTHENTICATE
                and header.api_version in (0, 1)
                and mechanism is not None
            ):
                token = _Reader(payload, header.body_offset).bytes32()
                try:
                    reply = mechanism.step(token)
                except AuthenticationFailed as exc:
                    with self._lock:
                        self.failed[mechanism_name] += 1
                    _send(
                        client,
                        _authenticate_response(header, SASL_AUTHENTICATION_FAILED, str(exc), b""),
                    )
                    raise _Closed("authentication failed") from None
                _send(client, _authenticate_response(header, 0, None, reply))
                if mechanism.done:
                    with self._lock:
                        self.authenticated[mechanism_name] += 1
                    return
            else:
                with self._lock:
                    self.refused_before_auth[header.api_key] += 1
                raise _Closed(f"api key {header.api_key} v{header.api_version} before SASL")


def _authenticate_response(
    header: RequestHeader, error_code: int, message: str | None, auth_bytes: bytes
) -> bytes:
    out = struct.pack(">ih", header.correlation_id, error_code)
    out += _nullable_string(message) + _bytes32(auth_bytes)
    if header.api_version >= 1:
        out += struct.pack(">q", 0)  # session_lifetime_ms: no re-authentication required
    return out
