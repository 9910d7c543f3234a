"""`replicator status` against the real servers, with no service running: exact committed
offsets, lags, last objects and dead letters by reason after a run; a store held back; a
group that never committed; a broker that does not answer."""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from replicator.config import Settings
from replicator.devtools.synthetic import EXPECTED_REASON
from replicator.keys import parse_key
from replicator.model import TP
from tests.support.ops import cli, keys, ops, replicate
from tests.support.produce import Produced, commit_offsets, produce_records

pytestmark = pytest.mark.integration


def status(settings: Settings, *args: str) -> tuple[int, dict[str, Any], str]:
    result = cli(settings, "status", "--json", *args)
    data = json.loads(result.stdout)  # stdout is the JSON document, nothing else
    assert isinstance(data, dict)
    return result.returncode, data, result.stderr


def entry(report: dict[str, Any], tp: TP, store: str) -> dict[str, Any]:
    for p in report["partitions"]:
        if (p["topic"], p["partition"]) == tp:
            value = p["stores"][store]
            assert isinstance(value, dict)
            return value
    raise AssertionError(f"{tp} not in the report")


def last_key(settings: Settings, store: str, tp: TP) -> str:
    with ops(settings) as ctx:
        parsed = [parse_key(k) for k in keys(ctx, store, tp)]
    return str(max((k for k in parsed if k is not None), key=lambda k: k.last))


def timestamp_ms(settings: Settings, tp: TP, offset: int) -> int:
    consumer = Consumer({**settings.kafka_common(), "group.id": "t", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(tp[0], tp[1], offset)])
        while True:
            msg = consumer.poll(5)
            assert msg is not None
            if msg.error() is None and msg.offset() == offset:
                return int(msg.timestamp()[1])
    finally:
        consumer.close()


@pytest.fixture
def replicated(settings_factory: Callable[..., Settings]) -> tuple[Settings, Produced]:
    settings = settings_factory(chunk_max_records=100)
    produced = produce_records(settings, count=900, bad_share=0.05, seed=71)
    replicate(settings, produced.ends)  # then stops: no service runs below
    return settings, produced


def test_status_after_a_run_gives_exact_positions_and_dead_letters(
    replicated: tuple[Settings, Produced], tmp_path: Path
) -> None:
    settings, produced = replicated
    out = tmp_path / "status.json"
    code, report, _ = status(settings, "--output", str(out))
    assert code == 0
    assert json.loads(out.read_text()) == report  # the file holds the same document

    tps = sorted(produced.ends)
    assert [(p["topic"], p["partition"]) for p in report["partitions"]] == tps
    for tp in tps:
        for store in ("s3", "azure"):
            got = entry(report, tp, store)
            assert got["committed"] == produced.ends[tp]
            assert got["lag_records"] == 0
            assert got["lag_seconds"] == 0.0
            assert got["state"] == "live"
            assert got["last_object"] == last_key(settings, store, tp)
            assert got["last_object_offset"] == produced.ends[tp] - 1
            assert got["uncommitted_object"] is False
    for store in ("s3", "azure"):
        assert report["stores"][store] == {
            "state": "live",
            "retired": False,
            "lag_records": 0,
            "max_lag_seconds": 0.0,
            "error": None,
        }

    dead = report["dead_letters"]
    expected = Counter(EXPECTED_REASON[kind] for kind in produced.bad_kinds.values())  # type: ignore[index]
    assert dead["error"] is None
    assert dead["by_reason"] == dict(sorted(expected.items()))
    assert dead["distinct"] == len(produced.bad)
    assert dead["by_origin_topic"] == dict(sorted(Counter(tp[0] for tp, _ in produced.bad).items()))
    assert sum(w["end"] - w["from"] for w in dead["window"].values()) == dead["records"]

    # The human view names the same things.
    result = cli(settings, "status", "--dead-letters", "0")
    assert result.returncode == 0, result.stderr
    assert f"{tps[0][0]}/{tps[0][1]}" in result.stdout
    assert last_key(settings, "s3", tps[0]) in result.stdout
    assert "dead letters" not in result.stdout


def test_status_shows_a_store_held_back_with_its_lag(
    replicated: tuple[Settings, Produced],
) -> None:
    settings, produced = replicated
    tp = max(produced.ends, key=lambda t: produced.ends[t])
    back = produced.ends[tp] - 150
    commit_offsets(settings, [settings.progress_group("azure")], {tp: back})

    code, report, _ = status(settings, "--live-records", "0", "--dead-letters", "0")
    assert code == 0
    got = entry(report, tp, "azure")
    assert got["committed"] == back
    assert got["lag_records"] == 150
    assert got["state"] == "behind"
    assert got["uncommitted_object"] is True  # its objects go past what it committed
    at_ms = datetime.fromisoformat(report["at"].replace("Z", "+00:00")).timestamp() * 1000
    expected_s = (at_ms - timestamp_ms(settings, tp, back)) / 1000
    assert abs(got["lag_seconds"] - expected_s) <= 0.002
    assert report["stores"]["azure"]["state"] == "behind"
    assert report["stores"]["azure"]["lag_records"] == 150
    assert entry(report, tp, "s3")["state"] == "live"
    assert report["stores"]["s3"]["state"] == "live"
    assert report["dead_letters"] is None

    # Within the live window (150 records <= 2 x 100, its oldest record seconds old) the
    # same facts read as live: an open chunk, not a store catching up.
    _, report, _ = status(settings, "--dead-letters", "0")
    assert entry(report, tp, "azure")["state"] == "live"


def test_status_of_a_group_that_never_committed(
    settings_factory: Callable[..., Settings], replicated: tuple[Settings, Produced]
) -> None:
    settings, produced = replicated
    other = settings.model_copy(update={"group_id": settings.group_id + "-never"})
    code, report, _ = status(other, "--dead-letters", "0")
    assert code == 0
    for tp, end in produced.ends.items():
        for store in ("s3", "azure"):
            got = entry(report, tp, store)
            assert got["committed"] is None
            assert got["lag_records"] == end
            assert got["lag_seconds"] > 0
            assert got["state"] == "no_progress"
            # the objects are there all the same (written by the other group's service)
            assert got["last_object"] == last_key(settings, store, tp)


def test_status_exits_3_when_kafka_does_not_answer(
    settings_factory: Callable[..., Settings],
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, report, _ = status(settings_factory(kafka_bootstrap=f"127.0.0.1:{port}"))
    assert code == 3
    assert report["error"].startswith("kafka: ")
    assert report["partitions"] == []


def test_status_refuses_an_unknown_topic(replicated: tuple[Settings, Produced]) -> None:
    settings, _ = replicated
    result = cli(settings, "status", "--topic", "no.such.topic")
    assert result.returncode == 2
    assert "no.such.topic" in result.stderr
    assert "Traceback" not in result.stderr
