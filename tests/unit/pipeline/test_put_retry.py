"""A put's retries (tenacity): transient errors retried within write_retry_s, anything else
or an abort raised at once, every failure counted."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from replicator.container import EncodedChunk
from replicator.errors import StoreError, StoreErrorKind
from replicator.pipeline.lanes import Lanes, put_backoff
from replicator.pipeline.state import ChunkJob
from replicator.stores.base import ObjectInfo, PutOutcome
from replicator.telemetry.metrics import Metrics


def test_backoff_doubles_from_a_tenth_of_a_second_to_five() -> None:
    assert [put_backoff(n) for n in range(1, 9)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


@dataclass
class FlakyStore:
    failures: list[StoreErrorKind]
    calls: int = 0
    name: str = "s3"
    seen: list[str] = field(default_factory=list)

    def create_if_absent(
        self, key: str, data: bytes, md5: bytes, metadata: Mapping[str, str]
    ) -> PutOutcome:
        self.calls += 1
        self.seen.append(key)
        if self.failures:
            raise StoreError("s3", self.failures.pop(0), f"put {key}: failed")
        return PutOutcome.CREATED

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        return iter(())


class Lane:
    def __init__(self, store: FlakyStore) -> None:
        self.store = store
        self.name = store.name


def lanes(
    write_retry_s: float, abort: bool = False, stop_deadline: float | None = None
) -> tuple[Lanes, Metrics]:
    metrics = Metrics(stores=["s3"])
    obj: Any = Lanes.__new__(Lanes)
    obj.state = SimpleNamespace(stop_deadline=stop_deadline)
    obj.settings = type("S", (), {"write_retry_s": write_retry_s})()
    obj.metrics = metrics
    obj._abort = threading.Event()
    if abort:
        obj._abort.set()
    return obj, metrics


def job() -> ChunkJob:
    future: Future[EncodedChunk] = Future()
    encoded: Any = SimpleNamespace(key="t/00000/k.avro", data=b"x", md5=b"m" * 16, metadata={})
    future.set_result(encoded)
    return ChunkJob("t", 0, 0, 0, 1, 1, future)


def errors(metrics: Metrics, kind: str) -> float:
    value = metrics.registry.get_sample_value(
        "replicator_store_errors_total", {"store": "s3", "kind": kind}
    )
    return value or 0.0


@pytest.mark.parametrize("n", [1, 2, 3])
def test_transient_errors_are_retried_until_the_put_succeeds(n: int) -> None:
    store = FlakyStore([StoreErrorKind.UNAVAILABLE] * n)
    obj, metrics = lanes(write_retry_s=30.0)
    assert obj.put(Lane(store), job()) is PutOutcome.CREATED  # type: ignore[arg-type]
    assert store.calls == n + 1
    assert errors(metrics, "unavailable") == n


def test_a_permanent_error_is_raised_at_once() -> None:
    store = FlakyStore([StoreErrorKind.AUTH, StoreErrorKind.UNAVAILABLE])
    obj, metrics = lanes(write_retry_s=30.0)
    with pytest.raises(StoreError) as caught:
        obj.put(Lane(store), job())  # type: ignore[arg-type]
    assert caught.value.kind is StoreErrorKind.AUTH
    assert store.calls == 1 and errors(metrics, "auth") == 1


def test_no_retry_past_the_deadline_or_while_aborting_or_past_the_shutdown() -> None:
    for obj, _ in (
        lanes(write_retry_s=0.0),
        lanes(write_retry_s=30.0, abort=True),
        lanes(write_retry_s=30.0, stop_deadline=0.0),  # the shutdown's deadline has passed
    ):
        store = FlakyStore([StoreErrorKind.UNAVAILABLE] * 5)
        with pytest.raises(StoreError) as caught:
            obj.put(Lane(store), job())  # type: ignore[arg-type]
        assert caught.value.kind is StoreErrorKind.UNAVAILABLE
        assert store.calls == 1
