"""What every benchmark shares: a private local stack and the service's settings for it.

A benchmark starts its own stack (Kafka, S3, Azure on free ports, in a temporary folder) and
runs the service with its defaults, except for the few settings in `BENCH_SETTINGS`, which it
prints under its results with the reason (`print_changed_settings`).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replicator.config import Settings
from replicator.devtools.stack import DEMO_TOPICS, LocalStack, StackPorts

DEAD_LETTER_TOPIC = "snds.dead-letter"

# Settings every benchmark changes, and why (printed under the results). Nothing that shapes
# the cuts, the consumer or the stores: those run at the service's defaults.
BENCH_SETTINGS: dict[str, tuple[object, str]] = {
    "metrics_port": (0, "a free port: runs and replicas do not clash"),
    "log_level": ("INFO", "the log tells when the partitions were assigned (the group join)"),
}


@dataclass
class BenchStack:
    root: Path  # the stack's folder; services' logs go under it
    stack: LocalStack
    settings: Settings  # the stack's endpoints, BENCH_SETTINGS, the service's defaults

    @property
    def bucket(self) -> str:
        return self.stack.bucket

    @property
    def container(self) -> str:
        return self.stack.container


def stack_settings(stack: LocalStack) -> Settings:
    """The service's defaults pointed at `stack`, with BENCH_SETTINGS applied."""
    env = stack.env()
    settings = Settings(
        kafka_bootstrap=env["kafka_bootstrap"],
        topics=list(DEMO_TOPICS),
        dead_letter_topic=DEAD_LETTER_TOPIC,
        s3_endpoint=env["s3_endpoint"],
        s3_bucket=stack.bucket,
        s3_access_key=SecretStr(env["s3_access_key"]),
        s3_secret_key=SecretStr(env["s3_secret_key"]),
        azure_connection_string=SecretStr(env["azure_connection_string"]),
        azure_container=stack.container,
    )
    return settings.model_copy(update={name: value for name, (value, _) in BENCH_SETTINGS.items()})


@contextlib.contextmanager
def bench_stack(name: str, partitions: int = 6, keep: bool = False) -> Iterator[BenchStack]:
    """A private stack named `name` (its bucket `<name>-s3`, container `<name>-azure`), both
    demo topics with `partitions` each. Its folder is deleted when the body ends normally
    (unless `keep`), kept and printed otherwise."""
    root = Path(tempfile.mkdtemp(prefix=f"replicator-{name}-"))
    stack = LocalStack(
        root=root,
        ports=StackPorts.free(),
        topics=list(DEMO_TOPICS),
        dead_letter_topic=DEAD_LETTER_TOPIC,
        bucket=f"{name}-s3",
        container=f"{name}-azure",
        partitions=partitions,
    )
    print(f"starting a private stack in {root}", flush=True)
    finished = False
    try:
        stack.up()
        yield BenchStack(root, stack, stack_settings(stack))
        finished = True
    finally:
        stack.down()
        if finished and not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root} (servers' data and the services' logs)", flush=True)


def print_changed_settings(extra: dict[str, tuple[object, str]] | None = None) -> None:
    """The settings the benchmark changed from the service's defaults, each with its reason."""
    print("settings changed by the benchmark (everything else: the service's defaults):")
    for name, (value, why) in {**BENCH_SETTINGS, **(extra or {})}.items():
        print(f"  {name}={value}: {why}")
