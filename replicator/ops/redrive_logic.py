"""What `replicator redrive` decides, over plain values: which dead letters a selection
takes, what each selected one becomes, and the report's tallies.

A dead letter (replicator/kafka/deadletter.py) holds the original record's key and value as
they were, the original's own headers (when the dead-letter writer keeps them) and `dlq.*`
headers saying why and where from. Re-driving one produces, to its origin topic and
partition, the original key, value and timestamp with every header not named `dlq.*` or
`redrive.*`, plus `redrive.*` headers naming the original coordinates (`redrive_headers`).

A dead letter sent without its value (over the dead-letter topic's size limit: the headers
`dlq.value.size` and `dlq.value.sha256` stand for it) cannot be re-driven: the bytes are
only in the source topic, if it still retains them (`replicator replay` reads them there
once the service accepts them). It is reported (`Verdict.VALUE_DROPPED`), never produced
empty.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from replicator.kafka.deadletter import (
    H_FIRST_REASON,
    H_KEY_SIZE,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TIMESTAMP,
    H_TOPIC,
    H_VALUE_SHA256,
    H_VALUE_SIZE,
    header_text,
    read_headers,
)

REDRIVE_PREFIX = "redrive."
# The headers a re-driven record carries: the origin of the dead letter (where the record
# was first written and dead-lettered), the dead letter itself, and the run.
H_REDRIVE_TOPIC = "redrive.topic"
H_REDRIVE_PARTITION = "redrive.partition"
H_REDRIVE_OFFSET = "redrive.offset"
H_REDRIVE_REASON = "redrive.reason"
H_REDRIVE_DEAD_LETTER = "redrive.dead_letter"  # "<dead-letter topic>/<partition>/<offset>"
H_REDRIVE_ID = "redrive.id"

Headers = list[tuple[str, str | bytes | None]]


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Letter:
    """One dead letter as read from the dead-letter topic: its own coordinates, what its
    `dlq.*` headers say, and what it carries of the original record."""

    partition: int  # of the dead-letter topic
    offset: int  # of the dead-letter topic
    reason: str
    first_reason: str | None  # `dlq.original.reason`: the verdict before the value was dropped
    origin_topic: str
    origin_partition: int
    origin_offset: int
    origin_timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    value_dropped: bool  # sent without its value (dlq.value.size / dlq.value.sha256)
    key_dropped: bool
    headers: tuple[tuple[str, bytes | None], ...]  # the original's: before our dlq.* run

    @property
    def reasons(self) -> tuple[str, ...]:
        """The reasons a selection by reason matches: the dead letter's, and for one sent
        without its value, the verdict it had before (`unknown_schema_id`, ...)."""
        return (self.reason,) if not self.first_reason else (self.reason, self.first_reason)

    @property
    def coordinates(self) -> dict[str, Any]:
        return {
            "topic": self.origin_topic,
            "partition": self.origin_partition,
            "offset": self.origin_offset,
            "dead_letter_partition": self.partition,
            "dead_letter_offset": self.offset,
            "reason": self.reason,
            **({"original_reason": self.first_reason} if self.first_reason else {}),
        }


def parse_letter(
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, str | bytes | None]] | None,
) -> Letter | None:
    """A dead-letter record as a `Letter`; None when its reason or origin headers are
    missing or malformed (not a dead letter of this service: reported, never re-driven)."""
    read = read_headers(headers)
    if read is None:
        return None
    kept, found = read
    reason, topic = found.get(H_REASON), found.get(H_TOPIC)
    origin_partition = _int(found.get(H_PARTITION))
    origin_offset = _int(found.get(H_OFFSET))
    if (
        not reason
        or not topic
        or origin_partition is None
        or origin_offset is None
        or origin_partition < 0
        or origin_offset < 0
    ):
        return None
    value_dropped = value is None and (H_VALUE_SIZE in found or H_VALUE_SHA256 in found)
    return Letter(
        partition=partition,
        offset=offset,
        reason=reason,
        first_reason=found.get(H_FIRST_REASON) or None,
        origin_topic=topic,
        origin_partition=origin_partition,
        origin_offset=origin_offset,
        origin_timestamp_ms=_int(found.get(H_TIMESTAMP)),
        key=key,
        value=value,
        value_dropped=value_dropped,
        key_dropped=key is None and H_KEY_SIZE in found,
        headers=tuple(kept),
    )


@dataclass(frozen=True)
class Selection:
    """Which dead letters to re-drive: every filter given must match (an empty one matches
    all). Offsets and times are the origin record's: offsets [from_offset, to_offset] of
    its partition, timestamps [since_ms, until_ms)."""

    reasons: frozenset[str] = frozenset()
    topics: frozenset[str] = frozenset()
    partitions: frozenset[int] = frozenset()
    from_offset: int | None = None
    to_offset: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def problems(self) -> list[str]:
        """What makes this selection unusable (bad usage), as messages."""
        out: list[str] = []
        if (
            self.from_offset is not None
            and self.to_offset is not None
            and self.to_offset < self.from_offset
        ):
            out.append("--to-offset is below --from-offset")
        if (
            self.since_ms is not None
            and self.until_ms is not None
            and self.until_ms <= self.since_ms
        ):
            out.append("--until must be after --since")
        if any(o is not None and o < 0 for o in (self.from_offset, self.to_offset)):
            out.append("offsets are not negative")
        if any(p < 0 for p in self.partitions):
            out.append("partitions are not negative")
        return out

    def matches(self, letter: Letter) -> bool:
        if self.reasons and not self.reasons.intersection(letter.reasons):
            return False
        if self.topics and letter.origin_topic not in self.topics:
            return False
        if self.partitions and letter.origin_partition not in self.partitions:
            return False
        if self.from_offset is not None and letter.origin_offset < self.from_offset:
            return False
        if self.to_offset is not None and letter.origin_offset > self.to_offset:
            return False
        if self.since_ms is not None or self.until_ms is not None:
            ts = letter.origin_timestamp_ms
            if ts is None:
                return False  # a time filter takes only dead letters that say their time
            if self.since_ms is not None and ts < self.since_ms:
                return False
            if self.until_ms is not None and ts >= self.until_ms:
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "reasons": sorted(self.reasons),
            "topics": sorted(self.topics),
            "partitions": sorted(self.partitions),
            "from_offset": self.from_offset,
            "to_offset": self.to_offset,
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
        }

    def fingerprint(self) -> str:
        """12 hex digits naming this selection: the same filters, the same progress group
        (so a run interrupted resumes where it committed; other filters start afresh)."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def progress_group(group_id: str, selection: Selection) -> str:
    """The consumer group holding a selection's progress on the dead-letter topic."""
    return f"{group_id}.redrive.{selection.fingerprint()}"


class Verdict(str, Enum):
    REDRIVE = "redrive"
    NOT_SELECTED = "not_selected"
    VALUE_DROPPED = "value_dropped"  # sent without its value: nothing to re-drive
    NOT_REPLICATED = "not_replicated"  # its origin topic is not one the service replicates
    NO_PARTITION = "no_partition"  # its origin topic has no such partition (any more)


# The verdicts that make the run exit 1: selected, and not re-driven.
CANNOT = frozenset({Verdict.VALUE_DROPPED, Verdict.NOT_REPLICATED, Verdict.NO_PARTITION})

CAUSES = {
    Verdict.VALUE_DROPPED: "sent to the dead-letter topic without its value (over the "
    "topic's size limit): nothing to re-drive; `replicator replay` reads it from the source "
    "topic if it is still retained",
    Verdict.NOT_REPLICATED: "its origin topic is not in REPLICATOR_TOPICS",
    Verdict.NO_PARTITION: "its origin topic has no such partition",
}


def decide(
    letter: Letter, selection: Selection, replicated: Mapping[str, Collection[int]]
) -> Verdict:
    """What happens to one dead letter; `replicated`: the partitions of each topic the
    service replicates."""
    if not selection.matches(letter):
        return Verdict.NOT_SELECTED
    if letter.value_dropped:
        return Verdict.VALUE_DROPPED
    partitions = replicated.get(letter.origin_topic)
    if partitions is None:
        return Verdict.NOT_REPLICATED
    if letter.origin_partition not in partitions:
        return Verdict.NO_PARTITION
    return Verdict.REDRIVE


def redrive_headers(letter: Letter, dead_letter_topic: str, redrive_id: str) -> Headers:
    """The headers of the re-driven record: the original's own (none named `dlq.*`; any
    `redrive.*` of an earlier re-drive left out), then the coordinates it comes from."""
    kept = [(name, value) for name, value in letter.headers if not name.startswith(REDRIVE_PREFIX)]
    return [
        *kept,
        (H_REDRIVE_TOPIC, letter.origin_topic.encode()),
        (H_REDRIVE_PARTITION, str(letter.origin_partition).encode()),
        (H_REDRIVE_OFFSET, str(letter.origin_offset).encode()),
        (H_REDRIVE_REASON, letter.reason.encode()),
        (
            H_REDRIVE_DEAD_LETTER,
            f"{dead_letter_topic}/{letter.partition}/{letter.offset}".encode(),
        ),
        (H_REDRIVE_ID, redrive_id.encode()),
    ]


def redriven_origin(
    headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
) -> tuple[str, int, int] | None:
    """The origin (topic, partition, offset) a re-driven record names in its `redrive.*`
    headers; None for a record that was not re-driven (or names no usable origin)."""
    found: dict[str, str | None] = {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, raw in pairs:
        if name.startswith(REDRIVE_PREFIX):
            found.setdefault(name, header_text(raw))
    topic = found.get(H_REDRIVE_TOPIC)
    partition = _int(found.get(H_REDRIVE_PARTITION))
    offset = _int(found.get(H_REDRIVE_OFFSET))
    if not topic or partition is None or offset is None:
        return None
    return topic, partition, offset


def ranges(offsets: Iterable[int]) -> list[list[int]]:
    """Offsets as sorted inclusive ranges [[first, last], ...]."""
    out: list[list[int]] = []
    for o in sorted(set(offsets)):
        if out and out[-1][1] == o - 1:
            out[-1][1] = o
        else:
            out.append([o, o])
    return out


@dataclass
class Tally:
    """The report's counts: per verdict, and for selected dead letters per (reason, origin
    topic, origin partition), with their origin offsets."""

    read: int = 0
    without_origin: int = 0
    verdicts: dict[str, int] = field(default_factory=lambda: {v.value: 0 for v in Verdict})
    # (verdict, reason, topic, partition) -> origin offsets
    offsets: dict[tuple[str, str, str, int], list[int]] = field(default_factory=dict)
    cannot: list[dict[str, Any]] = field(default_factory=list)
    # re-driven, then refused for good by the origin topic (too large, invalid)
    refused: list[dict[str, Any]] = field(default_factory=list)

    def refuse(self, letter: Letter, cause: str) -> None:
        self.refused.append({**letter.coordinates, "cause": cause})

    def add(self, letter: Letter | None, verdict: Verdict | None) -> None:
        self.read += 1
        if letter is None or verdict is None:
            self.without_origin += 1
            return
        self.verdicts[verdict.value] += 1
        if verdict is Verdict.NOT_SELECTED:
            return
        key = (verdict.value, letter.reason, letter.origin_topic, letter.origin_partition)
        self.offsets.setdefault(key, []).append(letter.origin_offset)
        if verdict in CANNOT:
            self.cannot.append({**letter.coordinates, "cause": CAUSES[verdict]})

    @property
    def selected(self) -> int:
        return self.read - self.without_origin - self.verdicts[Verdict.NOT_SELECTED.value]

    def groups(self) -> list[dict[str, Any]]:
        """Per (verdict, reason, topic, partition): the count and the origin offsets as
        ranges, in a fixed order."""
        return [
            {
                "verdict": verdict,
                "reason": reason,
                "topic": topic,
                "partition": partition,
                "count": len(offs),
                "offsets": ranges(offs),
            }
            for (verdict, reason, topic, partition), offs in sorted(self.offsets.items())
        ]
