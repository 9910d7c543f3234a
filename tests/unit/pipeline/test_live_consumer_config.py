"""The live consumer's heartbeat interval: librdkafka's default, within Kafka's rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicator.pipeline.service import DEFAULT_HEARTBEAT_MS, heartbeat_interval_ms


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
