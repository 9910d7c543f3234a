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

from tests.support.loopback import HOST, LoopbackServer, pump


class TlsTunnel(LoopbackServer):
    name = "tls-tunnel"

    def __init__(
        self, upstream_port: int, cert: Path, key: Path, listener: socket.socket | None = None
    ) -> None:
        self.upstream = (HOST, upstream_port)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(str(cert), str(key))
        super().__init__(listener)
        self.handshake_failures = 0
        self.connections = 0

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
        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join(timeout=5)
