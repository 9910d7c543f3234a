"""Object keys: derived from offsets only, never from the clock or a random id.

    <topic>/<partition:05d>/<first:020d>-<last:020d>.avro

Zero-padded offsets keep a partition's objects in offset order, so a listing with
`start_after=offset_marker(...)` returns exactly the objects from an offset on, and a replay
computes the same key for the same range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ASCII digits only and `\Z` (not `$`, which also matches before a trailing newline): a key
# this service did not write must not parse as one of ours.
_KEY = re.compile(
    r"^(?P<topic>[A-Za-z0-9._-]+)/(?P<partition>[0-9]{5})/(?P<first>[0-9]{20})-(?P<last>[0-9]{20})\.avro\Z"
)


@dataclass(frozen=True, order=True)
class ChunkKey:
    topic: str
    partition: int
    first: int  # first offset covered
    last: int  # last offset covered (inclusive)

    def __post_init__(self) -> None:
        if self.partition < 0 or self.first < 0 or self.last < self.first:
            raise ValueError(f"invalid chunk range {self.partition}:{self.first}-{self.last}")

    def __str__(self) -> str:
        return object_key(self.topic, self.partition, self.first, self.last)


def partition_prefix(topic: str, partition: int) -> str:
    return f"{topic}/{partition:05d}/"


def object_key(topic: str, partition: int, first: int, last: int) -> str:
    return f"{partition_prefix(topic, partition)}{first:020d}-{last:020d}.avro"


def offset_marker(topic: str, partition: int, offset: int) -> str:
    """A `start_after` value: every key of the partition whose first offset is >= `offset`
    sorts after it, every key whose first offset is lower sorts before it."""
    return f"{partition_prefix(topic, partition)}{offset:020d}"


def parse_key(key: str) -> ChunkKey | None:
    """The range a key covers, or None for a key this service did not write."""
    match = _KEY.match(key)
    if match is None:
        return None
    first, last = int(match["first"]), int(match["last"])
    if last < first:
        return None
    return ChunkKey(match["topic"], int(match["partition"]), first, last)
