"""The live consumer's heartbeat interval (librdkafka's default, within Kafka's rule) and the
fetch settings of the consumers that read records to store."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer
from hypothesis import given
from hypothesis import strategies as st

from replicator.config import Settings
from replicator.pipeline.service import (
    DEFAULT_HEARTBEAT_MS,
    heartbeat_interval_ms,
    live_consumer_config,
)
from replicator.pipeline.state import (
    FETCH_MAX_BYTES,
    PARTITION_FETCH_BYTES,
    consumer_fetch_config,
)
from tests.support.settings import offline_settings


@pytest.mark.parametrize(
    ("session_ms", "heartbeat_ms"),
    [
        (1_000, 500),  # a third would be 333: the floor
        (1_500, 500),
        (6_000, 2_000),
        (9_000, 3_000),
        (10_000, 3_000),  # the service's default session: librdkafka's default heartbeat
        (45_000, 3_000),
        (3_600_000, 3_000),
    ],
)
def test_heartbeat_interval_by_session_timeout(session_ms: int, heartbeat_ms: int) -> None:
    assert heartbeat_interval_ms(session_ms) == heartbeat_ms


@given(st.integers(min_value=1_000, max_value=3_600_000))
def test_heartbeat_never_above_a_third_of_the_session_nor_librdkafkas_default(
    session_ms: int,
) -> None:
    got = heartbeat_interval_ms(session_ms)
    assert 500 <= got <= DEFAULT_HEARTBEAT_MS
    assert got <= max(session_ms // 3, 500)


# --- fetch settings: what librdkafka accepts over the whole range of the setting -------------

FETCH_BUFFER_RANGE = (
    Settings.model_fields["fetch_buffer_kbytes"].metadata[0].ge,
    Settings.model_fields["fetch_buffer_kbytes"].metadata[1].le,
)


@given(st.integers(*FETCH_BUFFER_RANGE) | st.sampled_from(FETCH_BUFFER_RANGE))
def test_librdkafka_takes_the_fetch_settings_for_any_fetch_buffer(kbytes: int) -> None:
    """librdkafka checks a consumer's configuration when it is made (no broker needed); a
    response stays within librdkafka's default fetch.max.bytes, which the memory bound
    (docs/performance.md, "Memory") counts."""
    conf = consumer_fetch_config(kbytes)
    consumer = Consumer({"group.id": "g", "bootstrap.servers": "127.0.0.1:1", **conf})
    consumer.close()
    assert conf["fetch.max.bytes"] == FETCH_MAX_BYTES
    assert conf["max.partition.fetch.bytes"] == PARTITION_FETCH_BYTES


def test_the_live_consumer_uses_the_fetch_settings() -> None:
    settings = offline_settings(fetch_buffer_kbytes=4096)
    conf = live_consumer_config(settings)
    for name, value in consumer_fetch_config(4096).items():
        assert conf[name] == value, name
