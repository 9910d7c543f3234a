"""A thread pool whose threads never hold the process's exit.

`concurrent.futures.ThreadPoolExecutor` joins its threads when the interpreter exits, even
after `shutdown(wait=False)`: a put stuck on a store that accepts connections and never
answers then holds the exit for as long as the SDK's timeouts and retries last (measured:
20 s past the shutdown bound). The service's store calls (puts, probes, listings, copies) run
on this pool instead: its threads are daemon threads, so once the shutdown has waited as long
as it promised, the process exits and abandons what still runs. Nothing is lost by that: a
store's progress only moves after the store holds the object (docs/guarantees.md).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonPool(Executor):
    """Up to `max_workers` daemon threads, started as work arrives, taking work in order."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max = max_workers
        self._prefix = thread_name_prefix
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a pool that was shut down")
            self._queue.put((future, fn, args, kwargs))
            if self._idle == 0 and len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._work, name=f"{self._prefix}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._idle = max(self._idle - 1, 0)
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                del future, fn, args, kwargs, item  # drop references before waiting again
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more work; with `cancel_futures`, what has not started is cancelled. With
        `wait`, waits for the threads to end; without, returns at once and threads still in
        a call end with it, or with the process."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            threads = list(self._threads)
            for _ in threads:
                self._queue.put(None)
        if wait:
            for thread in threads:
                thread.join()

    @property
    def running(self) -> int:
        """Threads alive (busy or idle)."""
        return sum(1 for t in self._threads if t.is_alive())
