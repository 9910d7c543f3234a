"""The composition root: settings -> clients -> the service, and what runs beside it.

`replicator run` calls `run_service` once its settings are loaded and its logging is set
up; everything the service needs is built here and handed down, so no stage below reads
the environment or builds a client of its own.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
)

from replicator.config import Settings
from replicator.errors import ConfigError, ReplicatorError
from replicator.judge.registry import initial_registry
from replicator.logs import fields
from replicator.pipeline.service import Replicator
from replicator.stores.factory import build_stores
from replicator.stores.retirement import retired_stores
from replicator.telemetry.lag import LagMonitor
from replicator.telemetry.metrics import Metrics
from replicator.telemetry.server import OPENING_STORES, WAITING_FOR_BROKER, Probes, start_http

log = logging.getLogger("replicator")


def wait_for_broker(
    settings: Settings,
    stop_after: float | None = None,
    waiting: Callable[[str], None] | None = None,
) -> AdminClient:
    """Retry until the broker answers (waits of 1, 2, 4 ... 30 s; for ever, or until
    `stop_after` seconds have passed); report every attempt (in the log, and to `waiting`
    with the error)."""
    admin = AdminClient(settings.kafka_common())

    def report(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        error = str(exc.args[0]) if exc is not None and exc.args else str(exc)
        if waiting is not None:
            waiting(error)
        log.warning(
            "waiting_for_broker",
            extra=fields(
                bootstrap=settings.kafka_bootstrap,
                retry_in_s=state.upcoming_sleep,
                error=error,
            ),
        )

    retrying = Retrying(
        retry=retry_if_exception_type(KafkaException),
        wait=wait_exponential(multiplier=1.0, min=1.0, max=30.0),
        stop=stop_never if stop_after is None else stop_after_delay(stop_after),
        before_sleep=report,
        reraise=True,
    )
    try:
        metadata = retrying(admin.list_topics, timeout=5)
    except KafkaException as exc:
        raise ReplicatorError(
            f"Kafka at {settings.kafka_bootstrap} did not answer: {exc.args[0]}"
        ) from None
    missing = [
        t for t in [*settings.topics, settings.dead_letter_topic] if t not in metadata.topics
    ]
    if missing:
        raise ConfigError(
            "topic(s) not found on the broker: "
            + ", ".join(missing)
            + " (create them, or fix REPLICATOR_TOPICS / REPLICATOR_DEAD_LETTER_TOPIC)"
        )
    return admin


# Generation-0 threshold of the service's garbage collector (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Tune the cyclic garbage collector for a process that holds hundreds of thousands of
    records in flight: freeze what startup made (modules, schemas, clients: never garbage),
    and collect the young generation every 50,000 allocations instead of every 700. With
    the defaults, collections took about 10% of the main thread and full ones walked every
    record held in the chunkers (docs/performance.md). Almost nothing the loop makes is in a
    reference cycle, so reference counting frees it; the collector still runs, less often."""
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def run_service(settings: Settings) -> None:
    """Build the service from `settings` and run it until a signal stops it. Raises
    ConfigError for a bad setting found on the way (exit 2), ReplicatorError otherwise.

    /metrics, /healthz and /readyz answer from the first second: the HTTP server starts
    before anything waits, and /readyz names the phase the start-up is in (waiting for the
    broker, opening the stores) until the service runs."""
    metrics = Metrics(topics=settings.topics)  # the stores' series once retirement is known
    probes = Probes(metrics)
    server = start_http(settings.metrics_host, settings.metrics_port, probes)
    try:
        _start_and_run(settings, metrics, probes)
    finally:
        server.shutdown()
        server.server_close()


def _start_and_run(settings: Settings, metrics: Metrics, probes: Probes) -> None:
    registry = initial_registry(settings)
    log.info("configuration", extra=fields(**settings.printable()))
    probes.starting(WAITING_FOR_BROKER, f"waiting for Kafka at {settings.kafka_bootstrap}")
    wait_for_broker(
        settings,
        waiting=lambda error: probes.starting(
            WAITING_FOR_BROKER, f"Kafka at {settings.kafka_bootstrap} does not answer: {error}"
        ),
    )
    probes.starting(OPENING_STORES, "opening the stores and reading the cutover record")
    stores = build_stores(settings)
    # After a cutover the retired store is neither written nor watched (no lag alerts).
    retired = retired_stores(stores)
    for store in [st for st in stores if st.name in retired]:
        log.warning("store_retired", extra=fields(store=store.name))
        store.close()
    if retired:
        stores = [st for st in stores if st.name not in retired]
        settings = settings.model_copy(
            update={"stores": [n for n in settings.stores if n not in retired]}
        )
    metrics.declare(settings.stores, ())
    service = Replicator(settings, stores, registry, metrics)
    service.install_signal_handlers()
    tune_gc()
    # its own thread and Kafka clients; the service's chunkers answer for the stores'
    # positions in the partitions it owns
    lag = LagMonitor(settings, metrics, firsts=service.state.firsts).start()
    try:
        probes.attach(service, lag)
        service.run()
    finally:
        lag.stop()
