"""A TLS-terminating TCP tunnel on a free loopback port: TLS to the client (certificate from a
test CA), plain TCP to an upstream port, bytes copied both ways.

Tansu 0.6.0 has `--cert` and `--key` options, but its command line refuses them together
("the argument '--cert <CERT>' cannot be used with '--key <KEY>'") and either alone leaves
the listener in plain TCP, so the broker cannot serve TLS itself. Kafka over TLS is shown
with this tunnel in front of the broker, the broker advertising the tunnel's address: the
client (librdkafka) does the real TLS handshake and certificate check against the CA.

    with TlsTunnel(upstream_port, cert, key) as tunnel:  # 127.0.0.1:{tunnel.port}
        ...
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

HOST = "127.0.0.1"


class TlsTunnel:
    def __init__(
        self, upstream_port: int, cert: Path, key: Path, listener: socket.socket | None = None
    ) -> None:
        self.upstream = (HOST, upstream_port)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(str(cert), str(key))
        if listener is None:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, 0))
        self._listener = listener
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.handshake_failures = 0
        self.connections = 0

    def start(self) -> TlsTunnel:
        thread = threading.Thread(target=self._accept, name="tls-tunnel-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks = list(self._sockets)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> TlsTunnel:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _serve(self, raw: socket.socket) -> None:
        self._track(raw)
        raw.settimeout(10)
        try:
            client = self._context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            self.handshake_failures += 1
            with contextlib.suppress(OSError):
                raw.close()
            return
        client.settimeout(None)
        self._track(client)
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            with contextlib.suppress(OSError):
                client.close()
            return
        upstream.settimeout(None)
        self._track(upstream)
        self.connections += 1
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join(timeout=5)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
