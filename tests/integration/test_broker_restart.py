"""The broker stopped and started under the service.

The local broker (Tansu, memory engine) loses every topic, record and committed offset when it
stops; `stack.start_service("kafka")` recreates the topics empty. So this is not a durability
test but a safety one: the service keeps running, reports the broker down (log event
`broker_down`, readiness `broker: false`), reconnects, and never rewrites or corrupts what the
stores already hold. Records produced after the restart start again at offset 0, so their keys
collide with objects already written: the service must report conflicts and leave the old
objects byte-identical (create-if-absent, never overwrite).
"""

from __future__ import annotations

import hashlib
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicator.config import Settings
from tests.support.checker import azure_objects, s3_objects
from tests.support.produce import produce_records
from tests.support.service import Service, wait_committed

pytestmark = pytest.mark.integration


def _snapshot(stack: Any, settings: Settings) -> dict[str, dict[str, str]]:
    env = stack.env()
    assert settings.s3_bucket is not None and settings.azure_container is not None
    return {
        "s3": {
            k: hashlib.md5(v).hexdigest() for k, v in s3_objects(env, settings.s3_bucket).items()
        },
        "azure": {
            k: hashlib.md5(v).hexdigest()
            for k, v in azure_objects(env, settings.azure_container).items()
        },
    }


def _readyz(service: Service) -> tuple[int, str]:
    """GET /readyz of the running service (its port is in its `http_listening` line)."""
    match = re.search(r'"event": "http_listening".*?"port": (\d+)', service.log_text())
    assert match, "no http_listening line"
    url = f"http://127.0.0.1:{match.group(1)}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_broker_restart_is_reported_and_never_rewrites_the_stores(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(chunk_max_records=100, flush_interval_s=0.5, lag_interval_s=1.0)
    groups = [settings.progress_group(s) for s in settings.stores]
    first = produce_records(settings, count=900, bad_share=0.0, seed=71)
    service = Service(settings, tmp_path).start()
    try:
        wait_committed(settings.kafka_bootstrap, groups, first.ends, 120, [service])
        before = _snapshot(stack, settings)
        assert before["s3"] and before["s3"] == before["azure"]

        stack.stop_service("kafka")
        try:
            deadline = time.monotonic() + 60
            while '"broker_down"' not in service.log_text():
                assert time.monotonic() < deadline, service.log_text()[-3000:]
                time.sleep(0.3)
            time.sleep(2.0)
            assert service.alive(), service.log_text()[-3000:]
            # Readiness follows the lag monitor's next failed check (its timeout included).
            deadline = time.monotonic() + 40
            down_status, down_body = _readyz(service)
            while down_status != 503 and time.monotonic() < deadline:
                time.sleep(0.5)
                down_status, down_body = _readyz(service)
        finally:
            stack.start_service("kafka")
        assert down_status == 503 and '"broker": false' in down_body, (down_status, down_body)

        # New data, from offset 0 again: same keys as objects already in the stores.
        produce_records(settings, count=900, bad_share=0.0, seed=72)
        deadline = time.monotonic() + 90
        while '"event": "conflict"' not in service.log_text():
            assert time.monotonic() < deadline, (
                "no conflict reported after the broker lost its data:\n"
                + service.log_text()[-4000:]
            )
            assert service.alive(), service.log_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3.0)  # let anything else the service would do happen
        assert service.alive()
        up_status, up_body = _readyz(service)
        assert '"broker": true' in up_body, (up_status, up_body)
    finally:
        if not stack.answering("kafka"):
            stack.start_service("kafka")
        code = service.stop()
    assert code == 0, service.log_text()[-3000:]
    after = _snapshot(stack, settings)
    for store in ("s3", "azure"):
        changed = {k for k, md5 in before[store].items() if after[store].get(k) != md5}
        assert not changed, f"{store}: objects rewritten or removed: {sorted(changed)[:5]}"
    log = service.log_text()
    assert '"broker_down"' in log
    assert '"uncommitted_object_deleted"' not in log
