"""The plain types every stage shares: a partition's name and a record on its way to a chunk.

No logic and no imports from the package: chunking, encoding, the service and the operator
tools all speak these types, so they live below all of them."""

from __future__ import annotations

from typing import NamedTuple

TP = tuple[str, int]
"""A partition: (topic, partition number)."""


class RawRecord(NamedTuple):
    """A good record of a chunk: its Kafka coordinates and its raw Avro body.

    A NamedTuple, not a dataclass: the live loop makes one per record, and a tuple is built
    several times faster than a frozen dataclass."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    body: bytes
