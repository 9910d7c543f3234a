"""The paced producer's sleep rule, on plain values: exact average rate, few wake-ups."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicator.devtools.produce import PACING_TICK_S, pacing_wait


@pytest.mark.parametrize(
    ("ahead", "expected"),
    [
        (-1.0, 0.0),
        (0.0, 0.0),
        (0.0001, PACING_TICK_S),  # under a millisecond: a real sleep, never poll(0) spinning
        (PACING_TICK_S, PACING_TICK_S),
        (0.02, 0.02),
        (0.5, 0.1),  # a stop request is seen within 0.1 s
    ],
)
def test_pacing_wait(ahead: float, expected: float) -> None:
    assert pacing_wait(ahead) == pytest.approx(expected)


def simulate(rate: float, seconds: float) -> tuple[list[float], int]:
    """The produce loop against a simulated clock: send times and the number of sleeps."""
    now, sent, sleeps, times = 0.0, 0, 0, []
    while now < seconds:
        wait = pacing_wait(sent / rate - now)
        if wait:
            now += wait
            sleeps += 1
            continue
        times.append(now)
        sent += 1
    return times, sleeps


@given(rate=st.floats(min_value=0.5, max_value=20_000), seconds=st.floats(min_value=1, max_value=5))
def test_paced_sends_follow_the_rate_and_sleep_at_most_once_a_tick(
    rate: float, seconds: float
) -> None:
    times, sleeps = simulate(rate, seconds)
    # never ahead of schedule, never more than one tick (plus one record) behind it
    for i, sent_at in enumerate(times):
        assert sent_at >= i / rate - 1e-9
        assert sent_at <= i / rate + PACING_TICK_S + 1e-9
    assert len(times) == pytest.approx(rate * seconds, abs=rate * PACING_TICK_S + 2)
    assert sleeps <= seconds / PACING_TICK_S + 2  # one more for the floating-point edge
