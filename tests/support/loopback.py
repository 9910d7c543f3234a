"""A threaded TCP server on a loopback port, the base of the tunnels and proxies the tests
put in front of a real server (TLS tunnel, SASL proxy): accept, one thread per connection,
and a close that ends every connection it made."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self

HOST = "127.0.0.1"


class LoopbackServer:
    """Subclasses implement `_serve(sock)` for each accepted connection and `_track` every
    socket they open, so `close` can end them."""

    name = "loopback"

    def __init__(self, listener: socket.socket | None = None) -> None:
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

    def start(self) -> Self:
        thread = threading.Thread(target=self._accept, name=f"{self.name}-accept", daemon=True)
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
            close_socket(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _serve(self, sock: socket.socket) -> None:
        raise NotImplementedError


def close_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy bytes from `src` to `dst` until either side ends, then close both."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        close_socket(src)
        close_socket(dst)
