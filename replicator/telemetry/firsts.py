"""The timestamp of the first record at or after each chunk start, as the service read it.

A store's lag in seconds is the age of the first record at or after its committed offset
(`replicator.telemetry.lag`). A store commits only at the boundaries of the chunks it wrote,
and every chunk boundary is the first offset of the next chunk, whose first record the
service read itself before any store could commit there. So for the partitions a replica
owns, the lag monitor need not ask the broker for that record: each chunker notes, when
it opens a chunk at offset P and takes its first record, that record's timestamp under P.

Exact by construction: the chunker takes a partition's records in offset order with no
record missing (its consumer reads contiguously from the chunker's position; a gap is an
offset the log does not hold), so the first record it takes at or after P is the first
record of the log at or after P. A chunk whose first record is a dead letter, or carries no
timestamp, notes nothing (the monitor then reads the broker, as for a partition another
replica owns), so a dead letter is aged exactly as the broker would have it.

It holds one entry per chunk start from the lowest store's committed offset up (the
checkpoint forgets the rest): a few per partition, and during a store's outage one per
chunk cut since, as the cut plan does.

Written by the service's thread, read by the lag monitor's: a read is two dict look-ups,
each atomic, and only the writer iterates or removes.
"""

from __future__ import annotations

from replicator.model import TP


class FirstRecords:
    """(partition, chunk start) -> Unix time (s) of the first record at or after it."""

    def __init__(self) -> None:
        self._by_tp: dict[TP, dict[int, float]] = {}

    def partition(self, tp: TP) -> dict[int, float]:
        """The map a chunker of `tp` notes into (chunk start -> Unix time, seconds)."""
        return self._by_tp.setdefault(tp, {})

    def get(self, tp: TP, offset: int) -> float | None:
        """The time of the first record at or after `offset`, when the service read it at
        a chunk start; None when it is not known here (ask the broker)."""
        per_tp = self._by_tp.get(tp)
        return per_tp.get(offset) if per_tp is not None else None

    def forget_below(self, tp: TP, offset: int) -> None:
        """Drop the chunk starts below `offset` (no store can commit there any more)."""
        per_tp = self._by_tp.get(tp)
        if per_tp:
            for start in [s for s in per_tp if s < offset]:
                del per_tp[start]

    def forget(self, tp: TP) -> None:
        """Drop a partition this replica no longer owns."""
        self._by_tp.pop(tp, None)

    def items(self) -> list[tuple[tuple[TP, int], float]]:
        """Every note, ((partition, chunk start), Unix time): a copy."""
        return [
            ((tp, start), at)
            for tp, per_tp in list(self._by_tp.items())
            for start, at in list(per_tp.items())
        ]

    def __len__(self) -> int:
        return sum(len(per_tp) for per_tp in self._by_tp.values())
