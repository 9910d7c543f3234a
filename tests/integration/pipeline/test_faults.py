"""The fault matrix: every fault, several times, against the real local stack; after each run
an independent checker (tests/support/checker.py, no replicator code) reads Kafka and both
stores and counts records lost, records doubled and objects that differ between the stores.

    pytest tests/integration/pipeline/test_faults.py                       # 2 runs per fault
    REPLICATOR_FAULTS_LONG=1 pytest tests/integration/pipeline/test_faults.py   # 6 runs, more load
    REPLICATOR_FAULTS_RUNS=10 ...                                 # any count

A table (fault, runs, lost, doubled, divergent, conflicts) is printed at the end of the session
(and written to $REPLICATOR_FAULTS_TABLE if set); every test fails unless its cells are all 0.

How each fault is produced is written next to it in FAULTS below. The service always runs as a
real process (`python -m replicator run`), killed with SIGKILL where the fault says kill -9.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from replicator.config import Settings
from replicator.devtools.stack import DEMO_TOPICS, LocalStack
from replicator.model import TP
from replicator.ops.audit import AuditOptions, run_audit
from replicator.ops.context import OpsContext
from tests.support.checker import (
    KafkaRecord,
    azure_objects,
    compare,
    decode_objects,
    read_topic,
    s3_objects,
)
from tests.support.faultproxy import FaultProxy, Mode
from tests.support.faulttable import PROPERTY, Row
from tests.support.fresh import create_fresh
from tests.support.produce import (
    Produced,
    commit_offsets,
    fill_partitions,
    produce_recorded,
    produce_records,
)
from tests.support.service import Service, wait_committed

pytestmark = pytest.mark.integration

PARTITIONS = 3
LONG = os.environ.get("REPLICATOR_FAULTS_LONG", "") == "1"
RUNS = int(os.environ.get("REPLICATOR_FAULTS_RUNS", "6" if LONG else "2"))
LOAD = 3 if LONG else 1  # workload multiplier
CATCH_UP_S = 150.0


# ---------------------------------------------------------------------- the independent count
@dataclass
class Count:
    lost: int
    doubled: int
    divergent: int


def count(run: Run, produced: Produced) -> Count:
    """Lost: good records missing from a store (either), altered, or bad records found in a
    store. Doubled: offsets held twice in a store. Divergent: keys in one store only, or with
    other bytes, or (when the fault took a snapshot before it struck) objects of the snapshot
    removed or rewritten since.

    What the stores must hold is read from Kafka, or, when the fault left the broker without
    it (a broker restart: the local broker's memory engine forgets its log), taken from the
    producer's own record of what it sent (`produced.records`)."""
    settings = run.settings
    env = run.stack.env()
    kafka: dict[TP, list[KafkaRecord]] = {
        (topic, p): [] for topic in settings.topics for p in range(PARTITIONS)
    }
    if produced.records:
        kafka.update(produced.records)
    else:
        for topic in settings.topics:
            kafka.update(read_topic(settings.kafka_bootstrap, topic, PARTITIONS, idle_s=1.0))
    assert settings.s3_bucket is not None and settings.azure_container is not None
    stores = {
        "s3": s3_objects(env, settings.s3_bucket),
        "azure": azure_objects(env, settings.azure_container),
    }
    lost: set[tuple[TP, int]] = set()
    doubled = 0
    missing = produced.total - sum(len(v) for v in kafka.values())
    for objects in stores.values():
        content = decode_objects(objects)
        verdict = compare(kafka, content, produced.bad)
        lost.update(verdict.lost)
        lost.update(verdict.altered)
        lost.update(verdict.unexpected)
        doubled += len(set(verdict.doubled))
    s3, az = stores["s3"], stores["azure"]
    divergent = len(set(s3) ^ set(az)) + sum(
        1 for k in set(s3) & set(az) if hashlib.md5(s3[k]).digest() != hashlib.md5(az[k]).digest()
    )
    if not produced.records:
        # The final check against the source, record by record: the product's own audit
        # must agree with the independent checker (every offset stored, dead-lettered or
        # without a record; no finding), and its manifest must land identically in both.
        # The proxies are closed by now: the audit reads the stores at their own endpoints.
        assert run.direct is not None
        direct = settings.model_copy(
            update={
                "s3_endpoint": run.direct.s3_endpoint,
                "azure_connection_string": run.direct.azure_connection_string,
            }
        )
        with OpsContext.open(direct, "audit") as ctx:
            audit = run_audit(ctx, AuditOptions())
        if audit.exit_code != 0:
            run.problems.append("audit: " + audit.summary())
        elif audit.totals()["stored"] + audit.totals()["dead_lettered"] != produced.total:
            run.problems.append(f"audit: accounts for other records: {audit.totals()}")
    for name, held in (run.before or {}).items():
        now = {k: hashlib.md5(v).hexdigest() for k, v in stores[name].items()}
        rewritten = sorted(k for k, md5 in held.items() if now.get(k) != md5)
        if rewritten:
            run.problems.append(f"{name}: objects rewritten or removed: {rewritten[:5]}")
        divergent += len(rewritten)
    return Count(len(lost) + max(missing, 0), doubled, divergent)


def snapshot(run: Run) -> dict[str, dict[str, str]]:
    """The MD5 of every object in each store, by key."""
    env = run.stack.env()
    assert run.settings.s3_bucket is not None and run.settings.azure_container is not None
    return {
        "s3": {
            k: hashlib.md5(v).hexdigest()
            for k, v in s3_objects(env, run.settings.s3_bucket).items()
        },
        "azure": {
            k: hashlib.md5(v).hexdigest()
            for k, v in azure_objects(env, run.settings.azure_container).items()
        },
    }


# ---------------------------------------------------------------------- helpers
class Load:
    """Produces `batch` records every `every_s` seconds in a thread until stopped."""

    def __init__(
        self,
        settings: Settings,
        batch: int,
        every_s: float,
        seed: int,
        produce: Callable[[Settings, int, float, int], Produced] = produce_records,
        bad_share: float = 0.01,
    ) -> None:
        self.settings, self.batch, self.every_s, self.seed = settings, batch, every_s, seed
        self.produce, self.bad_share = produce, bad_share
        self.produced = Produced.empty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                got = self.produce(self.settings, self.batch, self.bad_share, self.seed * 1000 + n)
                self.produced = self.produced.merge(got)
                n += 1
                self._stop.wait(self.every_s)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> Produced:
        self._stop.set()
        self._thread.join(timeout=60)
        if self.error is not None:
            raise self.error
        return self.produced

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass
class Run:
    stack: LocalStack
    settings: Settings
    tmp: Path
    rng: random.Random
    index: int
    services: list[Service] = field(default_factory=list)
    proxies: list[FaultProxy] = field(default_factory=list)
    # MD5 of every object before the fault struck: count() checks none was rewritten
    before: dict[str, dict[str, str]] | None = None
    # topics on which the fault makes conflicts the expected report (not counted)
    conflicts_expected_on: set[str] = field(default_factory=set)
    # services that must exit 0 on SIGTERM at the end of the run, never log these events
    exit_cleanly: list[Service] = field(default_factory=list)
    forbidden_events: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # the stores' own endpoints: the proxies are closed once the run ends
    direct: Settings | None = None

    def __post_init__(self) -> None:
        self.direct = self.settings

    def service(self, name: str = "replica", **overrides: Any) -> Service:
        svc = Service(self.settings, self.tmp, name=name, **overrides)
        self.services.append(svc)
        return svc

    def proxy(self, store: str) -> FaultProxy:
        """Put a fault proxy in front of `store` for this run's settings."""
        proxy = FaultProxy(self.stack.port(store), seed=self.rng.randrange(1 << 30)).start()
        self.proxies.append(proxy)
        if store == "s3":
            self.settings = self.settings.model_copy(update={"s3_endpoint": proxy.url})
        else:
            assert self.settings.azure_connection_string is not None
            conn = self.settings.azure_connection_string.get_secret_value().replace(
                f"127.0.0.1:{self.stack.port('azure')}/", f"127.0.0.1:{proxy.port}/"
            )
            self.settings = self.settings.model_copy(
                update={
                    "azure_connection_string": type(self.settings.azure_connection_string)(conn)
                }
            )
        return proxy

    def groups(self) -> list[str]:
        return [self.settings.progress_group(s) for s in self.settings.stores]

    def finish(self, produced: Produced, survivors: list[Service]) -> None:
        """Faults off: wait for both stores to commit everything produced."""
        for proxy in self.proxies:
            proxy.set(Mode.PASS)
        deadline = time.monotonic() + CATCH_UP_S
        while True:
            # A survivor that is not running (killed by the fault, or by anything else on the
            # machine) is started again: the property is about what the stores end up with.
            for svc in survivors:
                if not svc.alive():
                    svc.start()
            try:
                wait_committed(
                    self.settings.kafka_bootstrap, self.groups(), produced.ends, 10.0, survivors
                )
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def close(self) -> None:
        for svc in self.services:
            if svc.alive():
                try:
                    code = svc.stop()
                except subprocess.TimeoutExpired:
                    svc.kill9()
                    code = None
                if code != 0 and svc in self.exit_cleanly:
                    self.problems.append(f"{svc.log_path.name}: exit {code} on SIGTERM")
        for svc in self.services:
            for name in self.forbidden_events:
                if events(svc, name):
                    self.problems.append(f"{svc.log_path.name}: {name} logged")
        for proxy in self.proxies:
            proxy.close()

    def conflicts(self) -> int:
        return sum(
            1
            for svc in self.services
            for e in events(svc, "conflict")
            if e.get("topic") not in self.conflicts_expected_on
        )


def events(svc: Service, name: str | None = None) -> list[dict[str, Any]]:
    """The service's JSON log lines (those named `name`), in order."""
    out = []
    for line in svc.log_text().splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:  # a line cut by a kill -9
            continue
        if name is None or event.get("event") == name:
            out.append(event)
    return out


def wait_events(
    svc: Service, name: str, count: int = 1, after: int = 0, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Wait until the log holds `count` events `name` among its lines past the first `after`
    (a count of `events(svc)`); returns those events."""
    deadline = time.monotonic() + timeout
    while True:
        got = [e for e in events(svc)[after:] if e.get("event") == name]
        if len(got) >= count:
            return got
        assert svc.alive(), svc.log_text()[-3000:]
        assert time.monotonic() < deadline, f"no {count} x {name}:\n{svc.log_text()[-3000:]}"
        time.sleep(0.2)


def readyz(svc: Service) -> tuple[int, str]:
    """GET /readyz of the running service (its port is in its `http_listening` line)."""
    ports = [e["port"] for e in events(svc, "http_listening")]
    assert ports, "no http_listening line"
    url = f"http://127.0.0.1:{ports[-1]}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def kill_at_random_moments(run: Run, svc: Service, kills: int, low: float, high: float) -> None:
    for _ in range(kills):
        svc.start()
        time.sleep(run.rng.uniform(low, high))
        svc.kill9()


# ---------------------------------------------------------------------- the faults
# Each takes a Run (fresh names, settings) and returns what was produced; the services still
# running at the end are in run.services (finish() restarts the ones to keep).
FaultFn = Callable[[Run], tuple[Produced, list[Service]]]


def kill9_while_consuming(run: Run) -> tuple[Produced, list[Service]]:
    """kill -9 of the replica at random moments (0.5-3 s after start) under a steady load."""
    svc = run.service()
    with Load(run.settings, 150 * LOAD, 0.2, run.index) as load:
        kill_at_random_moments(run, svc, 3, 0.5, 3.0)
    return load.produced, [svc]


def kill9_between_the_two_stores_writes(run: Run) -> tuple[Produced, list[Service]]:
    """One store (S3 or Azure, by run) behind a proxy adding 150 ms to every request: the
    other store is always ahead, so a kill -9 at a random moment lands while an object is in
    one store and not yet in the other. The restart must complete the slow store with the
    same keys and bytes."""
    slow = ("s3", "azure")[run.index % 2]
    proxy = run.proxy(slow)
    proxy.set(Mode.DELAY, delay_ms=150)
    svc = run.service()
    with Load(run.settings, 150 * LOAD, 0.2, run.index) as load:
        for _ in range(3):
            # Each kill counts from the service's first request to the slow store, not from
            # its start: on a loaded machine the start alone can outlast the window.
            struck = struck_again(proxy)
            svc.start()
            wait_for(struck, svc)
            time.sleep(run.rng.uniform(0.5, 2.5))
            svc.kill9()
    return load.produced, [svc]


def kill9_after_write_before_commit(run: Run) -> tuple[Produced, list[Service]]:
    """commit_interval_s=3 while objects are cut every 100 records: at any moment several
    objects are in both stores but not committed, so a kill -9 (random, 1-4 s after start)
    lands between a write and its commit. The restart finds the uncommitted objects."""
    run.settings = run.settings.model_copy(update={"commit_interval_s": 3.0})
    svc = run.service()
    with Load(run.settings, 150 * LOAD, 0.2, run.index) as load:
        kill_at_random_moments(run, svc, 3, 1.0, 4.0)
    return load.produced, [svc]


def kill9_during_rebalance(run: Run) -> tuple[Produced, list[Service]]:
    """Replica a runs; replica b joins (the group rebalances: join takes about half of the
    6 s session timeout); a is killed with -9 at a random moment inside that window, so the
    rebalance is in progress (partitions revoked, being drained or just assigned)."""
    a, b = run.service("a"), run.service("b")
    with Load(run.settings, 150 * LOAD, 0.2, run.index) as load:
        a.start()
        time.sleep(run.rng.uniform(2.0, 3.0))
        b.start()
        time.sleep(run.rng.uniform(0.5, 4.0))
        a.kill9()
        time.sleep(1.0)
        a.start()  # comes back: a second rebalance
        time.sleep(run.rng.uniform(0.5, 3.0))
    return load.produced, [a, b]


def store_stopped_then_restarted(run: Run) -> tuple[Produced, list[Service]]:
    """The store's server itself is stopped (SIGTERM, port closed) under load for 3-5 s and
    started again on the same data: S3 (SeaweedFS) on even runs, Azure (Azurite) on odd."""
    name = ("s3", "azure")[run.index % 2]
    svc = run.service(health_interval_s=1.0, write_retry_s=2.0).start()
    with Load(run.settings, 150 * LOAD, 0.2, run.index) as load:
        time.sleep(2.0)
        run.stack.stop_service(name)
        try:
            time.sleep(run.rng.uniform(3.0, 5.0))
        finally:
            run.stack.start_service(name)
        time.sleep(1.0)
    return load.produced, [svc]


def broker_stopped_then_restarted(run: Run) -> tuple[Produced, list[Service]]:
    """The broker (Tansu) is stopped under the service once the stores hold what a first load
    produced, stays down until the service has reported it (log `broker_down`, partitions
    revoked, /readyz 503 with `broker: false`), and is started again. Tansu's memory engine
    comes back empty: no record, no committed offset, offsets from 0 again.

    For one topic (alternating by run) the test puts back what a durable broker keeps: each
    partition's offsets (filler records up to the old end) and the committed offsets of the
    service's groups, while the service is frozen (SIGSTOP) so that it cannot join before that
    is done. The other topic stays as Tansu leaves it. Then a second load, until the service
    has reported a conflict on that other topic.

    The service must stay up, join again (partitions assigned from the old ends on the kept
    topic, from 0 on the other), say `broker: true`, replicate the kept topic's new records,
    refuse the other topic's new records (their offsets are those of objects already stored:
    conflicts, expected there and not counted), delete no object, leave every object written
    before the restart byte-identical (count() compares with a snapshot), and exit 0 on
    SIGTERM. The count is against the producer's own record, the broker no longer holding the
    first load: both topics' records of before the restart, and the kept topic's after it.

    The second load has no bad record: Tansu also forgets the dead-letter producer's
    idempotence state and answers its next send with PRODUCER_FENCED, which a durable broker
    would not do (bad records before the restart are in the first load)."""
    # A short session: partitions are revoked, and joined again, sooner (Tansu: join ~ half).
    settings = run.settings = run.settings.model_copy(
        update={"lag_interval_s": 1.0, "session_timeout_ms": 3000}
    )
    kept, lost = settings.topics[run.index % 2], settings.topics[1 - run.index % 2]
    progress_groups = run.groups()
    svc = run.service().start()
    run.exit_cleanly.append(svc)
    # Tansu: a member that leaves while joining blocks the group; nothing stops before this.
    wait_events(svc, "partition_assigned", 2 * PARTITIONS)
    with Load(settings, 150 * LOAD, 0.2, run.index, produce_recorded) as load:
        time.sleep(run.rng.uniform(1.5, 3.0))
    before = load.produced
    wait_committed(settings.kafka_bootstrap, progress_groups, before.ends, CATCH_UP_S, [svc])
    run.before = snapshot(run)
    assert run.before["s3"] and run.before["s3"] == run.before["azure"]
    kept_ends = {(kept, p): before.ends.get((kept, p), 0) for p in range(PARTITIONS)}

    mark = len(events(svc))
    run.stack.stop_service("kafka")
    try:
        wait_events(svc, "broker_down", after=mark)
        # Revoked while the broker is down: nothing the service commits reaches the new one.
        wait_events(svc, "partitions_revoked", after=mark)
        deadline = time.monotonic() + 40  # readiness follows the lag monitor's next check
        status, body = readyz(svc)
        while status != 503 and time.monotonic() < deadline:
            time.sleep(0.3)
            status, body = readyz(svc)
        assert status == 503 and '"broker": false' in body, (status, body)
        mark = len(events(svc))
        svc.pause()
        try:
            run.stack.start_service("kafka")
            fill_partitions(settings, {tp: e for tp, e in kept_ends.items() if e})
            commit_offsets(settings, [settings.group_id, *progress_groups], kept_ends)
        finally:
            svc.resume()
    finally:
        if not run.stack.answering("kafka"):
            run.stack.start_service("kafka")

    assigned = wait_events(svc, "partition_assigned", 2 * PARTITIONS, after=mark)
    starts = {(e["topic"], e["partition"]): e["start"] for e in assigned}
    expected_starts = {**kept_ends, **{(lost, p): 0 for p in range(PARTITIONS)}}
    assert starts == expected_starts, (starts, expected_starts)
    status, body = readyz(svc)
    assert '"broker": true' in body, (status, body)

    with Load(settings, 150 * LOAD, 0.2, run.index + 100, produce_recorded, 0.0) as load:
        deadline = time.monotonic() + 60
        while not any(e.get("topic") == lost for e in events(svc, "conflict")):
            assert time.monotonic() < deadline, "no conflict on the topic whose data was lost"
            assert svc.alive(), svc.log_text()[-3000:]
            time.sleep(0.3)
        time.sleep(run.rng.uniform(0.5, 2.0))
    after = load.produced
    run.conflicts_expected_on = {lost}
    assert svc.alive(), svc.log_text()[-3000:]
    run.forbidden_events = ["uncommitted_object_deleted"]  # checked at the end of the run
    expected = before.merge(after.only({kept}))
    # The lost topic's progress went with the broker: finish() waits for the kept one only.
    expected.ends = {tp: e for tp, e in expected.ends.items() if tp[0] == kept}
    return expected, [svc]


def _with_load(
    run: Run, seconds: float, svc: Service, during: Callable[[], None] | None = None
) -> tuple[Produced, list[Service]]:
    with Load(run.settings, 150 * LOAD, 0.2, run.index) as load:
        if during is not None:
            during()
        time.sleep(seconds)
        # The faults must really meet the service's requests: on a loaded machine its start
        # can take most of the window, so the load goes on until every proxy has struck.
        wait_for(lambda: all(p.injected > 0 for p in run.proxies), svc)
    return load.produced, [svc]


def struck_again(proxy: FaultProxy) -> Callable[[], bool]:
    """A condition: the proxy has struck again since this call."""
    seen = proxy.injected
    return lambda: proxy.injected > seen


def wait_for(condition: Callable[[], bool], svc: Service, timeout_s: float = 60.0) -> None:
    """Wait until `condition()` holds, failing with the service's log if it does not within
    `timeout_s` or if the service died."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert svc.alive(), svc.log_text()[-3000:]
        assert time.monotonic() < deadline, svc.log_text()[-3000:]
        time.sleep(0.05)


def store_slow_requests(run: Run) -> tuple[Produced, list[Service]]:
    """Every request to one store (S3 on even runs, Azure on odd) waits 300 ms at the proxy,
    for the whole load (slower than the load: the store's queue grows)."""
    proxy = run.proxy(("s3", "azure")[run.index % 2])
    proxy.set(Mode.DELAY, delay_ms=300)
    return _with_load(run, 6.0, run.service().start())


def store_http_errors(run: Run) -> tuple[Produced, list[Service]]:
    """30 % of the requests to one store are answered by the proxy with 503 (even runs) or
    500 (odd runs), and the store never sees them; the SDK retries, then the service."""
    proxy = run.proxy(("s3", "azure")[run.index % 2])
    proxy.set(Mode.ERROR, share=0.3, status=(503, 500)[run.index % 2])
    return _with_load(run, 6.0, run.service(health_interval_s=1.0, write_retry_s=2.0).start())


def store_dropped_connections(run: Run) -> tuple[Produced, list[Service]]:
    """20 % of the requests to one store end with the connection closed by the proxy: half
    before the store sees the request, half after the store answered (the put happened but
    the client never hears of it: its retry meets the object it just created)."""
    proxy = run.proxy(("azure", "s3")[run.index % 2])
    proxy.set(Mode.DROP, share=0.2)
    return _with_load(run, 6.0, run.service(health_interval_s=1.0, write_retry_s=2.0).start())


def replicas_join_and_leave(run: Run) -> tuple[Produced, list[Service]]:
    """Three replicas under load: they start one by one, then one leaves (SIGTERM) and one
    is killed (-9) and comes back, each step at a random moment: repeated rebalances."""
    a, b, c = run.service("a"), run.service("b"), run.service("c")
    with Load(run.settings, 150 * LOAD, 0.2, run.index) as load:
        for svc in (a, b, c):
            svc.start()
            time.sleep(run.rng.uniform(1.0, 2.5))
        b.stop()
        time.sleep(run.rng.uniform(1.0, 2.5))
        c.kill9()
        time.sleep(run.rng.uniform(0.5, 1.5))
        c.start()
        time.sleep(run.rng.uniform(1.0, 2.5))
    return load.produced, [a, c]


FAULTS: dict[str, FaultFn] = {
    "kill -9 while consuming": kill9_while_consuming,
    "kill -9 between the stores' writes": kill9_between_the_two_stores_writes,
    "kill -9 after write, before commit": kill9_after_write_before_commit,
    "kill -9 during a rebalance": kill9_during_rebalance,
    "store stopped, then restarted": store_stopped_then_restarted,
    "broker stopped, then restarted": broker_stopped_then_restarted,
    "store slow (300 ms a request)": store_slow_requests,
    "store 500/503 on 30% of requests": store_http_errors,
    "store drops 20% of connections": store_dropped_connections,
    "replicas join and leave": replicas_join_and_leave,
}


@pytest.mark.parametrize(
    "fault", list(FAULTS), ids=lambda f: re.sub(r"[^a-z0-9]+", "_", f).strip("_")
)
def test_fault_loses_doubles_and_diverges_nothing(
    fault: str,
    stack: LocalStack,
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    base = settings_factory(chunk_max_records=100, flush_interval_s=0.5)
    row = Row()
    rng = random.Random(f"{fault}/{RUNS}")
    try:
        for index in range(RUNS):
            started = time.monotonic()
            names = create_fresh(stack, f"f{index}", partitions=PARTITIONS)
            settings = base.model_copy(
                update={
                    "topics": list(names.topics),
                    "schema_topics": dict(zip(names.topics, DEMO_TOPICS, strict=True)),
                    "dead_letter_topic": names.dead_letter_topic,
                    "group_id": names.group_id,
                    "s3_bucket": names.bucket,
                    "azure_container": names.container,
                }
            )
            run_dir = tmp_path / f"run{index}"
            run_dir.mkdir()
            run = Run(stack, settings, run_dir, rng, index)
            try:
                produced, survivors = FAULTS[fault](run)
                # the proxy faults really happened (requests met a delay, an error or a drop)
                assert all(p.injected > 0 for p in run.proxies), [p.injected for p in run.proxies]
                try:
                    run.finish(produced, survivors)
                except AssertionError as exc:
                    row.notes.append(f"run {index}: {str(exc)[:300]}")
            finally:
                run.close()
            got = count(run, produced)
            row.runs += 1
            row.lost += got.lost
            row.doubled += got.doubled
            row.divergent += got.divergent
            row.conflicts += run.conflicts()
            row.seconds += time.monotonic() - started
            assert produced.total > 0
            problems = "; ".join(run.problems)
            assert not problems, f"{fault}, run {index}: {problems}"
    finally:
        # on the report, for the table printed at the end of the session (tests/conftest.py)
        record_property(PROPERTY, row.as_property(fault))
    assert row.clean(), f"{fault}: {row}\n" + "\n".join(row.notes)
