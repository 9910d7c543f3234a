"""Run `replicator run` as a real process, as Kubernetes would, and watch its durable progress."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from pydantic import SecretStr

from replicator.config import Settings
from replicator.devtools.stack import LocalStack
from replicator.model import TP


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes `replicator run` load exactly these settings."""
    env: dict[str, str] = {}
    for name, value in settings:
        if value is None:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, list):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            text = json.dumps(value)
        else:
            text = str(value)
        env[f"REPLICATOR_{name.upper()}"] = text
    return env


class Service:
    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        name: str = "replica",
        source: Path | None = None,
        **overrides: Any,
    ) -> None:
        """`source`: run the `replicator` package of that checkout (a benchmark's "before")
        instead of this one: the process starts in that folder, which `-m` puts first."""
        self.settings = settings.model_copy(update=overrides) if overrides else settings
        self.source = source
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # Variables beside the settings (e.g. REPLICATOR_KAFKA_PROPERTY_*), set before start().
        self.extra_env: dict[str, str] = {}

    def start(self) -> Service:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
        env.update(settings_env(self.settings))
        env["REPLICATOR_LOG_FORMAT"] = "json"
        env.update(self.extra_env)
        self.starts += 1
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the handle
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "replicator", "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.source,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the process is frozen (as by a long scheduling stall) until `resume`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Progress:
    """Reads a store's committed offsets from Kafka, as any lag tool would."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )

    def committed(self, tps: list[TP]) -> dict[TP, int]:
        got = self.consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
        return {(tp.topic, tp.partition): tp.offset for tp in got}

    def close(self) -> None:
        self.consumer.close()


def wait_committed(
    bootstrap: str,
    groups: list[str],
    ends: dict[TP, int],
    timeout: float,
    services: list[Service] | None = None,
    poll_s: float = 0.3,
) -> None:
    """Wait until every group has committed `ends` for every partition (each look: one
    committed-offsets request per group, every `poll_s`)."""
    readers = [Progress(bootstrap, g) for g in groups]
    deadline = time.monotonic() + timeout
    try:
        while True:
            behind = {}
            for g, r in zip(groups, readers, strict=True):
                got = r.committed(list(ends))
                for tp, end in ends.items():
                    if got.get(tp, -1) < end:
                        behind[(g, tp)] = (got.get(tp), end)
            if not behind:
                return
            for s in services or []:
                if (
                    s.proc is not None
                    and s.proc.poll() is not None
                    and s.proc.returncode not in (0, -9, -15)
                ):
                    raise AssertionError(
                        f"service exited with {s.proc.returncode}:\n{s.log_text()[-3000:]}"
                    )
            if time.monotonic() > deadline:
                tails = "\n".join(s.log_text()[-3000:] for s in services or [])
                raise AssertionError(
                    f"not caught up after {timeout}s: {sorted(behind.items())[:6]}\n{tails}"
                )
            time.sleep(poll_s)
    finally:
        for r in readers:
            r.close()


@contextlib.contextmanager
def frozen(stack: LocalStack, server: str) -> Iterator[None]:
    """A stack server stopped with SIGSTOP (its whole process group) for the block: its port
    still accepts connections (the kernel completes them) and nothing ever answers. SIGCONT
    at the end, whatever happens, so the session's stack stays usable."""
    pid = stack.pid(server)
    assert pid is not None, f"{server} is not running"
    os.killpg(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(pid, signal.SIGCONT)
