"""Names unique to one user of the shared test stack (a test, a fault scenario), created
on it: only the tests need them, so they live here, not in the package."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from replicator.devtools.stack import LocalStack


@dataclass(frozen=True)
class FreshNames:
    """Names unique to one user of a shared stack (a test, a benchmark run), created by
    `create_fresh`."""

    topics: list[str]
    dead_letter_topic: str
    bucket: str
    container: str
    group_id: str
    partitions: int


def _slug(text: str, length: int) -> str:
    """Lowercase letters, digits and single hyphens: valid in topic, bucket and container
    names."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:length].strip("-") or "x"


def create_fresh(stack: LocalStack, label: str, partitions: int = 3) -> FreshNames:
    """Create two topics, a dead-letter topic, a bucket and a container with names unique
    to this call (label + random suffix), and return the names with a group id."""
    base = f"{_slug(label, 24)}-{uuid.uuid4().hex[:10]}"
    names = FreshNames(
        topics=[f"t.{base}.a", f"t.{base}.b"],
        dead_letter_topic=f"t.{base}.dead-letter",
        bucket=f"b-{base}",
        container=f"c-{base}",
        group_id=f"g-{base}",
        partitions=partitions,
    )
    stack.create_topics([*names.topics, names.dead_letter_topic], partitions)
    stack.create_bucket(names.bucket)
    stack.create_container(names.container)
    return names
