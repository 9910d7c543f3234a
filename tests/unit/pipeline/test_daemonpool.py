"""The pool the service's store calls run on: results in order, cancellation, and a call
that never returns does not hold the process's exit."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from replicator.pipeline.daemonpool import DaemonPool


def test_results_and_exceptions_come_back() -> None:
    pool = DaemonPool(3, "t")
    futures = [pool.submit(pow, 2, n) for n in range(20)]
    assert [f.result(timeout=10) for f in futures] == [2**n for n in range(20)]
    failing = pool.submit(int, "x")
    with pytest.raises(ValueError):
        failing.result(timeout=10)
    pool.shutdown(wait=True)
    assert pool.running == 0
    with pytest.raises(RuntimeError):
        pool.submit(int, "1")


def test_shutdown_cancels_what_has_not_started_and_leaves_a_stuck_call() -> None:
    pool = DaemonPool(1, "t")
    release = threading.Event()
    started = threading.Event()

    def stuck() -> str:
        started.set()
        release.wait()
        return "done"

    first = pool.submit(stuck)
    queued = [pool.submit(int, "1") for _ in range(5)]
    assert started.wait(10)
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    assert not first.done()
    release.set()
    assert first.result(timeout=10) == "done"


def test_a_call_that_never_returns_does_not_hold_the_exit() -> None:
    # The same program with the standard ThreadPoolExecutor never exits: its threads are
    # joined at interpreter exit, even after shutdown(wait=False).
    program = (
        "import threading\n"
        "from replicator.pipeline.daemonpool import DaemonPool\n"
        "pool = DaemonPool(2, 'u')\n"
        "started = threading.Event()\n"
        "pool.submit(lambda: (started.set(), threading.Event().wait()))\n"
        "assert started.wait(10)\n"
        "pool.shutdown(wait=False, cancel_futures=True)\n"
        "print('exiting')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], timeout=60, check=False, capture_output=True
    )
    assert (done.returncode, done.stdout) == (0, b"exiting\n"), done.stderr
