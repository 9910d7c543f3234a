"""How far a long command is, on standard error: a rich progress bar on a terminal, a plain
line every few seconds otherwise (a pod's log, CI, a pipe), and one last line at the end.

Every long command (verify, repair, replay, produce, status's dead-letter read) uses this one
helper; the tools below the command line only see the `ops.context.Progress` protocol
(`start`, `advance`, `count`). Standard output stays for the report (`--json`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress

# Seconds between two progress lines when standard error is not a terminal.
LOG_INTERVAL_S = 5.0


def progress_line(
    label: str,
    unit: str,
    done: int,
    total: int | None,
    counts: dict[str, int],
    elapsed_s: float,
) -> str:
    """One progress line: `verify: 3/6 partitions (50%), 1,234 objects listed, 12 s`."""
    if total:
        head = f"{label}: {done:,}/{total:,} {unit} ({100 * done // total}%)"
    else:
        head = f"{label}: {done:,} {unit}"
    tail = "".join(f", {n:,} {what}" for what, n in counts.items())
    return f"{head}{tail}, {elapsed_s:.0f} s"


class CliProgress:
    """The `ops.context.Progress` of the command line (thread-safe: verify counts from its
    pool). Use as a context manager; `tty=None` asks the stream."""

    def __init__(
        self,
        label: str,
        unit: str,
        stream: TextIO | None = None,
        tty: bool | None = None,
        interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.unit = unit
        self.total: int | None = None
        self.done = 0
        self.counts: dict[str, int] = {}
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    # ------------------------------------------------------------------ Progress
    def start(self, total: int | None) -> None:
        with self._lock:
            self.total = total
        self._refresh()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
        self._refresh()

    def set_done(self, done: int, total: int | None = None) -> None:
        """Absolute form (a callback that reports `done so far`)."""
        with self._lock:
            self.done = done
            if total is not None:
                self.total = total
        self._refresh()

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + n
        if self._bar is not None:
            self._refresh()

    # ------------------------------------------------------------------ display
    def line(self) -> str:
        with self._lock:
            done, total, counts = self.done, self.total, dict(self.counts)
        return progress_line(
            self.label, self.unit, done, total, counts, self._clock() - self._started
        )

    def __enter__(self) -> CliProgress:
        if self._tty:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}{task.fields[counts]}"),
                TimeElapsedColumn(),
                console=Console(file=self._stream),
            )
            self._task = self._bar.add_task(self.label, total=None, unit=self.unit, counts="")
            self._bar.start()
        else:
            self._thread = threading.Thread(target=self._log_lines, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._bar is not None:
            self._refresh()
            self._bar.stop()
            self._bar = None
        if self._thread is not None:
            self._thread.join()
            self._write(self.line())

    def _refresh(self) -> None:
        bar, task = self._bar, self._task
        if bar is None or task is None:
            return
        with self._lock:
            done, total, counts = self.done, self.total, dict(self.counts)
        tail = "".join(f", {n:,} {what}" for what, n in counts.items())
        bar.update(task, completed=done, total=total, counts=tail)

    def _log_lines(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._write(self.line())

    def _write(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()
