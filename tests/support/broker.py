"""A Kafka broker (Tansu) of a test's own, for tests that put something in front of it
(a TLS tunnel, a SASL proxy) or stop and start it without touching the session's broker."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from replicator.devtools.stack import tansu_binary

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def own_tansu(log: Path, listen_port: int, advertised_port: int) -> Iterator[None]:
    """A broker of its own listening on `listen_port` and advertising `advertised_port` (the
    tunnel or proxy in front of it), so metadata sends clients back through that front."""
    env = {k: v for k, v in os.environ.items() if k not in ("LISTENER_URL", "CLUSTER_ID")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                f"tcp://{HOST}:{listen_port}",
                "--advertised-listener-url",
                f"tcp://{HOST}:{advertised_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((HOST, listen_port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "tansu did not start"
                time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
