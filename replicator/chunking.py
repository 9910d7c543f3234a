"""Cut a partition's records into chunks, by rules that depend on the records only.

A replay over the same records cuts the same way, so it computes the same keys:

- count:  a chunk covers at most `max_records` offsets;
- bytes:  its raw Avro bodies add up to at most `max_bytes` (a single larger record is alone);
- window: its records' own timestamps fall in one window of `window_ms` (record time).

Records of several writer schemas share a chunk (the container's value is a union of them,
see `container`), so a rolling upgrade of the producers does not shatter chunks.

Three cuts depend on something else and are made once, then followed by everyone:

- flush:  an open chunk older than the flush interval (wall clock) is cut, so a quiet
          partition still reaches the stores; the caller decides when (`flush`);
- end:    the end of a burst: the partition has taken everything up to the log's end and
          has been quiet for a while, measured against the pace its open chunk filled at
          (`end_of_burst`); the tail of a backlog or of a burst then does not wait for the
          flush interval, while a trickle (whose quiet spells are its normal pace) keeps
          the timer and its objects stay as large as the flush interval allows;
- plan:   a cut already made (an object already in a store, or a cut this process made
          earlier) is followed exactly: `CutPlan` holds them, and the chunker obeys it before
          any rule. That is how a store catching up, a restart or a new owner of the
          partition cut exactly as the objects already written.

Chunks are contiguous: each starts where the previous one ended, and offsets the chunk holds
no record for (dead-lettered records, transaction markers) are covered all the same.
Pure logic: no clients, no clock of its own (the caller passes `now`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from replicator.keys import ChunkKey
from replicator.model import RawRecord

if TYPE_CHECKING:  # the type only: chunking reads four numbers from it
    from replicator.config import Settings

# The end-of-burst cut (`end_of_burst`): a partition counts as quiet after at least
# END_QUIET_S without a record, and after END_QUIET_GAPS times the mean gap between the
# records of its open chunk; a chunk of fewer than END_QUIET_GAPS offsets says too little
# about its pace and waits for the flush interval.
END_QUIET_S = 1.0
END_QUIET_GAPS = 10


def end_of_burst(
    offsets: int,
    opened_at: float,
    last_at: float,
    now: float,
    position: int,
    high_watermark: int,
) -> bool:
    """Whether an open chunk holding `offsets` offsets, the first taken at `opened_at`, the
    last at `last_at` (wall clock, seconds), is cut at `now` as the end of a burst.

    Yes when the partition has taken everything the broker reported (`position` at or past
    `high_watermark`, the next offset to be written; unknown: negative, no cut) and has been
    quiet for END_QUIET_S and for END_QUIET_GAPS mean gaps of the chunk's records. A backlog
    read at full speed, or a burst, fills its chunk with gaps of microseconds: its tail is cut
    one second after the last record. A trickle of r records/s reaches END_QUIET_GAPS offsets
    after END_QUIET_GAPS/r seconds and would then need as long again without a record: at a
    steady pace that never happens, and the flush interval cuts as before.

    A broker whose high watermark lags behind its log makes the cut come early, never late:
    it is a wall-clock cut like the flush, recorded in the cut plan and followed by every
    store, so it is as repeatable as any other."""
    if offsets < END_QUIET_GAPS or high_watermark < 0 or position < high_watermark:
        return False
    quiet = now - last_at
    return quiet >= max(END_QUIET_S, END_QUIET_GAPS * (last_at - opened_at) / offsets)


@dataclass(frozen=True)
class ChunkRules:
    max_records: int
    max_bytes: int
    window_ms: int
    flush_interval_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ChunkRules:
        """The rules the service cuts by; every tool that must cut as the service does (replay,
        the catch-up, verify's alignment) builds them here."""
        return cls(
            max_records=settings.chunk_max_records,
            max_bytes=settings.chunk_max_bytes,
            window_ms=settings.chunk_window_s * 1000,
            flush_interval_s=settings.flush_interval_s,
        )


@dataclass
class Chunk:
    topic: str
    partition: int
    first: int
    last: int
    records: list[RawRecord]
    schema_ids: list[int]  # the writer schema id of each record, in order
    skipped: int  # offsets covered without a record in the chunk
    reason: str  # why it was cut: count, bytes, window, flush, end, plan, align, boundary
    # The records' bodies' total size, as the chunker counted it (None: not counted, sum
    # `records`); a count the chunker keeps anyway, so the lanes do not walk the records.
    body_bytes: int | None = field(default=None, compare=False)

    @property
    def key(self) -> ChunkKey:
        return ChunkKey(self.topic, self.partition, self.first, self.last)


# What `add` returns when it cuts nothing: shared, never appended to (callers only iterate).
_NO_CHUNKS: list[Chunk] = []


class PlanConflict(Exception):
    """A cut that overlaps a known cut without matching it."""


@dataclass
class CutPlan:
    """Known cuts of one partition: first offset -> last offset, non-overlapping."""

    _ends: dict[int, int] = field(default_factory=dict)
    _starts: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._starts)

    def end_for(self, first: int) -> int | None:
        return self._ends.get(first)

    def next_start_after(self, offset: int) -> int | None:
        i = bisect.bisect_right(self._starts, offset)
        return self._starts[i] if i < len(self._starts) else None

    def overlapping(self, first: int, last: int) -> list[tuple[int, int]]:
        """Known cuts sharing an offset with [first, last]."""
        out = []
        i = bisect.bisect_right(self._starts, first) - 1
        i = max(i, 0)
        while i < len(self._starts) and self._starts[i] <= last:
            start = self._starts[i]
            end = self._ends[start]
            if end >= first:
                out.append((start, end))
            i += 1
        return out

    def add(self, first: int, last: int) -> None:
        """Record a cut; raise PlanConflict if it overlaps a different one."""
        if self._ends.get(first) == last:
            return
        clash = self.overlapping(first, last)
        if clash:
            raise PlanConflict(f"cut {first}-{last} overlaps known cut(s) {clash}")
        bisect.insort(self._starts, first)
        self._ends[first] = last

    def trim_below(self, offset: int) -> None:
        """Forget cuts that end before `offset` (every store holds them)."""
        keep = bisect.bisect_left(self._starts, offset)
        while keep > 0 and self._ends[self._starts[keep - 1]] >= offset:
            keep -= 1
        for start in self._starts[:keep]:
            del self._ends[start]
        del self._starts[:keep]


class PartitionChunker:
    """The open chunk of one partition and the rules that cut it."""

    def __init__(
        self,
        topic: str,
        partition: int,
        rules: ChunkRules,
        start: int,
        plan: CutPlan,
        firsts: dict[int, float] | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.rules = rules
        self.plan = plan
        # chunk start -> Unix time of its first record, when that record is kept and has a
        # timestamp (replicator.telemetry.firsts: the lag monitor's answers for the stores'
        # positions); None: not noted
        self.firsts = firsts
        self.open_first = start  # first offset of the open chunk
        self.position = start  # next offset expected
        self._records: list[RawRecord] = []
        self._bytes = 0
        self._schema_ids: list[int] = []
        self._window: int | None = None
        self._opened_at: float | None = None  # wall clock of the first offset in the open chunk
        self._last_at = 0.0  # wall clock of the last offset taken

    # -- state ----------------------------------------------------------------------------
    @property
    def open_offsets(self) -> int:
        return self.position - self.open_first

    @property
    def open_bytes(self) -> int:
        return self._bytes

    def _has_content(self) -> bool:
        return self.position > self.open_first

    def _cut(self, last: int, reason: str) -> Chunk:
        chunk = Chunk(
            topic=self.topic,
            partition=self.partition,
            first=self.open_first,
            last=last,
            records=self._records,
            schema_ids=self._schema_ids,
            skipped=(last - self.open_first + 1) - len(self._records),
            reason=reason,
            body_bytes=self._bytes,
        )
        self.plan.add(chunk.first, chunk.last)
        self.open_first = last + 1
        self.position = max(self.position, last + 1)
        self._records = []
        self._bytes = 0
        self._schema_ids = []
        self._window = None
        self._opened_at = None
        return chunk

    def _note_first(self, record: RawRecord) -> None:
        """The open chunk's first offset taken is this kept record: note its timestamp under
        the chunk's start (once a chunk, never per record)."""
        if self.firsts is not None and record.timestamp_ms > 0:
            self.firsts[self.open_first] = record.timestamp_ms / 1000.0

    # -- input ----------------------------------------------------------------------------
    def add(
        self, offset: int, record: RawRecord | None, schema_id: int | None, now: float
    ) -> list[Chunk]:
        """Take the record at `offset` (None: dead-lettered, covered but not kept), written
        with schema `schema_id`.

        Returns the chunks this closes (when none, one shared empty list: iterate it, never
        append to it). An offset below the position is ignored (already covered); a gap
        before it is covered by the chunk that takes it.
        """
        if record is not None and schema_id is None:
            # Checked before any cut: raising after one would lose the chunks it closed.
            raise ValueError("a record needs its writer schema id")
        if offset < self.position:
            return _NO_CHUNKS
        starts = self.plan._starts
        if not starts or starts[-1] < self.open_first:
            return self._add_unplanned(offset, record, schema_id, now)
        out: list[Chunk] = []
        # Follow known cuts first.
        planned = self.plan.end_for(self.open_first)
        while planned is not None and offset > planned:
            out.append(self._cut(planned, "plan"))
            planned = self.plan.end_for(self.open_first)
        if planned is None:
            nxt = self.plan.next_start_after(self.open_first)
            if nxt is not None and offset >= nxt:
                out.append(self._cut(nxt - 1, "align"))
                planned = self.plan.end_for(self.open_first)
                while planned is not None and offset > planned:
                    out.append(self._cut(planned, "plan"))
                    planned = self.plan.end_for(self.open_first)
        if planned is None and self._records and record is not None:
            reason = None
            if record.timestamp_ms // self.rules.window_ms != self._window:
                reason = "window"
            elif self._bytes + len(record.body) > self.rules.max_bytes:
                reason = "bytes"
            if reason is not None:
                # Cut after the last offset taken: a gap before `offset` goes to the chunk
                # that takes it, as documented.
                out.append(self._cut(self.position - 1, reason))
        # Take the offset.
        if not self._has_content():
            self._opened_at = now
            if record is not None:
                self._note_first(record)
        if record is not None:
            assert schema_id is not None  # checked on entry
            if not self._records:
                self._window = record.timestamp_ms // self.rules.window_ms
            self._records.append(record)
            self._schema_ids.append(schema_id)
            self._bytes += len(record.body)
        self.position = offset + 1
        self._last_at = now
        if planned is not None:
            if offset == planned:
                out.append(self._cut(planned, "plan"))
        elif self.position - self.open_first >= self.rules.max_records:
            out.append(self._cut(offset, "count"))
        return out

    def _add_unplanned(
        self, offset: int, record: RawRecord | None, schema_id: int | None, now: float
    ) -> list[Chunk]:
        """`add` when the plan knows no cut at or after the open chunk's first offset (the
        steady state: the plan then holds only cuts already made): the record rules alone,
        as `add` applies them with no planned cut. A cut made here adds a cut below the new
        open chunk, so the condition still holds for the next record. Runs once per record
        on the service's busiest thread: local names, no list unless a chunk is cut."""
        rules = self.rules
        out = _NO_CHUNKS
        records = self._records
        if record is not None:
            body_size = len(record.body)
            window = record.timestamp_ms // rules.window_ms
            if records and (window != self._window or self._bytes + body_size > rules.max_bytes):
                # Cut after the last offset taken: a gap before `offset` goes to the chunk
                # that takes it, as documented.
                reason = "window" if window != self._window else "bytes"
                out = [self._cut(self.position - 1, reason)]
                records = self._records
            if self.position == self.open_first:
                self._opened_at = now
                self._note_first(record)
            if not records:
                self._window = window
            assert schema_id is not None  # checked by `add`
            records.append(record)
            self._schema_ids.append(schema_id)
            self._bytes += body_size
        elif self.position == self.open_first:
            self._opened_at = now
        self.position = offset + 1
        self._last_at = now
        if offset + 1 - self.open_first >= rules.max_records:
            if out:
                out.append(self._cut(offset, "count"))
            else:
                out = [self._cut(offset, "count")]
        return out

    def flush_due(self, now: float) -> bool:
        return (
            self._opened_at is not None
            and now - self._opened_at >= self.rules.flush_interval_s
            and self.plan.end_for(self.open_first) is None
        )

    def quiet_after_burst(self, now: float) -> bool:
        """The pure half of `end_of_burst`: whether the open chunk has been quiet long enough,
        given that the partition is at the end of its log (the caller checks that, with the
        high watermark it knows, only when this says yes)."""
        return (
            self._opened_at is not None
            and self.plan.end_for(self.open_first) is None
            and end_of_burst(
                self.position - self.open_first, self._opened_at, self._last_at, now, 0, 0
            )
        )

    def end_due(self, now: float, high_watermark: int) -> bool:
        """Whether the open chunk is cut now as the end of a burst (`end_of_burst`)."""
        return (
            self._opened_at is not None
            and self.plan.end_for(self.open_first) is None
            and end_of_burst(
                self.position - self.open_first,
                self._opened_at,
                self._last_at,
                now,
                self.position,
                high_watermark,
            )
        )

    def flush(self, reason: str = "flush") -> Chunk | None:
        """Cut the open chunk where it stands (a wall-clock cut, made once: `flush` for the
        flush interval, `end` for the end of a burst)."""
        if not self._has_content() or self.plan.end_for(self.open_first) is not None:
            return None
        return self._cut(self.position - 1, reason)

    def cut_at_boundary(self, boundary: int) -> list[Chunk]:
        """Close everything below `boundary` (a cut another chunker already made)."""
        out: list[Chunk] = []
        while self.open_first < boundary:
            planned = self.plan.end_for(self.open_first)
            last = planned if planned is not None and planned < boundary else boundary - 1
            out.append(self._cut(last, "plan" if planned is not None else "boundary"))
        return out
