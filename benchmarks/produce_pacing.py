"""`replicator produce --rate`: the CPU a paced run costs beyond encoding its records.

    .venv/bin/python benchmarks/produce_pacing.py [--rate 2000] [--seconds 10]

Starts a private local stack, then in this one process measures the CPU time (every thread:
Python and librdkafka's) of producing the same seeded records twice: as fast as possible
(the cost of making and sending them) and paced at --rate over --seconds. The pacing's own
cost is the difference, printed as a share of one core over the paced run's wall time;
the target is under 0.20 at 2,000 records/s. Both figures come from the same run, since
these machines are noisy. No service setting is changed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replicator.config import DEFAULT_SCHEMAS_DIR
from replicator.devtools.produce import produce
from replicator.devtools.stack import DEMO_TOPICS, LocalStack, StackPorts
from replicator.schemas import SchemaRegistry


def cpu_of(run: Callable[[], None]) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) spent in `run()`."""
    proc = psutil.Process()
    before, started = proc.cpu_times(), time.monotonic()
    run()
    after = proc.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    return cpu, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    count = int(args.rate * args.seconds)

    root = Path(tempfile.mkdtemp(prefix="replicator-pacing-"))
    stack = LocalStack(
        root=root,
        ports=StackPorts.free(),
        topics=list(DEMO_TOPICS),
        dead_letter_topic="snds.dead-letter",
        bucket="pacing-s3",
        container="pacing-azure",
        partitions=6,
    )
    stack.up()
    try:
        env = stack.env()
        conf = {"bootstrap.servers": env["kafka_bootstrap"]}
        registry = SchemaRegistry.load(DEFAULT_SCHEMAS_DIR)

        def run(rate: float | None) -> None:
            produce(conf, list(DEMO_TOPICS), count, rate, 7, 0.0, None, registry)

        run(None)  # warm-up: connections, schemas, first allocations
        free_cpu, free_wall = cpu_of(lambda: run(None))
        paced_cpu, paced_wall = cpu_of(lambda: run(args.rate))
        pacing = max(paced_cpu - free_cpu, 0.0) / paced_wall
        print(f"{count:,} records, each run in this process (all its threads)")
        print(f"  as fast as possible: {free_wall:6.2f} s wall, {free_cpu:6.2f} s CPU")
        print(
            f"  paced at {args.rate:,.0f}/s:     {paced_wall:6.2f} s wall, {paced_cpu:6.2f} s CPU "
            f"({paced_cpu / paced_wall:.2f} of a core)"
        )
        print(f"  pacing beyond the records' own cost: {pacing:.3f} of a core (target < 0.20)")
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
