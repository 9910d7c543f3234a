"""The plain types every stage shares: a partition's name and a record on its way to a chunk.

No logic and no imports from the package: chunking, encoding, the service and the operator
tools all speak these types, so they live below all of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

TP = tuple[str, int]
"""A partition: (topic, partition number)."""

RecordHeaders = Sequence[tuple[str, bytes | None]]
"""A Kafka record's headers as confluent-kafka gives them for a consumed message: a list of
(name, value) pairs in the record's order, names may repeat, a value may be None."""


class RawRecord(NamedTuple):
    """A good record of a chunk: its Kafka coordinates, its raw Avro body and its headers
    (None or empty: the record has none; most records have none).

    A NamedTuple, not a dataclass: the live loop makes one per record, and a tuple is built
    several times faster than a frozen dataclass."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    body: bytes
    headers: RecordHeaders | None = None
