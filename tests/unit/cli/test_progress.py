"""The progress helper: the line it writes when standard error is not a terminal."""

from __future__ import annotations

import io

from replicator.cli.progress import CliProgress, progress_line


def test_progress_line_with_and_without_a_total() -> None:
    assert (
        progress_line("verify", "partitions", 3, 6, {"objects listed": 1234}, 12.4)
        == "verify: 3/6 partitions (50%), 1,234 objects listed, 12 s"
    )
    assert progress_line("produce", "records", 1500, None, {}, 0.6) == "produce: 1,500 records, 1 s"
    assert progress_line("x", "steps", 0, 0, {}, 0) == "x: 0 steps, 0 s"


def test_off_a_terminal_it_writes_lines_and_a_last_one() -> None:
    now = [100.0]
    out = io.StringIO()
    with CliProgress(
        "replay", "partitions", stream=out, tty=False, interval_s=3600, clock=lambda: now[0]
    ) as p:
        p.start(4)
        p.advance()
        p.count("records read", 10)
        p.count("records read", 5)
        now[0] = 107.0
        assert p.line() == "replay: 1/4 partitions (25%), 15 records read, 7 s"
        p.advance(3)
    assert out.getvalue() == "replay: 4/4 partitions (100%), 15 records read, 7 s\n"


def test_on_a_terminal_it_draws_a_bar_not_lines() -> None:
    out = io.StringIO()
    with CliProgress("verify", "partitions", stream=out, tty=True) as p:
        p.start(2)
        p.advance(2)
        p.count("objects listed", 3)
    text = out.getvalue()
    assert "verify" in text and "2/2" in text
    assert "verify: 2/2" not in text  # not the plain line


def test_set_done_takes_the_total_from_the_callback() -> None:
    out = io.StringIO()
    with CliProgress("produce", "records", stream=out, tty=False, interval_s=3600) as p:
        p.set_done(50, 200)
        p.set_done(200, 200)
    assert out.getvalue().startswith("produce: 200/200 records (100%)")
