"""Bad input never blocks (P6): every bad record reaches the dead-letter topic with its reason
and origin, none reaches a store, and the good records around it all arrive."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicator.config import Settings
from replicator.devtools.synthetic import BAD_KINDS, EXPECTED_REASON
from tests.integration.pipeline.test_replication import PARTITIONS, assert_replicated, groups
from tests.support.checker import read_topic
from tests.support.produce import produce_records
from tests.support.service import Service, wait_committed

pytestmark = pytest.mark.integration


def test_each_kind_of_bad_record_lands_in_the_dead_letter_topic_with_its_reason(
    stack: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    produced = produce_records(
        settings, count=2000, bad_share=0.1, seed=5, bad_kinds=list(BAD_KINDS)
    )
    assert set(produced.bad_kinds.values()) == set(BAD_KINDS), (
        "the workload must hold every bad kind"
    )
    service = Service(settings, tmp_path).start()
    try:
        wait_committed(settings.kafka_bootstrap, groups(settings), produced.ends, 120, [service])
    finally:
        assert service.stop() == 0

    dead = read_topic(settings.kafka_bootstrap, settings.dead_letter_topic, PARTITIONS)
    by_origin: dict[tuple[tuple[str, int], int], dict[str, bytes]] = {}
    for records in dead.values():
        for r in records:
            origin = (
                (r.headers["dlq.origin.topic"].decode(), int(r.headers["dlq.origin.partition"])),
                int(r.headers["dlq.origin.offset"]),
            )
            assert origin not in by_origin, f"dead-lettered twice: {origin}"
            by_origin[origin] = r.headers
    assert set(by_origin) == produced.bad
    for origin, headers in by_origin.items():
        kind = produced.bad_kinds[origin]
        expected = {str(k): reason for k, reason in EXPECTED_REASON.items()}[kind]
        assert headers["dlq.reason"].decode() == expected, (origin, kind, headers)
        assert headers["dlq.detail"], origin
    # The original bytes are kept, for forensics and a later fix-and-replay.
    originals = {}
    for topic in settings.topics:
        for tp, records in read_topic(settings.kafka_bootstrap, topic, PARTITIONS).items():
            originals.update({(tp, r.offset): r.value for r in records})
    for records in dead.values():
        for r in records:
            origin = (
                (r.headers["dlq.origin.topic"].decode(), int(r.headers["dlq.origin.partition"])),
                int(r.headers["dlq.origin.offset"]),
            )
            assert r.value == originals[origin]
    # No NIR, no bad record in any store; every good record is there.
    assert_replicated(settings, stack.env(), produced)
    log = service.log_text()
    assert log.count('"dead_lettered"') == len(produced.bad)
